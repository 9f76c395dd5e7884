"""FLAT (Wang et al., ICLR 2025): LLM unlearning via loss adjustment with only forget data.

For a forget prompt x with forget answer y_f and a template answer y_e (a refusal drawn per example), with P_e and
P_f the average per-token probabilities of y_e and y_f under pi_theta:

    L = -( g*(P_e) - f*(g*(P_f)) )

where (g*, f*) are the variational functions of an f-divergence. The loss is applied per sample and then averaged
(the paper's form; the authors' code averages over the padded batch first). No retain data, no reference model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .base import RefusalTemplateMixin, UnlearnConfig, UnlearnTrainer
from .losses import mean_token_prob


DIVERGENCES = ("kl", "js", "pearson", "tv")


def divergence_functions(divergence: str):
    """(g*, f*) of an f-divergence: KL (v, e^(u-1)); Pearson (v, u^2/4 + u); JS (log 2 - log(1 + e^-v),
    -log(2 - e^u)); total variation (tanh(v)/2, u)."""
    if divergence == "kl":
        return (lambda v: v), (lambda u: torch.exp(u - 1))
    if divergence == "pearson":
        return (lambda v: v), (lambda u: u**2 / 4 + u)
    if divergence == "js":
        return (lambda v: math.log(2) - torch.log1p(torch.exp(-v))), (lambda u: -torch.log(2 - torch.exp(u)))
    if divergence == "tv":
        return (lambda v: torch.tanh(v) / 2), (lambda u: u)
    raise ValueError(f"Unknown divergence {divergence!r}; choose one of {DIVERGENCES}.")


def flat_loss(template_prob: torch.Tensor, forget_prob: torch.Tensor, divergence: str = "kl") -> torch.Tensor:
    """Per-sample FLAT loss -(g*(P_e) - f*(g*(P_f))), averaged over the batch."""
    g_star, f_star = divergence_functions(divergence)
    return -(g_star(template_prob) - f_star(g_star(forget_prob))).mean()


@dataclass
class FLATConfig(UnlearnConfig):
    r"""
    Configuration for `FLATTrainer` (defaults from the paper: KL, lr 1e-5, 5 epochs, weight decay 0.01).

    Parameters:
        divergence (`str`, defaults to `"kl"`): `"kl"`, `"js"`, `"pearson"` or `"tv"`.
        template_file (`str`, *optional*): refusal templates, one per line (TOFU's `idontknow.jsonl`), or a folder
            holding `idontknow.jsonl`; the package's templates when unset.
    """

    divergence: str = field(default="kl", metadata={"help": "f-divergence: kl, js, pearson or tv."})
    template_file: str | None = field(default=None, metadata={"help": "Refusal templates, one per line."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Learning rate."})
    num_train_epochs: float = field(default=5.0, metadata={"help": "Epochs."})
    weight_decay: float = field(default=0.01, metadata={"help": "Weight decay."})

    def __post_init__(self):
        super().__post_init__()
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"Unknown divergence {self.divergence!r}; choose one of {DIVERGENCES}.")


class FLATTrainer(RefusalTemplateMixin, UnlearnTrainer):
    config_class = FLATConfig
    requires_retain = False

    def unlearning_loss(self, model, inputs):
        forget, template = inputs["forget"], inputs["template"]
        forget_prob = mean_token_prob(self.forward(model, forget).logits, forget["labels"])
        template_prob = mean_token_prob(self.forward(model, template).logits, template["labels"])
        loss = flat_loss(template_prob, forget_prob, self.args.divergence)
        return loss, {"forget_prob": forget_prob.mean(), "template_prob": template_prob.mean()}
