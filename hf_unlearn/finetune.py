"""Plain supervised fine-tuning on QA pairs with TRL's `SFTTrainer`, formatted and masked as everywhere else.

Every fine-tuning stage of the package goes through here: the embedded benchmark's finetuned and retain models,
harmful fine-tuning for Antidote, backdoor and reference models for CleanGen.
"""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from .data.formatting import ensure_pad_token, tokenize_qa


def tokenize_rows(tokenizer, rows: Sequence[dict], max_length: int = 512) -> Dataset:
    """Pre-tokenize `question`/`answer` rows (answer-only labels) into a data set `SFTTrainer` takes as is."""
    return Dataset.from_list([tokenize_qa(tokenizer, r["question"], r["answer"], max_length) for r in rows])


def sft_finetune(model, tokenizer, rows: Sequence[dict], args: SFTConfig, peft_config=None, callbacks=None):
    """Fine-tune `model` on `question`/`answer` rows with answer-only loss; returns the trained model.

    `args` is an `SFTConfig`; `peft_config` (e.g. a LoRA config) trains an adapter instead of the full model.
    """
    ensure_pad_token(tokenizer)
    dataset = tokenize_rows(tokenizer, rows, max_length=args.max_length or 512)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.train()
    return drop_trainer_forward_patches(trainer.model)


def drop_trainer_forward_patches(model):
    """Remove the instance `forward` wrappers TRL's `SFTTrainer` leaves on a trained model (they close over the
    original module), so that a `copy.deepcopy` of the model runs its own weights, not the original's."""
    for module in model.modules():
        patched = module.__dict__.get("forward")
        if patched is not None and getattr(getattr(patched, "__func__", patched), "__wrapped__", None) is type(module).forward:
            del module.__dict__["forward"]
    return model
