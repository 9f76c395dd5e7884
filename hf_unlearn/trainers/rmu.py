"""Representation Misdirection for Unlearning (Li et al., 2024, WMDP).

At a chosen layer l, push the forget data's hidden states (the output of decoder layer l) toward a fixed random
direction of norm c, and keep the retain data's where the frozen model has them:

    L = mean_i mean_{t in A_i} ||h_theta(x_f)_t - c u||^2 / d
      + alpha * mean_i mean_{t in A_i} ||h_theta(x_r)_t - h_ref(x_r)_t||^2 / d

with u = r / ||r||, r ~ U[0, 1)^d drawn once, d the hidden size, A_i the answer-token positions of example i (labels
!= -100) and the outer mean over the batch. Only the MLP down-projections of layers l-2..l are trained (unless the
model is a PEFT model, whose adapter is trained instead).

References: the WMDP release (centerforaisafety/wmdp, `rmu/unlearn.py`: layer_id 7, layer_ids 5,6,7, param_ids 6
= `mlp.down_proj.weight`, steering_coeffs 20, alpha 100, control vector `rand(d) / norm * c`, MSE against it) and
locuslab/open-unlearning, `src/trainer/unlearn/rmu.py` (the same loss restricted to answer tokens: mean over each
example's labelled positions, then over the batch, `compute_activation_loss`). WMDP's raw-text corpora have no
prompt, so it averages over every position; on question/answer rows we follow open-unlearning's mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.formatting import IGNORE_INDEX, pad_examples, tokenize_qa
from ..layout import decoder_layers
from .base import UnlearnConfig, UnlearnTrainer


# The paper's (and both references') steered layer on their 32-layer models (Zephyr-7B, Llama-2-7B).
REFERENCE_LAYER, REFERENCE_DEPTH = 7, 32


def default_rmu_layer(num_layers: int) -> int:
    """The reference's layer 7 of 32 at the same relative depth: round(7 * n / 32), halves rounded up, at most n - 1.

    32 layers -> 7 (trains 5-7), 30 (SmolLM2-135M) -> 7 (5-7), 16 -> 4 (2-4), 4 (the embedded model) -> 1 (0-1)."""
    if num_layers < 1:
        raise ValueError(f"The model has no layers ({num_layers}).")
    return min(num_layers - 1, (2 * REFERENCE_LAYER * num_layers + REFERENCE_DEPTH) // (2 * REFERENCE_DEPTH))


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions holding an answer token (labels != -100), as open-unlearning's RMU masks its activations."""
    return labels != IGNORE_INDEX


def masked_mse(states: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over examples of (mean over the example's masked positions of ||states - targets||^2 / d)."""
    per_position = ((states.float() - targets.float()) ** 2).mean(-1)
    mask = mask.to(per_position.dtype)
    per_example = (per_position * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_example.mean()


def rmu_loss(
    forget_states: torch.Tensor,
    forget_mask: torch.Tensor,
    control: torch.Tensor,
    retain_states: torch.Tensor,
    ref_retain_states: torch.Tensor,
    retain_mask: torch.Tensor,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, forget term, retain term) of the RMU loss; `control` is the scaled random direction c*u."""
    forget_term = masked_mse(forget_states, control.expand_as(forget_states), forget_mask)
    retain_term = masked_mse(retain_states, ref_retain_states, retain_mask)
    return forget_term + alpha * retain_term, forget_term, retain_term


@dataclass
class RMUConfig(UnlearnConfig):
    r"""
    Configuration for `RMUTrainer` (defaults: the WMDP release, `rmu/unlearn.py`).

    Parameters:
        layer (`int`, *optional*): the decoder layer whose output is steered; layers `layer-2..layer` are trained.
            Defaults to the reference's layer 7 of 32 at the same relative depth, round(7 * num_layers / 32): 7 on
            32 layers (trains 5-7) and on SmolLM2's 30, 1 on the embedded benchmark's 4 (trains 0-1).
        steering_coeff (`float`, defaults to `20.0`): c, the norm of the control vector (WMDP's default
            `--steering_coeffs 20`; its released Zephyr-7B model used 6.5, open-unlearning's configs use 2). The
            right c depends on the scale of the model's hidden states; see `steering_scale`.
        steering_scale (`float`, *optional*): when set, c = steering_scale x the frozen model's mean layer-l state
            norm on the forget set instead of `steering_coeff` (one value for any model width; not in the reference).
        alpha (`float`, defaults to `100.0`): weight of the retain term (WMDP's default `--alpha 100`; its Zephyr
            model used 1200, open-unlearning's configs use 1).
    """

    layer: int | None = field(default=None, metadata={"help": "Steered layer (default round(7 * num_layers / 32))."})
    steering_coeff: float = field(default=20.0, metadata={"help": "c, the norm of the control vector."})
    steering_scale: float | None = field(
        default=None, metadata={"help": "When set: c = scale * mean forget-state norm (overrides steering_coeff)."}
    )
    alpha: float = field(default=100.0, metadata={"help": "Weight of the retain term."})

    def __post_init__(self):
        super().__post_init__()
        if self.layer is not None and not self.layer >= 0:
            raise ValueError(
                f"layer (the steered decoder layer, counted from 0) must be unset or >= 0, got {self.layer}; e.g. 7 on "
                "a 32-layer model (WMDP's layer_id; unset picks the same relative depth)."
            )
        if not self.steering_coeff > 0:
            raise ValueError(
                f"steering_coeff (c, the control vector's norm) must be > 0, got {self.steering_coeff}; e.g. 20 "
                "(WMDP's default --steering_coeffs; 6.5 for its released Zephyr-7B)."
            )
        if self.steering_scale is not None and not self.steering_scale > 0:
            raise ValueError(
                f"steering_scale (c as a multiple of the forget states' mean norm) must be unset or > 0, got "
                f"{self.steering_scale}; e.g. 2.0 steers toward twice the states' usual norm."
            )
        if not self.alpha >= 0:
            raise ValueError(
                f"alpha (the retain term's weight) must be >= 0, got {self.alpha}; e.g. 100 (WMDP's default --alpha; "
                "open-unlearning's configs use 1)."
            )


class RMUTrainer(UnlearnTrainer):
    config_class = RMUConfig
    requires_reference = True

    def prepare_method(self, model, args, forget_rows, retain_rows):
        base = model.get_base_model() if self.is_peft else model
        layers = decoder_layers(base, "RMU")
        self.layer = args.layer if args.layer is not None else default_rmu_layer(len(layers))
        if not 0 <= self.layer < len(layers):
            raise ValueError(f"RMU layer {self.layer} is out of range: the model has {len(layers)} layers.")
        if not self.is_peft:
            model.requires_grad_(False)
            for index in range(max(0, self.layer - 2), self.layer + 1):
                layers[index].mlp.down_proj.requires_grad_(True)
        generator = torch.Generator().manual_seed(args.seed)
        direction = torch.rand(base.config.hidden_size, generator=generator)
        if args.steering_scale is not None:
            coeff = args.steering_scale * self._mean_state_norm(model, forget_rows, args)
        else:
            coeff = args.steering_coeff
        self.steering_coeff = float(coeff)
        self.steering_vector = coeff * direction / direction.norm()

    @torch.no_grad()
    def _mean_state_norm(self, model, rows, args) -> float:
        examples = [tokenize_qa(self.tokenizer, r["question"], r["answer"], args.max_length) for r in rows[:64]]
        batch = pad_examples(examples, self.tokenizer.pad_token_id)
        states = self.layer_states(model, {k: v.to(model.device) for k, v in batch.items()})
        mask = answer_mask(batch["labels"]).to(states.device)
        return float((states.float().norm(dim=-1) * mask).sum() / mask.sum())

    def layer_states(self, model, batch: dict) -> torch.Tensor:
        """The output of decoder layer `self.layer` (`hidden_states[0]` is the embeddings)."""
        return self.forward(model, batch, output_hidden_states=True).hidden_states[self.layer + 1]

    def unlearning_loss(self, model, inputs):
        forget, retain = inputs["forget"], inputs["retain"]
        forget_states = self.layer_states(model, forget)
        retain_states = self.layer_states(model, retain)
        ref_retain = self.reference_forward(model, retain, output_hidden_states=True).hidden_states[self.layer + 1]
        loss, forget_term, retain_term = rmu_loss(
            forget_states,
            answer_mask(forget["labels"]),
            self.steering_vector.to(forget_states.device),
            retain_states,
            ref_retain,
            answer_mask(retain["labels"]),
            self.args.alpha,
        )
        return loss, {"forget_rmu": forget_term, "retain_rmu": retain_term}
