"""SimNPO (Fan et al., 2024): length-normalised NPO without a reference model.

Reference: locuslab/open-unlearning, `src/trainer/unlearn/simnpo.py` (defaults: `configs/trainer/SimNPO.yaml`), which
follows the authors' code (OPTML-Group/Unlearn-Simple, `TOFU/dataloader.py`, loss types `simnpo`/`simnpo_grad_diff`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .base import RetainTermConfig, UnlearnTrainer, check_forget_and_retain_weights
from .losses import mean_token_log_prob


def simnpo_loss(mean_log_prob: torch.Tensor, beta: float = 4.5, delta: float = 0.0) -> torch.Tensor:
    """L = -(2/beta) * mean_i log sigmoid(beta * (NLL_i / |y_i| - delta)), with NLL_i / |y_i| = -mean_log_prob_i.

    As the reference writes it: `-logsigmoid(beta * (nll_sum / |y| - delta)).mean() * 2 / beta`. The margin thus
    enters multiplied by beta: the paper's form -(2/beta) log sigmoid(-(beta/|y|) log pi(y|x) - gamma) has
    gamma = beta * delta."""
    return -(2.0 / beta) * F.logsigmoid(beta * (-mean_log_prob - delta)).mean()


@dataclass
class SimNPOConfig(RetainTermConfig):
    r"""
    Configuration for `SimNPOTrainer` (defaults: open-unlearning's `configs/trainer/SimNPO.yaml`, its TOFU setting;
    the authors' TOFU config has beta 2.5 and forget weight 0.1375).

    Parameters:
        beta (`float`, defaults to `4.5`): inverse temperature.
        delta (`float`, defaults to `0.0`): the reward margin, subtracted from the mean answer NLL inside the
            sigmoid's beta (open-unlearning's `delta`, the authors' code's `gamma`; the paper's gamma is beta * delta).
        gamma (`float`, defaults to `0.125`): weight of the forget term.
        alpha (`float`, defaults to `1.0`): weight of the retain term; `0` trains on the forget set only.
        retain_loss_type (`str`, defaults to `"nll"`): `"nll"` or `"kl"`, as in `GradDiffConfig`.
        kl_positions (`str`, defaults to `"all"`): positions of the `"kl"` retain term, as in `GradDiffConfig`.
    """

    beta: float = field(default=4.5, metadata={"help": "Inverse temperature."})
    delta: float = field(default=0.0, metadata={"help": "Reward margin (inside beta: paper's gamma = beta * delta)."})
    gamma: float = field(default=0.125, metadata={"help": "Weight of the forget term."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain term (0: none)."})

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(
                f"beta (SimNPO's inverse temperature) must be > 0, got {self.beta}; e.g. 4.5 (open-unlearning's TOFU "
                "setting; the authors' is 2.5)."
            )
        if not self.delta >= 0:
            raise ValueError(
                f"delta (SimNPO's reward margin, the paper's gamma / beta) must be >= 0, got {self.delta}; e.g. 0.0 "
                "(open-unlearning's and the authors' TOFU setting)."
            )
        check_forget_and_retain_weights(self)


class SimNPOTrainer(UnlearnTrainer):
    config_class = SimNPOConfig

    def uses_retain(self, args):
        return args.alpha > 0

    def uses_reference(self, args):
        return args.alpha > 0 and args.retain_loss_type == "kl"

    def unlearning_loss(self, model, inputs):
        forget = inputs["forget"]
        mean_log_prob = mean_token_log_prob(self.forward(model, forget).logits, forget["labels"])
        forget_loss = simnpo_loss(mean_log_prob, self.args.beta, self.args.delta)
        return self.with_retain_term(model, inputs, forget_loss, {"forget_simnpo": forget_loss})
