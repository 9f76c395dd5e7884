"""What the package's own `generate()` implementations (`ULDModel.generate`, `CleanGenGenerator.generate`) share
with each other and with transformers' `generate()`: the sampling warpers and the refusal of arguments they do not
implement."""

from __future__ import annotations

from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


def sampling_warpers(temperature: float | None, top_k: int | None, top_p: float | None) -> LogitsProcessorList:
    """The logits warpers of sampling, in transformers' order: temperature (unless 1), top-k (unless unset or 0),
    top-p (unless unset or 1)."""
    warpers = LogitsProcessorList()
    if temperature is not None and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


# `generate()` arguments a one-sequence-per-prompt decoder accepts at these values only
SINGLE_SEQUENCE_DEFAULTS = {"num_beams": 1, "num_return_sequences": 1, "output_scores": False, "output_logits": False}


def refuse_unsupported(unsupported: dict, message: str, ignorable: dict = SINGLE_SEQUENCE_DEFAULTS) -> None:
    """Raise `ValueError("<names> ... " + message)` for `generate()` keyword arguments the decoder does not
    implement; those in `ignorable` pass when they hold the value that changes nothing."""
    bad = sorted(k for k, v in unsupported.items() if k not in ignorable or v != ignorable[k])
    if bad:
        raise ValueError(message.format(names=", ".join(bad)))
