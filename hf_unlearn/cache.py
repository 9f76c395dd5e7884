"""Cached builds: where they live, how they are keyed, and how they are made safe.

Every build the package caches (the embedded benchmark, the backdoor benchmark, the harmful fine-tuning benchmark's
models) lives in `cache_root()/<kind>/<key>`, where the key is a hash of everything the build depends on. A build is
made once: under a file lock (concurrent processes wait, then reuse it), into a staging folder beside its target that
is renamed into place when complete (an interrupted build leaves nothing a later run would take for a result).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


CACHE_ENV = "HF_UNLEARN_CACHE"
# set by torchrun / accelerate launch; a build started inside a launch runs in a fresh subprocess without them
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                   "GROUP_RANK", "ROLE_RANK", "ACCELERATE_USE_CPU")


def cache_root() -> Path:
    """`$HF_UNLEARN_CACHE`, else `~/.cache/hf_unlearn`."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "hf_unlearn")).expanduser()


def in_distributed_launch() -> bool:
    return any(name in os.environ for name in DISTRIBUTED_ENV[:3])


def environment_outside_launch() -> dict[str, str]:
    """This process's environment without the variables of a distributed launch (for a build subprocess)."""
    return {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}


def content_key(payload: dict, files: Iterable[Path] = ()) -> str:
    """16 hex digits of the SHA-256 of `payload` (as sorted JSON) and the bytes of `files`."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    for path in files:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def build_once(folder: Path, marker: str, build: Callable[[], None], message: str | None = None) -> Path:
    """Run `build()` unless `folder/marker` exists, under a lock on `folder`; returns `folder`.

    `build` must create `folder` complete with its `marker` (see `staging_folder`); `message` is printed to stderr
    before it starts."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / marker).is_file():
            if message:
                print(message, file=sys.stderr)
            build()
    return folder


@contextmanager
def staging_folder(target: Path):
    """A fresh folder beside `target` to build into; renamed to `target` when the block ends without error, removed
    otherwise."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def weights_fingerprint(model) -> str:
    """16 hex digits of the SHA-256 of a model's parameters and buffers (names, dtypes, shapes and bytes): two models
    get the same fingerprint exactly when they hold the same weights, wherever they were loaded from."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """16 hex digits of the SHA-256 of a tokenizer's vocabulary, special tokens and chat template."""
    payload = {"vocab": tokenizer.get_vocab(), "special": tokenizer.special_tokens_map,
               "chat_template": getattr(tokenizer, "chat_template", None), "class": type(tokenizer).__name__}
    return content_key(payload)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a training build depends on (a new version may train to other weights)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("torch", "transformers", "peft", "trl", "accelerate"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions
