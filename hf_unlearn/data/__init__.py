from .formatting import (
    IGNORE_INDEX,
    encode_answer,
    encode_prompt,
    ensure_pad_token,
    format_prompt,
    pad_examples,
    tokenize_pairs,
    tokenize_qa,
)
from .pairing import ForgetRetainDataset, UnlearnDataCollator
from .tofu import TOFU_HUB_NAME, load_refusal_templates, load_tofu_split, retain_split_for


__all__ = [
    "IGNORE_INDEX",
    "TOFU_HUB_NAME",
    "ForgetRetainDataset",
    "UnlearnDataCollator",
    "encode_answer",
    "encode_prompt",
    "ensure_pad_token",
    "format_prompt",
    "load_refusal_templates",
    "load_tofu_split",
    "pad_examples",
    "retain_split_for",
    "tokenize_pairs",
    "tokenize_qa",
]
