"""Quantization relapse: does 4-bit or 8-bit quantization bring forgotten knowledge back? (Zhang et al., 2024,
"Catastrophic Failure of LLM Unlearning via Quantization").

Unlearning with a small learning rate moves most weights by less than one quantization step, so the quantized
unlearned model can round to the same weights as the quantized original and recall what was forgotten. This
module quantizes a model two ways and evaluates it at each precision:

- bitsandbytes through transformers' `BitsAndBytesConfig` (CPU and GPU): `nf4` and `fp4` (4-bit, blocks of 64
  weights, one absmax scale per block) and `int8` (LLM.int8: one absmax scale per output row).
- a pure-torch round-to-nearest fake quantizer (`fake_quantize`) for any bit width and group size. With the NF4 or
  FP4 code book and groups of 64 it gives bitsandbytes' dequantized 4-bit weights; with 8-bit integers per row,
  LLM.int8's weights. Precision names: `rtn<bits>` (one scale per output row), `rtn<bits>g<group>` (groups of
  `group` consecutive weights), `fake-nf4`, `fake-fp4`, `fake-int8` (bitsandbytes' layouts without bitsandbytes).

Both quantize the layers transformers' bitsandbytes integration quantizes: every `nn.Linear` except the output
embedding (and weights tied to it); embeddings and norms stay in full precision.

Relapse of a forget metric at precision q = metric(quantized model) - metric(full-precision model), for metrics
where higher means more knowledge (forget ROUGE-L recall, forget answer probability).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn
from transformers import PreTrainedModel

FULL_PRECISION = "full"
DEFAULT_PRECISIONS = ("nf4", "int8")
BNB_BLOCKSIZE = 64  # bitsandbytes' 4-bit block size (transformers' default)
# Forget metrics where higher means the model knows more; relapse is their rise after quantization.
KNOWLEDGE_METRICS = ("forget_rougeL_recall", "forget_prob")
TABLE_METRICS = ("forget_rougeL_recall", "forget_prob", "forget_truth_ratio", "forget_quality", "model_utility")

# bitsandbytes' 4-bit code books (`bitsandbytes.functional.get_4bit_type`).
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
# FP4 (1 sign, 2 exponent, 1 mantissa bit) in bit-pattern order, divided by its largest value 12 (in float32).
FP4_VALUES = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0)


@dataclass(frozen=True)
class Precision:
    """One way of quantizing a model's linear weights.

    Attributes:
        name: as given (`nf4`, `fp4`, `int8`, `rtn4g64`, `fake-nf4`, ...).
        bits: bits per weight.
        code: `"int"` (symmetric integers -(2^(b-1)-1) .. 2^(b-1)-1 times scale / (2^(b-1)-1)), `"nf4"` or `"fp4"`.
        group_size: consecutive weights sharing one absmax scale; None: one scale per output row.
        backend: `"bitsandbytes"` (real quantized layers) or `"fake"` (dequantized weights in the original dtype).
    """

    name: str
    bits: int
    code: str
    group_size: int | None
    backend: str


_BNB = {
    "nf4": Precision("nf4", 4, "nf4", BNB_BLOCKSIZE, "bitsandbytes"),
    "fp4": Precision("fp4", 4, "fp4", BNB_BLOCKSIZE, "bitsandbytes"),
    "int8": Precision("int8", 8, "int", None, "bitsandbytes"),
}
_RTN = re.compile(r"rtn(\d+)(?:g(\d+))?")


def parse_precision(name: str | Precision) -> Precision:
    """A `Precision` from its name: `nf4`, `fp4`, `int8` (bitsandbytes), `fake-nf4`, `fake-fp4`, `fake-int8`
    (the same layouts with the fake quantizer), `rtn<bits>` or `rtn<bits>g<group>` (fake, 2 to 8 bits)."""
    if isinstance(name, Precision):
        return name
    key = name.strip().lower()
    if key in _BNB:
        return _BNB[key]
    if key.startswith("fake-") and key.removeprefix("fake-") in _BNB:
        spec = _BNB[key.removeprefix("fake-")]
        return Precision(key, spec.bits, spec.code, spec.group_size, "fake")
    match = _RTN.fullmatch(key)
    if match:
        bits, group = int(match.group(1)), match.group(2)
        if not 2 <= bits <= 8:
            raise ValueError(
                f"Unsupported bit width {bits} in {name!r}: the fake quantizer takes 2 to 8 bits (e.g. 'rtn3', 'rtn4g64')."
            )
        if group is not None and int(group) < 1:
            raise ValueError(f"The group size in {name!r} must be at least 1 (e.g. 'rtn4g64').")
        return Precision(key, bits, "int", int(group) if group else None, "fake")
    bits = re.search(r"\d+", key)
    if bits and int(bits.group()) not in (4, 8):
        raise ValueError(
            f"Unsupported bit width in {name!r}: bitsandbytes quantizes to 4 bits ('nf4', 'fp4') or 8 bits ('int8'); "
            f"for {bits.group()} bits use the fake quantizer, e.g. 'rtn{bits.group()}g64'."
        )
    raise ValueError(
        f"Unknown precision {name!r}. Use 'nf4', 'fp4' or 'int8' (bitsandbytes), 'fake-nf4'/'fake-fp4'/'fake-int8', "
        "or 'rtn<bits>[g<group>]' (round-to-nearest, e.g. 'rtn4g64')."
    )


# ----------------------------------------------------------------------------------------------------------------
# The fake quantizer (pure functions of tensors)


def quantization_levels(code: str, bits: int) -> torch.Tensor:
    """The sorted representable values in [-1, 1] (multiplied by each group's absmax): symmetric integers
    k / (2^(b-1) - 1) for `"int"`, bitsandbytes' tables for `"nf4"` / `"fp4"` (4 bits only)."""
    if code == "int":
        if not 2 <= bits <= 8:
            raise ValueError(f"Unsupported bit width {bits}: integer round-to-nearest takes 2 to 8 bits.")
        qmax = 2 ** (bits - 1) - 1
        return torch.arange(-qmax, qmax + 1, dtype=torch.float32) / qmax
    if code in ("nf4", "fp4"):
        if bits != 4:
            raise ValueError(f"Unsupported bit width {bits} for the {code} code book: it has 4 bits.")
        table = torch.tensor(NF4_CODE) if code == "nf4" else torch.tensor(FP4_VALUES) / 12.0
        return table.to(torch.float32).unique()  # sorted
    raise ValueError(f"Unknown code book {code!r}: use 'int', 'nf4' or 'fp4'.")


def _groups(weight: torch.Tensor, group_size: int | None) -> list[torch.Tensor]:
    """The weight as (groups, size) views: its rows, or blocks of `group_size` consecutive values of the
    flattened weight with a shorter last block (bitsandbytes' layout)."""
    if group_size is None:
        return [weight.reshape(-1, weight.shape[-1])]
    flat = weight.reshape(-1)
    full = flat.numel() - flat.numel() % group_size
    parts = [flat[:full].reshape(-1, group_size)]
    if full < flat.numel():
        parts.append(flat[full:].reshape(1, -1))
    return parts


def quantize_groups(group: torch.Tensor, levels: torch.Tensor, code: str = "int") -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest of each row of `group` (groups, size) to `absmax * levels`.

    Returns (codes: index into `levels` per weight, absmax per row). The arithmetic follows bitsandbytes: integers
    q = round(w * (qmax / absmax)); 4-bit tables: the nearest level of clamp(w * (1 / absmax), -1, 1) (ties to the
    lower one)."""
    values = group.float()
    absmax = values.abs().amax(dim=-1)
    if code == "int":
        qmax = (levels.numel() - 1) // 2
        codes = torch.round(values * (qmax / absmax.clamp(min=1e-38)).unsqueeze(-1)).long() + qmax
        return codes.clamp_(0, 2 * qmax), absmax
    scaled = torch.clamp(values * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(-1), -1, 1)
    midpoints = (levels[:-1] + levels[1:]) / 2
    return torch.bucketize(scaled, midpoints.to(values.device)), absmax


def fake_quantize(weight: torch.Tensor, bits: int = 4, group_size: int | None = BNB_BLOCKSIZE, code: str = "int") -> torch.Tensor:
    """Quantize-dequantize `weight`: w_hat = absmax(group) * levels[nearest code], in `weight`'s dtype and shape.

    `code="nf4"` with `group_size=64` gives bitsandbytes' dequantized NF4 weights; `code="int"`, `bits=8`,
    `group_size=None` gives LLM.int8's per-row weights."""
    levels = quantization_levels(code, bits).to(weight.device)
    out = []
    for group in _groups(weight.detach(), group_size):
        codes, absmax = quantize_groups(group, levels, code)
        out.append((levels[codes] * absmax.unsqueeze(-1)).reshape(-1))
    return torch.cat(out).reshape(weight.shape).to(weight.dtype)


def quantized_linear_names(model: nn.Module) -> list[str]:
    """Names of the linear layers transformers' bitsandbytes integration quantizes: every `nn.Linear` except the
    output embedding, weights tied to it and the last module (`get_keys_to_not_convert`)."""
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = get_keys_to_not_convert(model) if hasattr(model, "get_output_embeddings") else []
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and should_convert_module(n, skip)]


def fake_quantize_model(model: nn.Module, precision: str | Precision) -> nn.Module:
    """A copy of `model` whose quantized layers (`quantized_linear_names`) hold fake-quantized weights."""
    spec = parse_precision(precision)
    check_not_quantized(model)
    quantized = copy.deepcopy(model)
    with torch.no_grad():
        for name in quantized_linear_names(quantized):
            weight = quantized.get_submodule(name).weight
            weight.copy_(fake_quantize(weight, spec.bits, spec.group_size, spec.code))
    return quantized


def merged_model(model):
    """A PEFT model as a plain model with its adapters merged (a copy); any other model as it is. Quantization
    applies to the deployed weights, base plus adapter."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model


def changed_weights(original: nn.Module, unlearned: nn.Module, precision: str | Precision) -> dict[str, float | int]:
    """How many weights of the quantized layers unlearning changed, in full precision and after quantization
    (a PEFT `unlearned` model is compared with its adapters merged).

    Returns fractions of `num_weights`: `changed_full_precision` (any change), `changed_code` (the weight rounds to
    another quantization level, i.e. it moved to another bucket) and `changed_value` (its dequantized value differs:
    another level or another group scale).
    """
    spec = parse_precision(precision)
    unlearned = merged_model(unlearned)
    total, counts = 0, {"changed_full_precision": 0, "changed_code": 0, "changed_value": 0}
    levels = quantization_levels(spec.code, spec.bits)
    with torch.no_grad():
        for name in quantized_linear_names(original):
            before = original.get_submodule(name).weight.detach().float()
            after = unlearned.get_submodule(name).weight.detach().float().to(before.device)
            if before.shape != after.shape:
                raise ValueError(f"{name} has shape {tuple(before.shape)} in the original and {tuple(after.shape)} after unlearning.")
            total += before.numel()
            counts["changed_full_precision"] += int((before != after).sum())
            for group_before, group_after in zip(_groups(before, spec.group_size), _groups(after, spec.group_size)):
                codes_before, scale_before = quantize_groups(group_before, levels.to(before.device), spec.code)
                codes_after, scale_after = quantize_groups(group_after, levels.to(before.device), spec.code)
                counts["changed_code"] += int((codes_before != codes_after).sum())
                value_before = levels.to(before.device)[codes_before] * scale_before.unsqueeze(-1)
                value_after = levels.to(before.device)[codes_after] * scale_after.unsqueeze(-1)
                counts["changed_value"] += int((value_before != value_after).sum())
    if total == 0:
        raise ValueError("The model has no linear layers that quantization would change.")
    return {"num_weights": total, **{k: v / total for k, v in counts.items()}}


# ----------------------------------------------------------------------------------------------------------------
# bitsandbytes


def check_not_quantized(model_or_path) -> None:
    """Raise when the model (or the saved model at a path) is already quantized: relapse compares a quantized
    copy with the full-precision model, so it needs the full-precision one."""
    if isinstance(model_or_path, (str, os.PathLike)):
        config_file = Path(model_or_path).expanduser() / "config.json"
        if config_file.is_file() and '"quantization_config"' in config_file.read_text():
            raise ValueError(
                f"The model at {model_or_path} is saved quantized (its config.json has a quantization_config). "
                "Quantization relapse needs the full-precision model: pass the unquantized checkpoint."
            )
        return
    quantized = getattr(model_or_path, "is_quantized", False) or getattr(getattr(model_or_path, "config", None), "quantization_config", None)
    kinds = {type(m).__name__ for m in model_or_path.modules() if type(m).__name__ in ("Linear4bit", "Linear8bitLt")}
    if quantized or kinds:
        raise ValueError(
            f"The model is already quantized ({', '.join(sorted(kinds)) or 'quantization_config is set'}). "
            "Quantization relapse needs the full-precision model: load it without `quantization_config`."
        )


def bitsandbytes_config(precision: str | Precision, compute_dtype: torch.dtype = torch.float32):
    """transformers' `BitsAndBytesConfig` for `nf4`, `fp4` (blocks of 64) or `int8`."""
    from transformers import BitsAndBytesConfig

    spec = parse_precision(precision)
    if spec.backend != "bitsandbytes":
        raise ValueError(f"{spec.name!r} is a fake-quantizer precision; bitsandbytes takes 'nf4', 'fp4' or 'int8'.")
    if spec.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec.code, bnb_4bit_compute_dtype=compute_dtype)


def check_bitsandbytes(device: str | torch.device = "cpu") -> None:
    """Raise a clear error when bitsandbytes is missing or cannot quantize on `device`."""
    try:
        import bitsandbytes.functional as bnb_functional
    except ImportError as error:
        raise ImportError(
            "Quantization relapse with 'nf4'/'fp4'/'int8' needs bitsandbytes: `pip install 'bitsandbytes>=0.49'` "
            "(it runs on CPU and CUDA), or use the fake quantizer ('fake-nf4', 'rtn4g64'), which needs nothing."
        ) from error
    try:
        probe = torch.linspace(-1, 1, BNB_BLOCKSIZE, device=device)
        packed, state = bnb_functional.quantize_4bit(probe, blocksize=BNB_BLOCKSIZE, quant_type="nf4")
        bnb_functional.dequantize_4bit(packed, state)
    except Exception as error:  # bitsandbytes raises many kinds of errors for an unsupported device
        raise RuntimeError(
            f"bitsandbytes cannot quantize on device '{device}' ({type(error).__name__}: {error}). Run on CPU or CUDA "
            "with bitsandbytes >= 0.49, or use the fake quantizer ('fake-nf4', 'rtn4g64')."
        ) from error


def load_quantized(model_or_path, precision: str | Precision, device: str | torch.device | None = None, compute_dtype=None, trust_remote_code: bool = False):
    """The model quantized with bitsandbytes (`nf4`, `fp4`, `int8`) through `from_pretrained(...,
    quantization_config=...)`, or fake-quantized (`fake-*`, `rtn*`). A model object is saved to a temporary
    folder first (safetensors; a PEFT model with its adapters merged) and reloaded quantized; the original is left
    untouched.

    Args:
        device: where the quantized model lives (default: the model's device, or CPU for a path).
        compute_dtype: 4-bit compute dtype (default: the model's floating dtype, float32 for a path).
    """
    spec = parse_precision(precision)
    if isinstance(model_or_path, nn.Module):
        model_or_path = merged_model(model_or_path)
    check_not_quantized(model_or_path)
    if spec.backend == "fake":
        if isinstance(model_or_path, (str, os.PathLike)):
            from ..modeling import load_causal_lm

            model_or_path, _ = load_causal_lm(model_or_path, trust_remote_code=trust_remote_code)
        quantized = fake_quantize_model(model_or_path, spec)
        return quantized.to(device) if device is not None else quantized
    if isinstance(model_or_path, nn.Module):
        parameter = next(model_or_path.parameters())
        device = device if device is not None else parameter.device
        compute_dtype = compute_dtype or (parameter.dtype if parameter.dtype.is_floating_point else torch.float32)
    device = torch.device(device if device is not None else "cpu")
    check_bitsandbytes(device)
    from transformers import AutoModelForCausalLM

    config = bitsandbytes_config(spec, compute_dtype or torch.float32)
    with contextlib.ExitStack() as stack:
        path = model_or_path
        if isinstance(model_or_path, nn.Module):
            path = stack.enter_context(tempfile.TemporaryDirectory(prefix="hf_unlearn_quantize_"))
            # Not `save_pretrained`: under torch.distributed it writes on rank 0 only, and every rank needs its copy.
            model_or_path.config.save_pretrained(path)
            save_model(model_or_path, os.path.join(path, "model.safetensors"))
        quantized = AutoModelForCausalLM.from_pretrained(
            str(path),
            quantization_config=config,
            device_map={"": device.index if device.type == "cuda" and device.index is not None else str(device)},
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
    return quantized.eval()


# ----------------------------------------------------------------------------------------------------------------
# The relapse evaluator


@contextlib.contextmanager
def _quiet_int8_casts():
    """bitsandbytes logs "MatMul8bitLt: inputs will be cast ..." at every int8 matmul of a float32 model."""
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def relapse_table(evaluations: dict[str, dict[str, dict]], precisions: list[str]) -> dict[str, dict[str, dict]]:
    """Relapse per model and precision: metric(quantized) - metric(full precision) for `KNOWLEDGE_METRICS`, and the
    same for `model_utility` (its change). `evaluations` is {model: {precision: evaluation}} with `"full"`."""
    table: dict[str, dict[str, dict]] = {}
    for model, by_precision in evaluations.items():
        full = by_precision[FULL_PRECISION]
        table[model] = {}
        for precision in precisions:
            quantized = by_precision[precision]
            table[model][precision] = {
                f"relapse_{metric}": _difference(quantized.get(metric), full.get(metric))
                for metric in (*KNOWLEDGE_METRICS, "model_utility")
            }
    return table


def _difference(a, b):
    return None if a is None or b is None else float(a) - float(b)


def recovered_fraction(unlearned_quantized: float, unlearned_full: float, original_full: float, min_forgotten: float = 0.01) -> float | None:
    """Share of the forgotten knowledge that quantization brings back: (q - u) / (o - u), with u, q the unlearned
    model's metric at full precision and quantized, o the original model's at full precision; None when less than
    `min_forgotten` was forgotten (o - u), where the ratio would be noise."""
    forgotten = original_full - unlearned_full
    return None if forgotten < min_forgotten else (unlearned_quantized - unlearned_full) / forgotten


def evaluate_relapse(
    model,
    tokenizer,
    data: str | os.PathLike,
    precisions=DEFAULT_PRECISIONS,
    original=None,
    label: str = "unlearned",
    original_label: str = "original",
    full_precision: dict | None = None,
    original_evaluations: dict[str, dict] | None = None,
    device: str | torch.device | None = None,
    **eval_kwargs,
) -> dict:
    """Evaluate `model` (and `original`, the model before unlearning, when given) at full precision and at each
    precision with `evaluate_tofu`; report relapse and the share of weights whose quantized value changed.

    Args:
        precisions: names for `parse_precision` (default: `nf4` and `int8` with bitsandbytes).
        original: the model before unlearning (object or path): evaluated too, and compared weight by weight.
        label / original_label: the two models' names in the result.
        full_precision: `model`'s evaluation already computed at full precision (skips it).
        original_evaluations: the original's evaluations already computed with the same settings, {precision:
            `evaluate_tofu` result or its headline numbers}: e.g. `{"full": ...}`, or an earlier call's
            `result["evaluations"][original_label]`. The precisions found there are not evaluated again, so several
            unlearned models can be compared with one original at the cost of one.
        device: where quantized copies run (default: the model's device).
        eval_kwargs: passed to `evaluate_tofu` (`forget_split`, `reference`, `max_items`, `max_new_tokens`, ...).

    Returns a JSON-serialisable dict: `precisions`, `evaluations` {model label: {precision: headline numbers}},
    `relapse` {label: {precision: {relapse_<metric>: rise}}}, `recovered` {precision: {metric: fraction}},
    `changed_weights` {precision: fractions}, `settings`.
    """
    from .report import headline
    from .tofu import evaluate_tofu

    specs = [parse_precision(p) for p in precisions]
    if not specs:
        raise ValueError("Name at least one precision, e.g. precisions=['nf4', 'int8'].")
    model = merged_model(model)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"Quantization relapse quantizes a transformers model (or a PEFT model over one), got {type(model).__name__}. "
            "A model that combines several (like ULD's logit difference) has no single set of weights to quantize."
        )
    check_not_quantized(model)
    if isinstance(original, (str, os.PathLike)):
        from ..modeling import load_causal_lm

        check_not_quantized(original)
        original, _ = load_causal_lm(original)
    models = {label: (model, {FULL_PRECISION: headline(full_precision)} if full_precision is not None else {})}
    if original is not None:
        check_not_quantized(original)
        known = {precision: headline(numbers) for precision, numbers in (original_evaluations or {}).items()}
        models[original_label] = (original, known)
    eval_kwargs.setdefault("progress", False)

    evaluations: dict[str, dict[str, dict]] = {}
    for name, (candidate, known) in models.items():
        target_device = device if device is not None else next(candidate.parameters()).device
        evaluations[name] = {}
        if FULL_PRECISION in known:
            evaluations[name][FULL_PRECISION] = known[FULL_PRECISION]
        else:
            full = evaluate_tofu(candidate.to(target_device), tokenizer, data, **eval_kwargs)
            evaluations[name][FULL_PRECISION] = headline(full)
        for spec in specs:
            if spec.name in known:
                evaluations[name][spec.name] = known[spec.name]
                continue
            quantized = load_quantized(candidate, spec, device=target_device)
            with _quiet_int8_casts():
                result = evaluate_tofu(quantized, tokenizer, data, **eval_kwargs)
            evaluations[name][spec.name] = headline(result)
            del quantized

    names = [s.name for s in specs]
    summary = {
        "label": label,
        "original_label": original_label if original is not None else None,
        "precisions": [FULL_PRECISION, *names],
        "evaluations": evaluations,
        "relapse": relapse_table(evaluations, names),
        "settings": {
            "data": str(data),
            "precisions": {s.name: vars(s) for s in specs},
            "quantized_layers": quantized_linear_names(model),
            "evaluation": {k: v for k, v in eval_kwargs.items() if k not in ("reference", "accelerator")},
        },
    }
    if original is not None:
        summary["changed_weights"] = {s.name: changed_weights(original, model, s) for s in specs}
        summary["recovered"] = {
            s.name: {
                metric: recovered_fraction(
                    evaluations[label][s.name][metric], evaluations[label][FULL_PRECISION][metric],
                    evaluations[original_label][FULL_PRECISION][metric],
                )
                for metric in KNOWLEDGE_METRICS
            }
            for s in specs
        }
    return summary


def quantized_results(relapse: dict) -> dict[str, dict]:
    """The quantized evaluations of an `evaluate_relapse` result as `write_report` results, labelled
    `<model> @ <precision>`, so they appear as columns of an evaluation report."""
    return {
        f"{model} @ {precision}": numbers
        for model, by_precision in relapse["evaluations"].items()
        for precision, numbers in by_precision.items()
        if precision != FULL_PRECISION
    }


# ----------------------------------------------------------------------------------------------------------------
# Report


def relapse_markdown(relapse: dict, title: str = "Quantization relapse") -> str:
    """Markdown: one row per (model, precision) with the forget metrics, utility, relapse and changed weights."""
    from .report import format_number

    columns = [*TABLE_METRICS, *(f"relapse_{m}" for m in KNOWLEDGE_METRICS)]
    has_changed = "changed_weights" in relapse
    header = ["model", "precision", *columns] + (["weights in another bucket"] if has_changed else [])
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for model, by_precision in relapse["evaluations"].items():
        for precision, numbers in by_precision.items():
            rise = relapse["relapse"][model].get(precision, {})
            cells = [format_number(numbers.get(m)) for m in TABLE_METRICS]
            cells += [format_number(rise.get(f"relapse_{m}")) for m in KNOWLEDGE_METRICS]
            if has_changed:
                changed = relapse["changed_weights"].get(precision)
                cells.append(format_number(changed["changed_code"]) if changed and model != relapse.get("original_label") else "-")
            lines.append(f"| {model} | {precision} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Relapse: rise of the forget metric after quantization over full precision (higher = knowledge returns).",
    ]
    if has_changed:
        lines.append("Weights in another bucket: share of quantized-layer weights that round to another quantization "
                     "level in the unlearned model than in the original.")
        for precision, fractions in relapse.get("recovered", {}).items():
            shown = ", ".join(f"{m} {format_number(v)}" for m, v in fractions.items())
            lines.append(f"- {precision}: share of the forgotten knowledge recovered: {shown}")
    return "\n".join(lines) + "\n"


def relapse_figure(relapse: dict, title: str = "Quantization relapse"):
    """Bars of forget ROUGE-L recall, forget probability and model utility per precision, one group per model."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4), layout="constrained")
    axes = figure.subplots(1, 3)
    precisions = relapse["precisions"]
    models = list(relapse["evaluations"])
    width = 0.8 / max(1, len(models))
    for ax, metric in zip(axes, ("forget_rougeL_recall", "forget_prob", "model_utility")):
        for index, model in enumerate(models):
            values = [relapse["evaluations"][model].get(p, {}).get(metric) for p in precisions]
            positions = [i + (index - (len(models) - 1) / 2) * width for i in range(len(precisions))]
            ax.bar(positions, [v if v is not None and not math.isnan(v) else 0 for v in values], width=width, label=model)
        ax.set_xticks(range(len(precisions)))
        ax.set_xticklabels(precisions)
        ax.set_ylim(0, 1.05)
        ax.set_title(metric)
        ax.legend(fontsize=8)
    figure.suptitle(title)
    return figure


def write_relapse_report(relapse: dict, output_dir: str | os.PathLike, title: str = "Quantization relapse") -> dict[str, Path]:
    """Write `relapse.json`, `relapse.md` and `relapse.png` (or `relapse-N.*` when taken; never overwrites)."""
    import json

    from .report import publish_report

    output_dir = Path(output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    json_text = json.dumps({"title": title, **relapse}, indent=2, allow_nan=True)
    return publish_report(output_dir, "relapse", json_text, relapse_markdown(relapse, title),
                          relapse_figure(relapse, title))
