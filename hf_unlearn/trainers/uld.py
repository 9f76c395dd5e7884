"""ULD, unlearning from logit difference (Ji et al., 2024): train a small assistant on the reversed goals -
remember the forget set, know nothing of the retain set - and subtract its logits from the target's
(`hf_unlearn.decoding.uld.ULDModel`). Only the assistant's LoRA adapter trains; the target stays as it is.

Reference: github.com/UCSB-NLP-Chang/ULD, `configs/unlearn_loss/remember+uniform.yaml` (GradDescentLossFunc on forget
data + 5 * UniformLossFunc on retain data, `uld/model/forget_losses.py`) with `configs/data_mode/
forget_more_retain_perturb.yaml` (`uld/data/tofu.py`): the forget rows plus 2 generated paraphrases each are
remembered; retain rows plus 2 generated wrong answers per forget row are pushed to uniform. The augmentations there
are made separately (`data/aug_data/tofu`), never TOFU's `paraphrased_answer`/`perturbed_answer`, which the truth ratio
scores; here they come from user-named columns (`positive_augmentation_column`, `negative_augmentation_column`),
none by default.

Deliberate differences: the uniform loss averages over answer positions (the reference averages over every position
of the batch, prompt and padding included); each forget example is paired with a retain row drawn per epoch and its
augmentations in one step (the reference adds the augmentations and the last |forget| retain rows as separate
examples)."""

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
from ..decoding.uld import (
    DEFAULT_ASSISTANT_WEIGHT,
    DEFAULT_CANDIDATE_THRESHOLD,
    ULD_CONFIG_NAME,
    ULDModel,
    build_assistant,
    default_lora_config,
)
from ..modeling import load_causal_lm
from .base import UnlearnConfig, UnlearnTrainer
from .losses import nll, shift_for_next_token


def uniform_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(U || p) = -log|V| - (1/|V|) sum_v log p(v) of the next-token distribution p at each answer position,
    averaged over the answer positions of the batch (ULD's retain loss: 0 exactly when every p is uniform).
    Reference: `UniformLossFunc` in github.com/UCSB-NLP-Chang/ULD, `uld/model/forget_losses.py`, which averages the
    same KL over every position of the batch (prompt and padding too); here only the answer positions count."""
    logits, labels = shift_for_next_token(logits, labels)
    mask = labels != IGNORE_INDEX
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    kl = -math.log(logits.shape[-1]) - log_probs.mean(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def uld_loss(forget_nll: torch.Tensor, retain_uniform: torch.Tensor, retain_weight: float = 5.0) -> torch.Tensor:
    """L = CE(D_f) + w_r * KL(U || p)(D_r): the assistant remembers the forget set and is uniform on retain data."""
    return forget_nll + retain_weight * retain_uniform


# Columns of TOFU-schema rows whose answers the TOFU evaluation scores (`hf_unlearn.eval.tofu`: the truth ratio scores
# `paraphrased_answer` and every `perturbed_answer` given `question`): never training data.
SCORED_ANSWER_COLUMNS = ("paraphrased_answer", "perturbed_answer")


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

    Parameters that control the loss and its data:
        retain_weight (`float`, defaults to `5.0`): w_r in CE_f + w_r * KL(U || p)_r.
        positive_augmentation_column (`str`, *optional*): a column of the forget rows holding separately generated
            rephrasings of each forget fact, remembered like the forget answer (the authors' paraphrase augmentation,
            `data/aug_data/tofu/<split>/paraphrase_res.csv` in github.com/UCSB-NLP-Chang/ULD). Each value: an answer
            to the row's question, a `{"question", "answer"}` pair, or a list of either. Unset (default): none.
        negative_augmentation_column (`str`, *optional*): a column of the forget rows holding separately generated
            wrong answers, pushed toward uniform with the retain data (the authors' `perturb_res.csv`); same values.
            Unset (default): none.
        augmentations_per_row (`int`, defaults to `2`): augmentations of each kind paired with every forget example
            (the authors' `expand_qanum: 2`), drawn from the row's list with the seed (cycled if it holds fewer).

        TOFU's `paraphrased_answer` and `perturbed_answer` are refused as augmentations: the truth ratio scores exactly
        those answers, so training on them leaks the test set into forget quality.

    Parameters of the unlearned model (`ULDModel`):
        assistant_weight (`float`, defaults to `0.8`): alpha in l_target - alpha * l_assistant (the authors' TOFU
            setting, `model_mode.weight=-0.8` in `bashes/tofu/uld_train.sh`).
        candidate_threshold (`float`, defaults to `0.01`): tau; the assistant's logits are subtracted only on the
            target's top floor(tau * |V|) tokens and those with probability >= tau * max probability
            (`model_mode.top_logit_filter=1e-2` there).
    """

    assistant_layers: float = field(default=0.25, metadata={"help": "Assistant depth: fraction or count of layers."})
    assistant_lora_r: int = field(default=16, metadata={"help": "LoRA rank of the assistant."})
    assistant_lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha of the assistant."})
    assistant_lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout of the assistant."})
    retain_weight: float = field(default=5.0, metadata={"help": "Weight of the uniform loss on retain data."})
    positive_augmentation_column: str | None = field(
        default=None, metadata={"help": "Forget-row column of generated rephrasings to remember (default: none)."}
    )
    negative_augmentation_column: str | None = field(
        default=None, metadata={"help": "Forget-row column of generated wrong answers to push to uniform (default: none)."}
    )
    augmentations_per_row: int = field(default=2, metadata={"help": "Augmentations of each kind per forget example."})
    assistant_weight: float = field(
        default=DEFAULT_ASSISTANT_WEIGHT, metadata={"help": "alpha: weight of the assistant's logits."}
    )
    candidate_threshold: float = field(
        default=DEFAULT_CANDIDATE_THRESHOLD, metadata={"help": "tau: candidate-set threshold."}
    )

    def __post_init__(self):
        for name in ("positive_augmentation_column", "negative_augmentation_column"):
            if getattr(self, name) in SCORED_ANSWER_COLUMNS:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} names answers the TOFU truth ratio scores: training the assistant "
                    "on them leaks the test set. Supply separately generated augmentations in another column."
                )
        if self.augmentations_per_row < 1:
            raise ValueError(f"augmentations_per_row must be at least 1, got {self.augmentations_per_row}.")
        layers = self.assistant_layers
        if not (0 < layers < 1 or (layers >= 1 and float(layers).is_integer())):
            raise ValueError(
                f"assistant_layers must be a fraction in (0, 1) of the target's layers or a whole count >= 1, got "
                f"{layers}; e.g. 0.25 keeps the first quarter (8 of 32 layers in the paper)."
            )
        if not self.assistant_lora_r >= 1:
            raise ValueError(
                f"assistant_lora_r (the assistant's LoRA rank) must be >= 1, got {self.assistant_lora_r}; e.g. 16 "
                "(the default; 32 on the embedded benchmark)."
            )
        if not self.assistant_lora_alpha > 0:
            raise ValueError(
                f"assistant_lora_alpha must be > 0 (the adapter is scaled by alpha / r), got "
                f"{self.assistant_lora_alpha}; e.g. 32, twice the rank 16."
            )
        if not 0 <= self.assistant_lora_dropout < 1:
            raise ValueError(
                f"assistant_lora_dropout must be in [0, 1), got {self.assistant_lora_dropout}; e.g. 0.05 (the default)."
            )
        if not self.retain_weight >= 0:
            raise ValueError(
                f"retain_weight (w_r of the uniform loss on retain data) must be >= 0, got {self.retain_weight}; e.g. "
                "5 (the authors' remember+uniform setting)."
            )
        if not self.assistant_weight > 0:
            raise ValueError(
                f"assistant_weight (alpha in l_target - alpha * l_assistant; the authors' model_mode.weight=-0.8 is "
                f"alpha 0.8) must be > 0, got {self.assistant_weight}; e.g. 0.8 (the authors' TOFU setting)."
            )
        if not 0 <= self.candidate_threshold <= 1:
            raise ValueError(
                f"candidate_threshold (tau) must be in [0, 1], got {self.candidate_threshold}; e.g. 0.01 (the "
                "authors' top_logit_filter=1e-2; 0 subtracts the assistant on every token)."
            )
        super().__post_init__()


def _augmentation_pairs(row: dict, column: str, index: int) -> list[tuple[str, str]]:
    """(question, answer) pairs of one forget row's augmentation column; refuses an answer the evaluation scores."""
    if column not in row:
        raise ValueError(f"Forget row {index} has no column {column!r}; add it to every forget row or unset the option.")
    values = row[column]
    values = values if isinstance(values, (list, tuple)) else [values]
    pairs = [(v["question"], v["answer"]) if isinstance(v, dict) else (row["question"], v) for v in values if v]
    if not pairs or not all(isinstance(q, str) and isinstance(a, str) and a for q, a in pairs):
        raise ValueError(
            f"Forget row {index}: column {column!r} must hold answers (strings) or {{'question', 'answer'}} pairs, "
            f"at least one; got {values!r}."
        )
    scored = {row.get("paraphrased_answer")} | set(row.get("perturbed_answer") or [])
    leaked = sorted(a for _, a in pairs if a in scored)
    if leaked:
        raise ValueError(
            f"Forget row {index}: column {column!r} repeats an answer the TOFU truth ratio scores ({leaked[0]!r}); "
            "training on it leaks the test set. Use separately generated augmentations."
        )
    return pairs


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

    def forget_views(self, row, index, args):
        """The forget answer, and with augmentation columns set, `augmentations_per_row` of the row's generated
        rephrasings (`positive_<i>`, remembered) and wrong answers (`negative_<i>`, pushed to uniform with the retain
        data), drawn from the seed."""
        views = {"forget": tokenize_qa(self.tokenizer, row["question"], row["answer"], args.max_length)}
        for kind in ("positive", "negative"):
            column = getattr(args, f"{kind}_augmentation_column")
            if column is None:
                continue
            pairs = _augmentation_pairs(row, column, index)
            order = np.random.default_rng([args.seed, index, kind == "negative"]).permutation(len(pairs))
            for i in range(args.augmentations_per_row):
                question, answer = pairs[order[i % len(pairs)]]
                views[f"{kind}_{i}"] = tokenize_qa(self.tokenizer, question, answer, args.max_length)
        return views

    def unlearning_loss(self, model, inputs):
        remembered = [inputs["forget"], *(v for k, v in inputs.items() if k.startswith("positive_"))]
        uniform = [inputs["retain"], *(v for k, v in inputs.items() if k.startswith("negative_"))]
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
