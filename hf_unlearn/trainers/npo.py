"""Negative Preference Optimization (Zhang et al., 2024): DPO with only a rejected answer, against the reference.

Reference: locuslab/open-unlearning, `src/trainer/unlearn/npo.py` with `compute_dpo_loss(win_inputs=None)` and
`compute_batch_nll` in `src/trainer/utils.py` (defaults: `configs/trainer/NPO.yaml`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .base import RetainTermConfig, UnlearnTrainer, check_forget_and_retain_weights
from .losses import sequence_log_prob


def npo_loss(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """L = -(2/beta) * mean_i log sigmoid(-beta * (log pi_theta(y_i|x_i) - log pi_ref(y_i|x_i))).

    `log_prob`/`ref_log_prob` are whole-answer log-probabilities (the *sum* over answer tokens, shape (batch,)), the
    negated `compute_batch_nll` of open-unlearning; the mean is over the examples of the batch."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (log_prob - ref_log_prob)).mean()


@dataclass
class NPOConfig(RetainTermConfig):
    r"""
    Configuration for `NPOTrainer` (defaults: open-unlearning's `configs/trainer/NPO.yaml`).

    Parameters:
        beta (`float`, defaults to `0.1`): inverse temperature of the NPO loss.
        gamma (`float`, defaults to `1.0`): weight of the NPO forget term.
        alpha (`float`, defaults to `1.0`): weight of the retain term; `0` trains on the forget set only.
        retain_loss_type (`str`, defaults to `"nll"`): `"nll"` or `"kl"` (KL(pi_ref || pi_theta) on retain data), as
            in `GradDiffConfig`.
        kl_positions (`str`, defaults to `"all"`): positions of the `"kl"` retain term, as in `GradDiffConfig`
            (`"all"`: open-unlearning's; `"answer"`: answer-predicting positions only).
    """

    beta: float = field(default=0.1, metadata={"help": "Inverse temperature."})
    gamma: float = field(default=1.0, metadata={"help": "Weight of the forget term."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain term (0: none)."})

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(
                f"beta (NPO's inverse temperature) must be > 0, got {self.beta}; e.g. 0.1 (open-unlearning's NPO "
                "default; the loss divides by beta, and a negative one rewards remembering)."
            )
        check_forget_and_retain_weights(self)


class NPOTrainer(UnlearnTrainer):
    config_class = NPOConfig
    requires_reference = True

    def uses_retain(self, args):
        return args.alpha > 0

    def unlearning_loss(self, model, inputs):
        forget = inputs["forget"]
        log_prob = sequence_log_prob(self.forward(model, forget).logits, forget["labels"])
        ref_log_prob = sequence_log_prob(self.reference_forward(model, forget).logits, forget["labels"])
        forget_loss = npo_loss(log_prob, ref_log_prob, self.args.beta)
        metrics = {"forget_npo": forget_loss, "forget_log_ratio": (log_prob - ref_log_prob).mean()}
        return self.with_retain_term(model, inputs, forget_loss, metrics)
