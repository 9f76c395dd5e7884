"""Checks that two models can work together and that inputs fit a model, shared by CleanGen, ULD and the evaluations.

- `check_same_tokenizer`: two tokenizers map every token to the same id and agree on the special tokens; two models
  whose vocabularies only have the same size (e.g. one a permutation of the other) are refused, since every token id
  would mean another text to one of them.
- `tokenizer_of`: the tokenizer saved with a model (its folder, or a Hub name already in the local cache), for
  callers that were given a model without its tokenizer.
- `context_length` and `fit_max_length`: the positions a model was built for, and a `max_length` clipped to them
  (a model fed positions past its context extrapolates or fails: a Llama's RoPE answers garbage, silently).
"""

from __future__ import annotations

import warnings


# Config attributes that hold a model's context length, by architecture family: most models, GPT-2 / GPT-J /
# BLOOM-style (`n_positions`, `n_ctx`), MPT (`max_seq_len`), ChatGLM / Qwen-1 (`seq_length`), Falcon-style
# `max_sequence_length`.
CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx",
                      "max_seq_len")
SPECIAL_TOKENS = ("bos", "eos", "pad")


def context_length(model) -> int | None:
    """The number of positions `model` (or a model config) was built for: its text config's
    `max_position_embeddings` or the architecture's equivalent (`CONTEXT_ATTRIBUTES`); None when the config has none
    (relative-position models, or no config). PEFT and ULD models answer for their base model."""
    config = getattr(model, "config", model)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in CONTEXT_ATTRIBUTES:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def fit_max_length(model, max_length: int, what: str = "max_length", default: int | None = None) -> int:
    """`max_length` clipped to the model's context (`context_length`), with a warning when it is clipped, except
    when it is the caller's `default` (a library default that only says "at most this much" for every model)."""
    limit = context_length(model)
    if limit is not None and max_length > limit and max_length == default:
        return limit
    if limit is not None and max_length > limit:
        warnings.warn(
            f"{what}={max_length} exceeds the model's context of {limit} tokens (its config's "
            f"max_position_embeddings or equivalent); using {what}={limit}, since positions past the context give "
            f"garbage or fail.",
            stacklevel=3,
        )
        return limit
    return max_length


def tokenizer_of(model):
    """The tokenizer saved with `model`, loaded as `hf_unlearn.modeling.load_causal_lm` loads it
    (`AutoTokenizer.from_pretrained` of the config's `_name_or_path`, remote code off) but from local files only: the
    model's folder, or a Hub name already in the cache. None when there is none (a model built in memory, a GGUF
    file, a folder without tokenizer files)."""
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) if config is not None else None
    if not name:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(name), local_files_only=True)
    except Exception:  # no tokenizer files there: the caller falls back to comparing vocabulary sizes
        return None


def _label(tokenizer) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def tokenizer_differences(expected, actual, special_tokens=SPECIAL_TOKENS) -> list[str]:
    """What differs between two tokenizers, as phrases (empty when they agree): the token -> id maps
    (`get_vocab()`, added tokens included), then the ids of the `special_tokens` ("bos", "eos", "pad") that both
    define."""
    differences = []
    a, b = expected.get_vocab(), actual.get_vocab()
    if a != b:
        differing = [t for t in a.keys() | b.keys() if a.get(t) != b.get(t)]
        never = float("inf")
        first = min(differing, key=lambda t: (a.get(t, never), b.get(t, never), t))
        sizes = f" ({len(a)} vs {len(b)} tokens)" if len(a) != len(b) else ""
        differences.append(
            f"{len(differing)} of {len(a.keys() | b.keys())} token ids differ{sizes}, first: {first!r} -> "
            f"{a.get(first, 'absent')} vs {b.get(first, 'absent')}"
        )
    for name in special_tokens:
        id_a, id_b = getattr(expected, f"{name}_token_id", None), getattr(actual, f"{name}_token_id", None)
        if id_a is not None and id_b is not None and id_a != id_b:
            token_a, token_b = getattr(expected, f"{name}_token", None), getattr(actual, f"{name}_token", None)
            differences.append(f"the {name} token differs ({token_a!r} = {id_a} vs {token_b!r} = {id_b})")
    return differences


def check_same_tokenizer(expected, actual, *, requirement: str, expected_role: str, actual_role: str, fix: str,
                         special_tokens=SPECIAL_TOKENS) -> None:
    """Raise a one-sentence ValueError when `actual` is not the tokenizer `expected` (`tokenizer_differences`):
    "{requirement}, but {expected_role} (name) and {actual_role} (name) differ: {differences}; {fix}."."""
    differences = tokenizer_differences(expected, actual, special_tokens)
    if differences:
        raise ValueError(
            f"{requirement}, but {expected_role} ({_label(expected)}) and {actual_role} ({_label(actual)}) differ: "
            f"{' and '.join(differences)}; {fix}."
        )
