"""Gradient difference: ascend on the forget set, descend on the retain set (Liu et al., 2022).

Reference: locuslab/open-unlearning, `src/trainer/unlearn/grad_diff.py` (defaults: `configs/trainer/GradDiff.yaml`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import RetainTermConfig, UnlearnTrainer, check_forget_and_retain_weights
from .losses import nll


def gradient_difference_loss(
    forget_nll: torch.Tensor, retain_term: torch.Tensor, gamma: float = 1.0, alpha: float = 1.0
) -> torch.Tensor:
    """L = gamma * (-NLL(D_f)) + alpha * R(D_r), with R the retain NLL or KL(pi_ref || pi_theta).

    NLL is the mean over every answer token of the batch (Hugging Face's causal-LM `outputs.loss`), as in
    open-unlearning's `GradDiff.compute_loss`."""
    return -gamma * forget_nll + alpha * retain_term


@dataclass
class GradDiffConfig(RetainTermConfig):
    r"""
    Configuration for `GradDiffTrainer` (defaults: open-unlearning's `configs/trainer/GradDiff.yaml`).

    Parameters:
        gamma (`float`, defaults to `1.0`): weight of the forget (ascent) term.
        alpha (`float`, defaults to `1.0`): weight of the retain term.
        retain_loss_type, kl_positions: the retain term, see `RetainTermConfig`.
    """

    gamma: float = field(default=1.0, metadata={"help": "Weight of the forget term."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain term."})

    def __post_init__(self):
        super().__post_init__()
        check_forget_and_retain_weights(self)


class GradDiffTrainer(UnlearnTrainer):
    config_class = GradDiffConfig

    def uses_reference(self, args):
        return args.retain_loss_type == "kl"

    def unlearning_loss(self, model, inputs):
        forget = inputs["forget"]
        forget_nll = nll(self.forward(model, forget).logits, forget["labels"])
        # gradient_difference_loss: gamma * (-NLL_f) + alpha * R, with R computed (and logged) even at alpha = 0
        return self.with_retain_term(model, inputs, -forget_nll, {"forget_nll": forget_nll}, always=True)
