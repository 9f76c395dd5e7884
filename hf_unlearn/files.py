"""Writing results without losing earlier ones: atomic writes and fresh output folders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


WRITE_CHECK_PREFIX = ".write-check."  # `check_writable`'s probe file (gone at once; other processes may glimpse it)


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


def claim_fresh_path(base: str | os.PathLike, suffix: str = "", directory: bool = True, numbered: bool = True) -> Path:
    """Create and return `base + suffix`, or else the first free of `base-2 + suffix`, `base-3 + suffix`, ...,
    atomically (`mkdir`, or an exclusive create of an empty file): two runs started together never get the same
    one, and earlier results are never reused. `numbered=False`: only `base + suffix`, `FileExistsError` when it
    exists (a path the user named)."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        if n > 1 and not numbered:
            raise FileExistsError(f"{base}{suffix} exists; pick a new name (earlier results are kept).")
        candidate = base.with_name(base.name + suffix if n == 1 else f"{base.name}-{n}{suffix}")
        try:
            if directory:
                candidate.mkdir()
            else:
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return candidate
        except FileExistsError:
            n += 1


def fresh_output_dir(path: str | os.PathLike, resumable: bool = False, resuming: bool = False) -> Path:
    """`path` as a `Path`, refused with `FileExistsError` when it is a file or already holds files (a run never
    writes over earlier results; `resuming` a `resumable` run in it allows them) and with `PermissionError` when it
    could not be written (found before any model loads). Nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--output_dir {path} is a file; pick a folder that does not exist yet.")
    if not resuming and path.exists() and any(not p.name.startswith(WRITE_CHECK_PREFIX) for p in path.iterdir()):
        if resumable:
            raise FileExistsError(f"{path} already holds results; pick a new --output_dir, or pass "
                                  "--resume_from_checkpoint to continue that run (earlier results are never overwritten).")
        raise FileExistsError(f"{path} already holds files; pick a new --output_dir.")
    check_output_dir_writable(path)
    return path


def check_output_dir_writable(path: str | os.PathLike) -> None:
    """Refuse an output folder that could not be written: the folder itself when it exists, else the nearest
    existing folder above it (where it would be created). Nothing is created: a refused run leaves no folder."""
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise FileExistsError(f"cannot create --output_dir {path}: {existing} is a file; pick another folder.")
    check_writable(existing)


def check_writable(folder: str | os.PathLike) -> None:
    """Refuse a folder this process cannot write, by writing and removing a small file in it (permission bits do
    not tell about read-only mounts or a full disk)."""
    folder = Path(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=WRITE_CHECK_PREFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise PermissionError(f"cannot write in {folder} ({error.strerror}); pick a writable --output_dir.") from None


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """A `checkpoint-N` folder the Trainer finished writing: its `trainer_state.json`, written after the weights,
    optimizer and RNG states, is there and parses (a run killed or out of disk mid-save leaves a folder without)."""
    import json

    state = Path(folder) / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The `checkpoint-N` under `output_dir` with the largest N that is complete (`is_complete_checkpoint`)."""
    import re

    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir() and is_complete_checkpoint(path):
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None
