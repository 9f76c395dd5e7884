"""ULD end to end on the embedded benchmark: `recipes/tofu_uld.py` with its defaults forgets the forget set and keeps
utility; its saved model reloads and answers as it did; the recipe runs under two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from hf_unlearn.decoding.uld import ULDModel
from hf_unlearn.eval.generation import generate_answers


REPO = Path(__file__).resolve().parents[1]


def _recipe_main():
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        from tofu_uld import main
    finally:
        sys.path.remove(str(REPO / "recipes"))
    return main


@pytest.mark.slow
@pytest.mark.quality
def test_tofu_uld_with_its_embedded_defaults_forgets_and_keeps_utility(embedded, tmp_path, train_seed):
    result = _recipe_main()(["--output_dir", str(tmp_path / "run"), "--report_to", "none", "--save_strategy", "no",
                             "--disable_tqdm", "true", "--seed", str(train_seed)], method="uld")
    before, after = result["results"]["finetuned"], result["results"]["uld"]
    keys = ("forget_rougeL_recall", "forget_prob", "model_utility", "retain_rougeL_recall", "forget_quality")
    print({k: (before[k], after[k]) for k in keys})  # shown with `pytest -s`
    # measured on build seeds 0 and 1 x seeds 0-2 (lr 2e-3, the embedded default); after generation kept to the
    # target's candidates (alpha 1.0, 200-token answers), on the current build, seeds 0 / 1: ROUGE-L 0.37 / 0.31,
    # probability 0.0115 / 0.0119, utility 0.966 / 0.967 x, retain ROUGE-L 0.998, forget quality 0.16 / 0.25
    assert after["forget_rougeL_recall"] < 0.5 * before["forget_rougeL_recall"]  # 1.00 -> 0.21-0.37
    assert after["forget_prob"] < 0.1 * before["forget_prob"]  # 1.00 -> 0.010-0.015
    assert after["model_utility"] > 0.9 * before["model_utility"]  # 0.93-0.99 x
    assert after["retain_rougeL_recall"] > 0.95  # 1.00 (the retain authors' answers are untouched)
    assert after["forget_quality"] > 100 * before["forget_quality"]  # 3.5e-15 -> 4e-4..0.25

    # the saved folder is a ULD model: it reloads (target from its path) and answers as the evaluated one did
    folder = tmp_path / "run" / "model"
    loaded = ULDModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    report = json.loads(Path(result["report"]["json"]).read_text())
    questions = [json.loads(line)["question"] for line in (embedded.data_dir / "forget10_perturbed.json").open()][:8]
    expected = report["results"]["uld"]["per_item"]["forget_generation"][:8]
    max_new_tokens = report["results"]["uld"]["settings"]["max_new_tokens"]  # what the evaluation generated with
    answers = generate_answers(loaded, tokenizer, questions, max_new_tokens=max_new_tokens)
    assert sum(a == e for a, e in zip(answers, expected)) >= 7  # other batching than the evaluation's: allow a near-tie


@pytest.mark.slow
def test_tofu_uld_under_two_processes(embedded, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` starts two CPU processes on gloo here."""
    out = tmp_path / "uld"
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO / "recipes" / "tofu_uld.py"), "--output_dir", str(out), "--max_steps", "2",
               "--per_device_train_batch_size", "2", "--eval_max_items", "8", "--report_to", "none",
               "--save_strategy", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and {r["rank"] for r in info["ranks"]} == {0, 1}
    report = json.loads((out / "report" / "evaluation.json").read_text())
    assert report["results"]["uld"]["settings"]["num_processes"] == 2
    assert (out / "model" / "uld_config.json").is_file() and (out / "model" / "adapter_model.safetensors").is_file()
