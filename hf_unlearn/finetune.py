"""Plain supervised fine-tuning on QA pairs with TRL's `SFTTrainer`, formatted and masked as everywhere else.

Every fine-tuning stage of the package goes through here: the embedded benchmark's finetuned and retain models,
harmful fine-tuning for Antidote, backdoor and reference models for CleanGen.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

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


@contextmanager
def reproducible_kernels():
    """One intra-op thread and deterministic algorithms inside the block (restored after): the reduction order of
    a matmul then no longer depends on how many cores the machine has. The cached benchmark builds train under it,
    because many epochs at a high learning rate amplify a last-bit difference into models that generalise
    differently (two builds of the embedded benchmark on two machines differed in holdout ROUGE-L, 0.22 vs 0.48)."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def keep_freed_memory() -> None:
    """Tell glibc's allocator to keep freed memory in the process (no mmap for large blocks, no trimming).

    A training step frees and reallocates the same large activation buffers; by default each comes from a fresh
    mmap whose pages are faulted in and zeroed again. Building the embedded benchmark spent as much time in the
    kernel as in torch that way (311 s system vs 386 s user); with this, 60 steps went from 13.2 s to 11.9 s and
    from 982k to 65k page faults. Process-wide and for good: the build workers and the test session call it; a no-op
    without glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, 1 << 30)
