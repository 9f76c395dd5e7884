"""Evaluation under `accelerate launch` with two processes (two CPU processes on gloo when there is no GPU) gives
the numbers of a one-process run, on every rank."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_eval_muse import _muse_sets
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_unlearn.eval import evaluate_muse, evaluate_tofu


SCRIPT = Path(__file__).parent / "scripts" / "eval_two_process.py"
# variables a surrounding launcher may have set; the child launcher must start from a clean slate
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU")


def _script_settings():
    spec = importlib.util.spec_from_file_location("eval_two_process", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TOFU_SETTINGS, module.MUSE_SETTINGS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _comparable(result: dict) -> dict:
    """A result without what legitimately differs between runs: the timing and the process count."""
    settings = {k: v for k, v in result["settings"].items() if k != "num_processes"}
    return {k: v for k, v in result.items() if k != "eval_time_s"} | {"settings": settings}


def assert_same_numbers(got, expected, path="result"):
    """Equal structure and text, numbers equal to 1e-6 relative: each rank pads its share of a batch to other lengths
    than one process does, and a matmul over another padded length sums in another order (on one build the two
    differed by 2e-9 in model utility; generations and ROUGE were identical)."""
    if isinstance(expected, float) and isinstance(got, (int, float)):
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-9), path
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), path
        for key in expected:
            assert_same_numbers(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), path
        for index, (g, e) in enumerate(zip(got, expected)):
            assert_same_numbers(g, e, f"{path}[{index}]")
    else:
        assert got == expected, path


@pytest.mark.slow
def test_two_processes_give_the_one_process_numbers(embedded, finetuned, tmp_path):
    tofu_settings, muse_settings = _script_settings()
    muse_folder = tmp_path / "muse"
    for (subset, split), rows in _muse_sets(embedded).items():
        (muse_folder / subset).mkdir(parents=True, exist_ok=True)
        (muse_folder / subset / f"{split}.json").write_text(json.dumps(rows))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        retain = AutoModelForCausalLM.from_pretrained(embedded.retain_dir), AutoTokenizer.from_pretrained(embedded.retain_dir)
        reference = tmp_path / "retain_eval.json"
        reference.write_text(json.dumps(evaluate_tofu(*retain, embedded.data_dir, **tofu_settings)))
        single_tofu = evaluate_tofu(*finetuned, embedded.data_dir, reference=reference, **tofu_settings)
        single_muse = evaluate_muse(*finetuned, muse_folder, **muse_settings)
    finally:
        torch.set_num_threads(threads)

    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               str(SCRIPT), str(tmp_path), str(reference), str(muse_folder)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]  # both ranks ran
    for index, rank in enumerate(ranks):
        assert rank["process_index"] == index and rank["num_processes"] == 2
        assert rank["tofu"]["settings"]["num_processes"] == 2
        if not torch.cuda.is_available():
            assert rank["backend"] == "gloo"
    for rank in ranks:
        assert_same_numbers(_comparable(rank["tofu"]), _comparable(single_tofu))
        assert_same_numbers(_comparable(rank["muse"]), _comparable(single_muse))
    assert single_tofu["forget_quality"] < 0.05 and single_tofu["mia_auc_loss"] > 0.9  # a meaningful comparison
