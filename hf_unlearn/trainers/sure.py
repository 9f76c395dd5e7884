"""SURE: saliency-based unlearning that survives quantization (Zhang et al., 2024, "Catastrophic Failure of LLM
Unlearning via Quantization", section 6).

Small unlearning updates spread over every weight rarely move a weight into another 4-bit quantization bucket,
so quantization can bring the forgotten knowledge back. SURE concentrates the update: it measures each module's
saliency, the gradient norm of the forget loss at the original weights,

    s_m = || grad_{theta_m} L_forget(theta_0) ||_2,

and trains only the modules with s_m at or above the `sure_percentile`-th percentile of all saliencies (the
paper's mask m = 1[s_m >= gamma]), intended with a larger learning rate (the paper: 1e-4 instead of 1e-5).

It works with every method: `sure_percentile` in any `UnlearnConfig` makes the trainer freeze the non-salient
modules (after the method's own set-up, before the optimizer is built; the choice is in `trainer.saliency_map`). The forget
loss whose gradient ranks modules is the forget-set NLL (answer tokens): the forget term of gradient ascent and
gradient difference is -NLL, and NPO's gradient at theta = theta_ref is exactly -grad NLL, so for these methods the
ranking is the paper's; for the other methods it is the knowledge-of-the-answer saliency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.formatting import pad_examples, tokenize_qa
from ..modeling import eval_mode
from .losses import nll


# PEFT adds these below the module it adapts; saliency is per adapted module.
_ADAPTER_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "base_layer")


def module_of(parameter_name: str) -> str:
    """The module a parameter belongs to: its name without `.weight`/`.bias` and without PEFT adapter parts
    (`...q_proj.lora_B.default.weight` -> `...q_proj`)."""
    parts = parameter_name.split(".")[:-1]
    for index, part in enumerate(parts):
        if part in _ADAPTER_PARTS:
            return ".".join(parts[:index])
    return ".".join(parts)


def salient_modules(saliency: dict[str, float], percentile: float) -> tuple[list[str], float]:
    """Modules whose saliency is at or above the `percentile`-th percentile (linear interpolation) of all
    saliencies: (names, threshold gamma)."""
    if not saliency:
        raise ValueError("No module saliencies: the model has no trainable parameters.")
    if not 0 <= percentile < 100:
        raise ValueError(f"sure_percentile must be in [0, 100), got {percentile}; 90 keeps the top tenth of modules.")
    threshold = float(np.percentile(np.asarray(list(saliency.values()), dtype=np.float64), percentile))
    return [name for name, value in saliency.items() if value >= threshold], threshold


def module_saliency(model, batches) -> dict[str, float]:
    """s_m = || grad_{theta_m} sum_b NLL(batch_b) ||_2 over each module's trainable parameters, at the current
    weights. The model's gradients are cleared before and after; its weights are not changed."""
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not parameters:
        raise ValueError("SURE found no trainable parameters to rank.")
    model.zero_grad(set_to_none=True)
    device = next(iter(parameters.values())).device
    try:
        with eval_mode(model):  # no dropout: the saliency of the model as it is
            for batch in batches:
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device)).logits
                nll(logits, batch["labels"].to(device)).backward()
        squared: dict[str, float] = {}
        for name, parameter in parameters.items():
            module = module_of(name)
            grad = 0.0 if parameter.grad is None else float(parameter.grad.detach().float().pow(2).sum())
            squared[module] = squared.get(module, 0.0) + grad
    finally:
        model.zero_grad(set_to_none=True)
    return {name: value**0.5 for name, value in squared.items()}


@dataclass
class SaliencyMap:
    """What SURE chose: every module's saliency, the threshold gamma, the modules trained and the share of
    trainable weights they hold."""

    saliency: dict[str, float]
    threshold: float
    selected: list[str]
    trained_fraction: float


def apply_sure(model, tokenizer, forget_rows: list[dict], percentile: float, max_length: int = 256, batch_size: int = 8) -> SaliencyMap:
    """Rank modules by the saliency of the forget NLL on `forget_rows` (question/answer dicts) at the current
    weights and freeze (`requires_grad=False`) every trainable module below the percentile threshold."""
    examples = [tokenize_qa(tokenizer, r["question"], r["answer"], max_length) for r in forget_rows]
    batches = [pad_examples(examples[i : i + batch_size], tokenizer.pad_token_id) for i in range(0, len(examples), batch_size)]
    saliency = module_saliency(model, batches)
    selected, threshold = salient_modules(saliency, percentile)
    keep = set(selected)
    total = trained = 0
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        total += parameter.numel()
        if module_of(name) in keep:
            trained += parameter.numel()
        else:
            parameter.requires_grad_(False)
    return SaliencyMap(saliency, threshold, selected, trained / total)
