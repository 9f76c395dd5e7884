"""Writing results without losing earlier ones: atomic writes and fresh output folders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename: readers never see a
    half-written file."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def next_free_path(base: str | os.PathLike, suffix: str = "") -> Path:
    """`base + suffix`, or `base-2 + suffix`, `base-3 + suffix`, ...: the first that does not exist (earlier
    results are never reused)."""
    base = Path(base)
    candidate, n = base.with_name(base.name + suffix), 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}{suffix}")
    return candidate


def fresh_output_dir(path: str | os.PathLike) -> Path:
    """`path` as a `Path`, refused with `FileExistsError` when it already holds files: a run never writes over
    earlier results."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} already holds files; pick a new --output_dir.")
    return path
