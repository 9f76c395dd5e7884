"""benchmarks/run.py: one method on the embedded tier end to end (table, JSON, plot, resume), and the real tier's
data split."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, shared_data


sys.path.insert(0, str(REPO / "benchmarks"))
import run  # noqa: E402
from run import real_tier_data  # noqa: E402


sys.path.remove(str(REPO / "benchmarks"))


def test_embedded_tier_writes_the_table_over_seeds_and_resumes(embedded, tmp_path):
    command = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--methods", "grad_ascent", "--seeds", "0", "1",
               "--output_dir", str(tmp_path), "--sections"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    row = results["rows"]["grad_ascent"]
    for key in ("forget_quality", "model_utility", "forget_rougeL_recall", "mia_auc_min_k", "relapse_4bit",
                "unlearn_s", "peak_memory_mb", "step_cost_vs_sft"):
        assert row[key] is not None, key
    assert row["step_cost_vs_sft"] > 0.5  # a ratio of two measured step times
    assert row["seeds"] == [0, 1]
    runs = [json.loads((tmp_path / "rows" / f"grad_ascent-seed{seed}.json").read_text()) for seed in (0, 1)]
    rouge = [run_["forget_rougeL_recall"] for run_ in runs]
    assert row["forget_rougeL_recall"] == pytest.approx((rouge[0] + rouge[1]) / 2)
    assert row["forget_rougeL_recall_std"] == pytest.approx(abs(rouge[0] - rouge[1]) / 2 ** 0.5)
    assert runs[1]["step_cost_vs_sft"] is None  # measured once, on seed 0
    finetuned = results["rows"]["finetuned"]
    assert row["forget_rougeL_recall"] < finetuned["forget_rougeL_recall"]  # it unlearned something
    assert "| grad_ascent |" in first.stdout and " ± " in first.stdout
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    # a second call reuses the finished runs instead of training again
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "grad_ascent seed" not in again.stdout
    assert json.loads((tmp_path / "results.json").read_text())["rows"]["grad_ascent"]["unlearn_s"] == row["unlearn_s"]


def test_seed_aggregation_is_the_mean_and_sample_standard_deviation():
    runs = [{"forget_quality": 0.1, "model_utility": 0.5, "seed": 0, "device": "cpu"},
            {"forget_quality": 0.3, "model_utility": None, "seed": 1, "device": "cpu"},
            {"forget_quality": 0.2, "model_utility": 0.7, "seed": 2, "device": "cpu"}]
    row = run.aggregate_seeds(runs)
    assert row["seeds"] == [0, 1, 2] and row["device"] == "cpu" and "seed" not in row
    assert row["forget_quality"] == pytest.approx(0.2) and row["forget_quality_std"] == pytest.approx(0.1)
    # a missing number is left out: mean 0.6 and std sqrt(0.02) over the two runs that have it
    assert row["model_utility"] == pytest.approx(0.6) and row["model_utility_std"] == pytest.approx(0.02 ** 0.5)
    assert row["unlearn_s"] is None and "unlearn_s_std" not in row


def test_real_tier_data_is_ten_authors_with_a_holdout(tmp_path):
    folder = real_tier_data(shared_data("tofu"), tmp_path / "data")

    def rows(name):
        return [json.loads(line) for line in (folder / f"{name}.json").read_text().splitlines()]

    full, retain, forget, holdout = rows("full"), rows("retain99"), rows("forget01"), rows("holdout01")
    assert (len(full), len(retain), len(forget), len(holdout)) == (200, 160, 40, 40)
    questions = {r["question"] for r in full}
    assert {r["question"] for r in forget} <= questions and not {r["question"] for r in holdout} & questions
    assert [r["question"] for r in rows("retain_perturbed")] == [r["question"] for r in retain]


def test_sections_keep_their_reports_and_unknown_names_fail_first(tmp_path, monkeypatch):
    printing = "print(\"{'train_loss': 0.5}\"); print('| a | 1 |')"  # a Trainer log line, then the report
    monkeypatch.setitem(run.SECTIONS, "embedded", {"echo": ("Echo", ["-c", printing], {"X": "1"})})
    report = run.run_sections("embedded", ["echo"], tmp_path)
    assert report.startswith("## Echo\n\n`X=1 python -c") and report.rstrip().endswith(")\n\n| a | 1 |")
    # the kept report is reused: a command that would now fail is not run again
    monkeypatch.setitem(run.SECTIONS, "embedded", {"echo": ("Echo", ["-c", "raise SystemExit(3)"], {})})
    assert run.run_sections("embedded", ["echo"], tmp_path) == report
    command = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--sections", "bogus", "--output_dir", str(tmp_path)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "unknown sections ['bogus']" in refused.stderr
    assert not (tmp_path / "reference_eval.json").exists()  # refused before any evaluation
