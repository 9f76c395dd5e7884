"""ULD, unlearning from logit difference (Ji et al., 2024): train a small assistant on the reversed goals -
remember the forget set, know nothing of the retain set - and subtract its logits from the target's
(`hf_unlearn.uld_model.ULDModel`). Only the assistant's LoRA adapter trains; the target stays as it is."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel, TrainerCallback, set_seed

from ..data.formatting import IGNORE_INDEX, tokenize_qa
from ..modeling import load_causal_lm
from ..uld_model import ULD_CONFIG_NAME, ULDModel, build_assistant, default_lora_config
from .base import UnlearnConfig, UnlearnTrainer
from .losses import nll, shift_for_next_token


def uniform_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(U || p) = -log|V| - (1/|V|) sum_v log p(v) of the next-token distribution p at each answer position,
    averaged over the answer positions of the batch (ULD's retain loss: 0 exactly when every p is uniform)."""
    logits, labels = shift_for_next_token(logits, labels)
    mask = labels != IGNORE_INDEX
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    kl = -math.log(logits.shape[-1]) - log_probs.mean(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def uld_loss(forget_nll: torch.Tensor, retain_uniform: torch.Tensor, retain_weight: float = 5.0) -> torch.Tensor:
    """L = CE(D_f) + w_r * KL(U || p)(D_r): the assistant remembers the forget set and is uniform on retain data."""
    return forget_nll + retain_weight * retain_uniform


@dataclass
class ULDConfig(UnlearnConfig):
    r"""
    Configuration for `ULDTrainer`. The learning rate and epochs apply to the assistant's LoRA adapter.

    Parameters that control the assistant:
        assistant_layers (`float`, defaults to `0.25`): the target's first K decoder layers the assistant keeps: a
            fraction in (0, 1) of the target's layers (8 of 32 in the paper) or a whole count >= 1.
        assistant_lora_r (`int`, defaults to `16`), assistant_lora_alpha (`int`, defaults to `32`),
        assistant_lora_dropout (`float`, defaults to `0.05`): the assistant's LoRA adapter on every linear layer but
            the LM head (a `peft_config` given to the trainer replaces it).

    Parameters that control the loss:
        retain_weight (`float`, defaults to `5.0`): w_r in CE_f + w_r * KL(U || p)_r.
        use_paraphrased (`bool`, defaults to `True`): also remember the forget rows' `paraphrased_answer` (when every
            row has one, e.g. a `forget10_perturbed` split).
        use_perturbed (`bool`, defaults to `True`): also push one `perturbed_answer` (wrong answer) of each forget row
            toward uniform (when every row has them).

    Parameters of the unlearned model (`ULDModel`):
        assistant_weight (`float`, defaults to `0.75`): alpha in l_target - alpha * l_assistant.
        candidate_threshold (`float`, defaults to `0.01`): tau; the assistant's logits are subtracted only on the
            target's top floor(tau * |V|) tokens and those with probability >= tau * max probability.
    """

    assistant_layers: float = field(default=0.25, metadata={"help": "Assistant depth: fraction or count of layers."})
    assistant_lora_r: int = field(default=16, metadata={"help": "LoRA rank of the assistant."})
    assistant_lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha of the assistant."})
    assistant_lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout of the assistant."})
    retain_weight: float = field(default=5.0, metadata={"help": "Weight of the uniform loss on retain data."})
    use_paraphrased: bool = field(default=True, metadata={"help": "Remember paraphrased forget answers too."})
    use_perturbed: bool = field(default=True, metadata={"help": "Push perturbed forget answers to uniform too."})
    assistant_weight: float = field(default=0.75, metadata={"help": "alpha: weight of the assistant's logits."})
    candidate_threshold: float = field(default=0.01, metadata={"help": "tau: candidate-set threshold."})


def _concatenated(batches: list[dict], pad_token_id: int) -> dict:
    """Right-padded batches stacked into one (padded to the widest), so one forward pass serves them all."""
    width = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {
        key: torch.cat([torch.nn.functional.pad(b[key], (0, width - b[key].shape[1]), value=value) for b in batches])
        for key, value in fill.items()
    }


class ULDTrainer(UnlearnTrainer):
    """Trains ULD's assistant (built from `model`, the target) and evaluates the logit-difference model.

    The target is frozen in place and never changes; `self.model` is the assistant (the only thing trained);
    `uld_model()` returns the `ULDModel`; `evaluate()` evaluates it; `save_model` writes a folder that
    `ULDModel.from_pretrained` loads (assistant adapter + `uld_config.json` referring to the target).
    A `peft_config` replaces the assistant's LoRA config from the `assistant_lora_*` settings.
    """

    config_class = ULDConfig
    requires_retain = True

    def __init__(
        self,
        model: PreTrainedModel | str,
        args: ULDConfig | None = None,
        forget_dataset: Dataset | Sequence[dict] | None = None,
        retain_dataset: Dataset | Sequence[dict] | None = None,
        processing_class=None,
        peft_config=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
    ):
        args = args or ULDConfig(output_dir="uld_output")
        if not isinstance(args, ULDConfig):
            raise TypeError(f"ULDTrainer needs a ULDConfig, got {type(args).__name__}.")
        if isinstance(model, str):
            model, tokenizer = load_causal_lm(model, **(args.model_init_kwargs or {}))
            processing_class = processing_class or tokenizer
        self.target = model.requires_grad_(False).eval()
        lora = peft_config or default_lora_config(
            args.assistant_lora_r, args.assistant_lora_alpha, args.assistant_lora_dropout
        )
        set_seed(args.seed)  # the LoRA initialisation, before Trainer seeds: not whatever RNG state came before
        assistant = build_assistant(model, args.assistant_layers, lora)
        super().__init__(
            model=assistant,
            args=args,
            forget_dataset=forget_dataset,
            retain_dataset=retain_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.target.to(self.args.device)

    def prepare_method(self, model, args, forget_rows, retain_rows):
        self.use_paraphrased = args.use_paraphrased and all(r.get("paraphrased_answer") for r in forget_rows)
        self.use_perturbed = args.use_perturbed and all(r.get("perturbed_answer") for r in forget_rows)

    def forget_views(self, row, index, args):
        """The forget answer, its paraphrase (remembered too) and one of its wrong answers, drawn per example
        from the seed (pushed to uniform with the retain data)."""
        views = {"forget": tokenize_qa(self.tokenizer, row["question"], row["answer"], args.max_length)}
        if self.use_paraphrased:
            paraphrased = row["paraphrased_answer"]
            views["paraphrased"] = tokenize_qa(self.tokenizer, row["question"], paraphrased, args.max_length)
        if self.use_perturbed:
            wrong = row["perturbed_answer"]
            wrong = wrong[int(np.random.default_rng([args.seed, index]).integers(len(wrong)))]
            views["perturbed"] = tokenize_qa(self.tokenizer, row["question"], wrong, args.max_length)
        return views

    def unlearning_loss(self, model, inputs):
        remembered = [inputs["forget"], *([inputs["paraphrased"]] if "paraphrased" in inputs else [])]
        uniform = [inputs["retain"], *([inputs["perturbed"]] if "perturbed" in inputs else [])]
        batch = _concatenated(remembered + uniform, self.tokenizer.pad_token_id)
        logits = self.forward(model, batch).logits
        split = sum(len(b["input_ids"]) for b in remembered)
        forget_nll = nll(logits[:split], batch["labels"][:split])
        retain_uniform = uniform_loss(logits[split:], batch["labels"][split:])
        loss = uld_loss(forget_nll, retain_uniform, self.args.retain_weight)
        return loss, {"forget_nll": forget_nll, "retain_uniform_kl": retain_uniform}

    # ----- the unlearned model ------------------------------------------------------------------------------------
    def uld_model(self) -> ULDModel:
        """The logit-difference model: the target minus `assistant_weight` times the (current) assistant."""
        return ULDModel(self.target, self.accelerator.unwrap_model(self.model), self.args.assistant_weight,
                        self.args.candidate_threshold)

    def evaluation_model(self) -> ULDModel:
        """The logit-difference model, not the assistant alone, is what gets evaluated."""
        return self.uld_model()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the assistant adapter (as any PEFT trainer does) plus `uld_config.json`, so the folder loads with
        `ULDModel.from_pretrained`."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            folder = Path(output_dir or self.args.output_dir)
            config = self.uld_model().uld_config(self.processing_class)
            (folder / ULD_CONFIG_NAME).write_text(json.dumps(config, indent=2))
