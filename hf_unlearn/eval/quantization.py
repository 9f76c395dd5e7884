"""Quantizers for the quantization-relapse check (`hf_unlearn.eval.relapse`): does 4-bit or 8-bit quantization
bring forgotten knowledge back? (Zhang et al., 2024, "Catastrophic Failure of LLM Unlearning via Quantization").

Unlearning with a small learning rate moves most weights by less than one quantization step, so the quantized
unlearned model can round to the same weights as the quantized original and recall what was forgotten. This
module quantizes a model two ways (`hf_unlearn.eval.relapse` evaluates it at each precision):

- bitsandbytes through transformers' `BitsAndBytesConfig` (CPU and GPU): `nf4` and `fp4` (4-bit, blocks of 64
  weights, one absmax scale per block) and `int8` (LLM.int8: one absmax scale per output row).
- a pure-torch round-to-nearest fake quantizer (`fake_quantize`) for any bit width and group size. With the NF4 or
  FP4 code book and groups of 64 it gives bitsandbytes' dequantized 4-bit weights; with 8-bit integers per row,
  LLM.int8's weights. Precision names: `rtn<bits>` (one scale per output row), `rtn<bits>g<group>` (groups of
  `group` consecutive weights), `fake-nf4`, `fake-fp4`, `fake-int8` (bitsandbytes' layouts without bitsandbytes).

Both quantize the layers transformers' bitsandbytes integration quantizes: every `nn.Linear` except the output
embedding (and weights tied to it); embeddings and norms stay in full precision.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn


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
