"""Loading causal LMs and tokenizers: Hub names, local folders and GGUF files, safetensors only, remote code off."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from .data.formatting import ensure_pad_token


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
    elif gguf_file is None and looks_local(name_or_path):
        check_model_folder(path)
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
    from_hub = gguf_file is None and not looks_local(name_or_path)
    offline = from_hub and not hub_reachable()
    if offline:  # the cache only, at once (huggingface_hub would retry the unreachable Hub for about a minute)
        kwargs["local_files_only"] = tokenizer_kwargs["local_files_only"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **tokenizer_kwargs)
    except OSError as error:
        if not from_hub:
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = "the local cache (the Hub is unreachable from here)" if offline else "the Hub or the local cache"
        raise OSError(f"Cannot load {name_or_path!r} from {where}: {first_line} Check the name (org/name on the Hub; "
                      "a local folder must exist).") from None
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    except SafetensorError as error:
        raise ValueError(f"The weights of {name_or_path} cannot be read ({error}): the safetensors file is corrupt or "
                         "truncated (an interrupted download or copy); download or save them again.") from None
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


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hub endpoint (`HF_ENDPOINT`, huggingface.co by default) accepts a TCP connection, asked once per
    process; False under `HF_HUB_OFFLINE=1`."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s).close()
    except OSError:
        return False
    return True


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")


def looks_local(name_or_path: str | Path) -> bool:
    """A local path rather than a Hub name (`org/name`): it exists, or is written as a path (`./x`, `/x`, `~/x`,
    `a/b/c`)."""
    text = str(name_or_path)
    return (Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or text.count("/") > 1
            or "\\" in text)


def check_model_folder(path: str | Path, adapter: bool = False) -> None:
    """Refuse, before anything loads, a local model (or PEFT adapter) folder that is missing, is not a model folder,
    or holds its weights only as pickles (`pytorch_model.bin`: loading one can run arbitrary code; hf_unlearn
    loads safetensors only)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No model at {path}: the folder does not exist (a Hub model is named org/name).")
    if not path.is_dir():
        raise ValueError(f"{path} is a file, not a model folder (give the folder holding config.json, or a .gguf file).")
    config = "adapter_config.json" if adapter else "config.json"
    if not (path / config).is_file():
        raise FileNotFoundError(
            f"{path} is not a {'PEFT adapter' if adapter else 'transformers model'} folder: it has no {config} (such a "
            "folder is written by save_pretrained)."
        )
    if not any(path.glob("*.safetensors")) and any((path / name).is_file() for name in PICKLE_WEIGHTS):
        raise ValueError(
            f"{path} holds its weights only as a pickle (*.bin); hf_unlearn loads safetensors only, since a pickle "
            "can run code when loaded. If you trust the file, convert it once: load it with transformers "
            "(use_safetensors=False) and save_pretrained() it to a new folder."
        )


ARCHITECTURE_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size")


def weightless_model(name_or_path: str | Path, trust_remote_code: bool = False):
    """The model of a local folder built from its config on the meta device, without loading any weight: its module
    layout, for checks that must fail before the weights load. None for a Hub name or a GGUF file."""
    if str(name_or_path).endswith(".gguf") or not looks_local(name_or_path):
        return None
    check_model_folder(name_or_path)
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(Path(name_or_path).expanduser(), trust_remote_code=trust_remote_code)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def check_same_architecture(name_or_path: str | Path, other: str | Path, what: str = "--original") -> None:
    """Refuse, from the two local folders' config.json alone (before any weights load), a model of another
    architecture or size than `name_or_path` (comparing them weight by weight would fail or mean nothing)."""
    import json

    if not (looks_local(name_or_path) and looks_local(other)):
        return
    configs = []
    for folder in (name_or_path, other):
        path = Path(folder).expanduser() / "config.json"
        if not path.is_file():
            return  # a GGUF file or not a folder: checked when loaded
        configs.append(json.loads(path.read_text()))
    differing = [f"{key} {configs[0].get(key)} vs {configs[1].get(key)}" for key in ARCHITECTURE_FIELDS
                 if configs[0].get(key) != configs[1].get(key)]
    if differing:
        raise ValueError(f"{what} {other} is not the same architecture as {name_or_path} ({'; '.join(differing)}); "
                         "pass the model it was unlearned from.")


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
