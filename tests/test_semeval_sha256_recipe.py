"""The SHA256 recipe end to end (slow): trace, unlearn, evaluate and report on the embedded benchmark, and on a
small sample of the real SemEval-2025 Task 4 data with SmolLM2-135M-Instruct."""

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import REPO, shared_data


pytestmark = pytest.mark.slow


def recipe():
    spec = importlib.util.spec_from_file_location("semeval_sha256", REPO / "recipes" / "semeval_sha256.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.quality
def test_embedded_benchmark_run(embedded, tmp_path, train_seed):
    outcome = recipe().main(["--output_dir", str(tmp_path / "run"), "--disable_tqdm", "true", "--seed", str(train_seed)])
    results = outcome["results"]
    assert set(results) == {"retain", "finetuned", "sha256"}
    finetuned, unlearned = results["finetuned"], results["sha256"]
    # measured on build seed 0 (c2ab539173de2a8d), seeds 0 and 2: forget ROUGE-L 0.38/0.40 x, utility 0.95/0.90 x
    # finetuned, forget quality 0.69/0.85 (finetuned 4e-17); alpha [8, 12] (seeds 0-2): 0.37/0.41/0.43 x at
    # 0.93/0.94/0.92 x, and build seed 1 x seed 0: 0.17 x at 0.93 x
    assert unlearned["forget_rougeL_recall"] < 0.5 * finetuned["forget_rougeL_recall"]
    assert unlearned["model_utility"] > 0.8 * finetuned["model_utility"]
    assert unlearned["forget_quality"] > finetuned["forget_quality"]
    assert outcome["trace"]["suggested_layers"] and (tmp_path / "run" / "trace" / "causal_trace.png").is_file()
    report = json.loads(Path(outcome["report"]["json"]).read_text())
    assert report["settings"]["trace"]["suggested_layers"] == outcome["trace"]["suggested_layers"]


def test_semeval_run_with_smollm2(tmp_path):
    """The whole SemEval path on real data with a real model, kept small: one item per (task, kind) group, one
    epoch, no fine-tuning first (see the recipe's --finetune_epochs for a model that has memorised the sample),
    2 MMLU questions per subject 0-shot (the official 5 shots cost ~6x the tokens: +~3.5 min here; tests/test_mmlu.py
    checks them)."""
    pytest.importorskip("gguf")
    data, mmlu = shared_data("semeval25_task4"), shared_data("mmlu")
    outcome = recipe().main([
        "--model_name_or_path", "smollm2", "--semeval_data", str(data), "--mmlu_data", str(mmlu),
        "--max_items_per_group", "1", "--num_train_epochs", "1", "--max_mia_items", "4", "--mmlu_max_items", "2",
        "--mmlu_num_shots", "0",
        "--eval_max_new_tokens", "16", "--trace_num_samples", "2", "--output_dir", str(tmp_path / "run"),
        "--disable_tqdm", "true",
    ])
    before, after = outcome["results"]["before"], outcome["results"]["sha256"]
    assert len(outcome["trace"]["effects"]) == 30 and outcome["trace"]["suggested_layers"]
    for result in (before, after):
        assert result["settings"]["num_items"] == {"forget": 6, "retain": 6}
        assert 0 <= result["task_aggregate"] <= 1 and 0 <= result["mia_score"] <= 1
        assert result["mmlu"]["settings"]["num_questions"] == 12 and result["mmlu"]["settings"]["num_shots"] == 0
        assert result["mmlu_official"] is False and "6 of the 57 subjects" in result["mmlu_note"]  # the shared 6
        assert "0-shot" in result["mmlu_note"]
        assert result["final_score"] == pytest.approx(
            (result["task_aggregate"] + result["mia_score"] + result["mmlu_accuracy"]) / 3)
    assert Path(outcome["report"]["markdown"]).is_file()
