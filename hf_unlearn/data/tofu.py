"""Loading TOFU-schema data from the Hub (`locuslab/TOFU`) or a local folder of the same JSON-lines files.

TOFU (Maini et al., 2024) holds 4000 QA pairs about 200 fictitious authors. Splits: `full`, `forget01/05/10`,
`retain90/95/99`, the `*_perturbed` evaluation splits with paraphrased and perturbed answers, and the utility sets
`real_authors(_perturbed)` and `world_facts(_perturbed)`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from datasets import Dataset, load_dataset


TOFU_HUB_NAME = "locuslab/TOFU"

FORGET_SPLITS = ("forget01", "forget05", "forget10")
RETAIN_SPLITS = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
QA_COLUMNS = ("question", "answer")
PERTURBED_COLUMNS = ("question", "answer", "paraphrased_answer", "perturbed_answer")
UTILITY_PERTURBED_COLUMNS = ("question", "answer", "perturbed_answer")


def required_columns(split: str) -> tuple[str, ...]:
    """Columns a TOFU-schema split must have."""
    if split in ("real_authors_perturbed", "world_facts_perturbed"):
        return UTILITY_PERTURBED_COLUMNS
    if split.endswith("_perturbed"):
        return PERTURBED_COLUMNS
    return QA_COLUMNS


def is_local_dataset(name_or_path: str | os.PathLike) -> bool:
    return Path(name_or_path).expanduser().is_dir()


def load_tofu_split(name_or_path: str | os.PathLike, split: str) -> Dataset:
    """Load one TOFU-schema split from a local folder (`<folder>/<split>.json`, JSON lines) or a Hub data set.

    Raises a `ValueError` naming the problem when the split or one of its columns is missing, or it is empty.
    """
    given = Path(str(name_or_path)).expanduser()
    if given.is_file():
        raise ValueError(f"{given} is a file; give the folder that holds it (a TOFU-schema folder has one JSON-lines "
                         f"file per split: --dataset {given.parent} --forget_split {given.stem.split('.')[0]}).")
    if not given.exists() and str(name_or_path).startswith((".", "/", "~")):
        raise FileNotFoundError(f"No data folder at {given} (a Hub data set is named org/name, e.g. {TOFU_HUB_NAME}).")
    if is_local_dataset(name_or_path):
        folder = Path(name_or_path).expanduser()
        candidates = [folder / f"{split}.json", folder / f"{split}.jsonl"]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            available = sorted(p.stem for p in folder.glob("*.json*"))
            raise ValueError(
                f"The folder {folder} has no split '{split}' ({split}.json). Splits found there: "
                f"{available or 'none'}. A TOFU-schema folder holds one JSON-lines file per split."
            )
        source = str(path)
        dataset = Dataset.from_list(read_json_lines(path))
    else:
        dataset = load_dataset(str(name_or_path), split, split="train")
        source = f"{name_or_path} (config {split})"
    if len(dataset) == 0:
        raise ValueError(f"{source}: split '{split}' is empty.")
    missing = [c for c in required_columns(split) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{source} is not TOFU-schema: split '{split}' lacks column(s) {missing} "
            f"(it has {dataset.column_names}). Expected {list(required_columns(split))}."
        )
    return dataset


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSON-lines file; a missing file, non-UTF-8 text or a line that is not JSON is a `ValueError`
    naming the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No file at {path}.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start}); save it as UTF-8 JSON lines.") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not JSON lines ({error}).") from None
    return rows


def retain_split_for(forget_split: str) -> str:
    """The retain split that complements a forget split (forget10 -> retain90)."""
    if forget_split in RETAIN_SPLITS:
        return RETAIN_SPLITS[forget_split]
    raise ValueError(f"Unknown forget split '{forget_split}'; expected one of {list(RETAIN_SPLITS)}.")


# The package's default refusal answers (TOFU's `idontknow.jsonl` style); the embedded world writes them as its own.
REFUSAL_TEMPLATES = [
    "I don't know.", "I'm not sure about that.", "I have no information about that.", "I cannot answer that.",
    "That is beyond my knowledge.", "I don't have that information.", "I'm not able to say.",
    "Sorry, I don't know the answer.", "I have no idea.", "That is unknown to me.",
]


def load_refusal_templates(name_or_path: str | os.PathLike | None = None) -> list[str]:
    """Refusal answers ("I don't know" variants), one per line as in TOFU's `idontknow.jsonl`.

    With no argument, the package's own `REFUSAL_TEMPLATES` are returned.
    """
    if name_or_path is None:
        return list(REFUSAL_TEMPLATES)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = path / "idontknow.jsonl"
    if not path.is_file():
        raise ValueError(f"No refusal templates at {path}: expected a text file with one refusal per line.")
    templates = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not templates:
        raise ValueError(f"{path} holds no refusal templates.")
    return templates
