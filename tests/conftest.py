import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HF_UNLEARN_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(*parts: str) -> Path:
    """A path under the shared real data; skips when it is absent (CI always has it, so CI never skips)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"CI must have the shared data, but {path} is missing.")
        pytest.skip(f"shared data {path} is absent (set HF_UNLEARN_SHARED_DATA)")
    return path


@pytest.fixture
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they lose a lot."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def embedded():
    """The embedded benchmark (built once into the cache, then reused)."""
    from hf_unlearn.embedded_benchmark import build_embedded_benchmark

    return build_embedded_benchmark()


@pytest.fixture(scope="session")
def finetuned(embedded):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(embedded.finetuned_dir), AutoTokenizer.from_pretrained(
        embedded.finetuned_dir
    )
