"""The benchmarks behind the tests and the README: the embedded TOFU-schema benchmark (a generated world and two
small Llamas trained from scratch), the BackdoorLLM benchmark for CleanGen, the harmful fine-tuning benchmark for
Antidote, and the models they use. Builds are cached with `hf_unlearn.cache`; real data are read from
`shared_data_dir()`."""

from __future__ import annotations

import os
from pathlib import Path


SHARED_DATA_ENV = "HF_UNLEARN_SHARED_DATA"


def shared_data_dir() -> Path:
    """The real data (TOFU, BackdoorLLM, AdvBench, SemEval-2025 Task 4, MMLU): `$HF_UNLEARN_SHARED_DATA`, else
    `shared/data` beside the project checkout."""
    return Path(os.environ.get(SHARED_DATA_ENV, Path(__file__).resolve().parents[3] / "shared" / "data"))
