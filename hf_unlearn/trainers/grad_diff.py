"""Gradient difference: ascend on the forget set, descend on the retain set (Liu et al., 2022).

Reference: locuslab/open-unlearning, `src/trainer/unlearn/grad_diff.py` (defaults: `configs/trainer/GradDiff.yaml`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import UnlearnConfig, UnlearnTrainer
from .losses import KL_POSITIONS, kl_to_reference, nll

RETAIN_LOSS_TYPES = ("nll", "kl")


@dataclass
class RetainTermConfig(UnlearnConfig):
    r"""
    The retain term's options, shared by GradDiff, NPO, SimNPO and IdkDPO (see `retain_term`).

    Parameters:
        retain_loss_type (`str`, defaults to `"nll"`): the retain term R. `"nll"`: the retain answers' mean token NLL
            (open-unlearning's `NLL`); `"kl"`: KL(pi_ref || pi_theta) to the frozen reference on the retain batch
            (open-unlearning's `KL`; needs the reference model).
        kl_positions (`str`, defaults to `"all"`): where the `"kl"` retain term is taken. `"all"`, as open-unlearning's
            `compute_kl_divergence`: every position of the padded retain batch (prompt and padding included), summed
            over the vocabulary and divided by batch x length; `"answer"`: averaged over the positions that predict
            an answer token only (see `losses.kl_to_reference`).
    """

    retain_loss_type: str = field(default="nll", metadata={"help": "Retain term: nll or kl."})
    kl_positions: str = field(
        default="all", metadata={"help": "KL retain term over all positions (reference) or answer positions."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.retain_loss_type not in RETAIN_LOSS_TYPES:
            raise ValueError(f"retain_loss_type must be 'nll' or 'kl', got {self.retain_loss_type!r}.")
        if self.kl_positions not in KL_POSITIONS:
            raise ValueError(f"kl_positions must be 'all' or 'answer', got {self.kl_positions!r}.")


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


def check_forget_and_retain_weights(config) -> None:
    """The forget weight `gamma` must be > 0 (0 trains no forgetting; a negative one learns the forget set) and the
    retain weight `alpha` >= 0 (0: forget set only); shared by GradDiff, NPO, SimNPO and IdkDPO, whose defaults are
    open-unlearning's."""
    defaults = type(config).__dataclass_fields__
    if not config.gamma > 0:
        raise ValueError(
            f"gamma (the forget term's weight) must be > 0, got {config.gamma}; e.g. {defaults['gamma'].default}, "
            "open-unlearning's setting for this method."
        )
    if not config.alpha >= 0:
        raise ValueError(
            f"alpha (the retain term's weight) must be >= 0 (0: forget set only), got {config.alpha}; e.g. "
            f"{defaults['alpha'].default}, open-unlearning's setting for this method."
        )


def retain_term(
    trainer: UnlearnTrainer, model, retain: dict, loss_type: str, kl_positions: str = "all"
) -> torch.Tensor:
    """The retain loss shared by GradDiff, NPO, SimNPO and IdkDPO: NLL, or KL to the reference model."""
    logits = trainer.forward(model, retain).logits
    if loss_type == "nll":
        return nll(logits, retain["labels"])
    ref_logits = trainer.reference_forward(model, retain).logits
    return kl_to_reference(logits, ref_logits, retain["labels"], positions=kl_positions)


class GradDiffTrainer(UnlearnTrainer):
    config_class = GradDiffConfig

    def uses_reference(self, args):
        return args.retain_loss_type == "kl"

    def unlearning_loss(self, model, inputs):
        forget = inputs["forget"]
        forget_nll = nll(self.forward(model, forget).logits, forget["labels"])
        retain = retain_term(self, model, inputs["retain"], self.args.retain_loss_type, self.args.kl_positions)
        loss = gradient_difference_loss(forget_nll, retain, self.args.gamma, self.args.alpha)
        return loss, {"forget_nll": forget_nll, "retain_loss": retain}
