"""IdkDPO (Maini et al., 2024): DPO with a refusal ("I don't know") as the preferred answer and the forget answer as
the rejected one, plus a retain term.

Reference: locuslab/open-unlearning, `src/trainer/unlearn/dpo.py` with `compute_dpo_loss` in `src/trainer/utils.py`
(defaults: `configs/trainer/DPO.yaml`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .base import RefusalTemplateMixin, RetainTermConfig, UnlearnTrainer, check_forget_and_retain_weights
from .losses import sequence_log_prob


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> torch.Tensor:
    """L = -(2/beta) * mean log sigmoid(beta * ((log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))))
    over whole-answer (summed) log-probs: DPO scaled by 2/beta, as open-unlearning's `compute_dpo_loss`."""
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


@dataclass
class IdkDPOConfig(RetainTermConfig):
    r"""
    Configuration for `IdkDPOTrainer` (defaults: open-unlearning's `configs/trainer/DPO.yaml`).

    Parameters:
        beta (`float`, defaults to `0.1`): DPO inverse temperature.
        gamma (`float`, defaults to `1.0`): weight of the DPO term.
        alpha (`float`, defaults to `1.0`): weight of the retain term; `0` trains on the forget set only.
        retain_loss_type (`str`, defaults to `"nll"`): `"nll"` or `"kl"`, as in `GradDiffConfig`.
        kl_positions (`str`, defaults to `"all"`): positions of the `"kl"` retain term, as in `GradDiffConfig`.
        template_file (`str`, *optional*): refusal templates, one per line; the package's templates when unset.
    """

    beta: float = field(default=0.1, metadata={"help": "DPO inverse temperature."})
    gamma: float = field(default=1.0, metadata={"help": "Weight of the DPO term."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain term (0: none)."})
    template_file: str | None = field(default=None, metadata={"help": "Refusal templates, one per line."})

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(
                f"beta (DPO's inverse temperature) must be > 0, got {self.beta}; e.g. 0.1 (open-unlearning's DPO "
                "default; the loss divides by beta, and a negative one prefers the forget answer)."
            )
        check_forget_and_retain_weights(self)


class IdkDPOTrainer(RefusalTemplateMixin, UnlearnTrainer):
    config_class = IdkDPOConfig
    requires_reference = True

    def uses_retain(self, args):
        return args.alpha > 0

    def unlearning_loss(self, model, inputs):
        forget, template = inputs["forget"], inputs["template"]
        rejected = sequence_log_prob(self.forward(model, forget).logits, forget["labels"])
        chosen = sequence_log_prob(self.forward(model, template).logits, template["labels"])
        ref_rejected = sequence_log_prob(self.reference_forward(model, forget).logits, forget["labels"])
        ref_chosen = sequence_log_prob(self.reference_forward(model, template).logits, template["labels"])
        forget_loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.args.beta)
        return self.with_retain_term(model, inputs, forget_loss, {"forget_dpo": forget_loss})
