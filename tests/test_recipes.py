"""Recipes end to end, including `accelerate launch` with two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_unlearn import modeling
from hf_unlearn.pipeline import unlearn_main


REPO = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).parent / "accelerate")


def launch(script: str, args: list[str], num_processes: int = 2, timeout: int = 900) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes N`: on a machine without GPUs this starts N CPU processes on
    gloo (`--cpu --num_processes N` would silently start one)."""
    command = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / script), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_tofu_flat_under_two_processes(embedded, tmp_path):
    out = tmp_path / "flat"
    launch("recipes/tofu_flat.py", ["--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
                                    "--eval_max_items", "8", "--report_to", "none", "--save_strategy", "no"])
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and {r["rank"] for r in info["ranks"]} == {0, 1}
    report = json.loads((out / "report" / "evaluation.json").read_text())
    assert {"retain", "finetuned", "flat"} <= set(report["results"])
    assert 0.0 <= report["results"]["flat"]["forget_rougeL_recall"] <= 1.0
    assert (out / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_each_rank_draws_its_own_retain_stream(embedded, tmp_path):
    out = tmp_path / "grad_diff"
    launch("recipes/tofu_unlearn.py", ["--method", "grad_diff", "--output_dir", str(out), "--max_steps", "2",
                                       "--per_device_train_batch_size", "2", "--eval_max_items", "4",
                                       "--report_to", "none", "--save_strategy", "no"])
    info = json.loads((out / "run_info.json").read_text())
    ranks = {r["rank"]: r["retain_draws"] for r in info["ranks"]}
    assert info["world_size"] == 2 and set(ranks) == {0, 1}
    assert len(ranks[0]) == 16 and ranks[0] != ranks[1]


@pytest.mark.quality
def test_tofu_flat_with_its_embedded_defaults_forgets_and_keeps_utility(embedded, tmp_path, train_seed):
    """The README's main job, in process: `recipes/tofu_flat.py` with no flags but an output folder."""
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        from tofu_flat import main
    finally:
        sys.path.remove(str(REPO / "recipes"))
    result = main(["--output_dir", str(tmp_path / "run"), "--report_to", "none", "--save_strategy", "no",
                   "--disable_tqdm", "true", "--seed", str(train_seed)], method="flat")
    before, after = result["results"]["finetuned"], result["results"]["flat"]
    # Measured on build seeds 0 and 1 x seeds 0-2 with the issue-19 definitions (200-token generations, labels ending
    # with the end of turn), trained until the forget probability is at most 0.35 (`python benchmarks/sweep.py
    # --method flat --grid learning_rate=1e-4 num_train_epochs=20 per_device_train_batch_size=4
    # stop_at_forget_prob=0.35,0.4,0.45 --build_seeds 0 1 --seeds 0 1 2`):
    assert after["forget_rougeL_recall"] < 0.65 * before["forget_rougeL_recall"]  # 1.00 -> 0.37-0.59
    assert after["forget_prob"] < 0.5 * before["forget_prob"]  # 1.00 -> 0.33-0.35
    # A forget-only loss on authors whose names share syllables and templates with the retained ones: utility falls
    # (0.78-0.89 x) and so do the retained answers, most on build seed 1 (retain ROUGE-L 0.55-0.68 there, 0.77-0.88 on
    # build seed 0). Stopping earlier does not buy both: at forget prob 0.4 build 0 keeps forget ROUGE-L up to 0.61
    # while build 1's retain ROUGE-L is still 0.57-0.70; at 0.45, 0.64 and 0.62-0.72.
    assert after["model_utility"] > 0.75 * before["model_utility"]
    assert after["retain_rougeL_recall"] > 0.45
    report = json.loads(Path(result["report"]["json"]).read_text())
    assert report["settings"]["training"]["learning_rate"] == 1e-4  # the embedded default, not the paper's 1e-5
    assert report["settings"]["stopped_when_forgotten"]["forget_prob"] <= 0.35
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_a_saved_reference_evaluation_is_checked_before_any_model_loads(embedded, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the reference evaluation was checked")

    monkeypatch.setattr(modeling, "load_causal_lm", no_model)

    def saved_evaluation(split):
        path = tmp_path / f"retain_eval_{split}.json"
        path.write_text(json.dumps({"per_item": {"forget_truth_ratio": [0.5]}, "settings": {"splits": {"forget": split}}}))
        return str(path)

    flags = ["--output_dir", str(tmp_path / "run"), "--report_to", "none"]  # the embedded benchmark's forget10
    with pytest.raises(ValueError, match="forget split 'forget01_perturbed', this one on 'forget10_perturbed'"):
        unlearn_main([*flags, "--reference_eval", saved_evaluation("forget01_perturbed")], method="flat")
    with pytest.raises(FileNotFoundError, match="No evaluation JSON"):
        unlearn_main([*flags, "--reference_eval", str(tmp_path / "missing.json")], method="flat")
    with pytest.raises(AssertionError, match="a model was loaded"):  # the right split passes on to the model
        unlearn_main([*flags, "--reference_eval", saved_evaluation("forget10_perturbed")], method="flat")
    assert not (tmp_path / "run").exists()
