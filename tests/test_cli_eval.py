"""`hf-unlearn eval` on the embedded benchmark."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_unlearn.cli import main


pytestmark = pytest.mark.usefixtures("single_thread")


def test_console_script_lists_eval():
    script = Path(sys.executable).parent / "hf-unlearn"
    run = subprocess.run([str(script), "eval", "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--benchmark {tofu,muse,semeval,embedded}" in run.stdout


def test_embedded_eval_without_model_reports_finetuned_against_retain(embedded, tmp_path, capsys):
    assert main(["eval", "--benchmark", "embedded", "--output_dir", str(tmp_path), "--max_items", "16", "--no_progress"]) == 0
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert list(report["results"]) == ["retain", "finetuned"]
    finetuned, retain = report["results"]["finetuned"], report["results"]["retain"]
    assert finetuned["forget_quality"] < 0.05 and retain["forget_quality"] is None
    assert finetuned["forget_prob"] > retain["forget_prob"] + 0.5
    assert finetuned["settings"]["num_items"]["forget"] == 16
    assert report["settings"]["reference"] == str(embedded.retain_dir)
    printed = capsys.readouterr().out
    assert "| forget_quality | - | " in printed and str(tmp_path / "evaluation.md") in printed

    # the report serves as the reference of a later evaluation; the first report stays as it was
    before = (tmp_path / "evaluation.json").read_bytes()
    args = ["eval", "--benchmark", "embedded", "--model", str(embedded.finetuned_dir), "--label", "candidate",
            "--reference", str(tmp_path / "evaluation.json"), "--output_dir", str(tmp_path), "--max_items", "16",
            "--no_progress"]
    assert main(args) == 0
    second = json.loads((tmp_path / "evaluation-2.json").read_text())
    assert list(second["results"]) == ["candidate"]
    assert second["results"]["candidate"]["forget_quality"] == finetuned["forget_quality"]
    assert (tmp_path / "evaluation.json").read_bytes() == before


def test_eval_needs_a_model_outside_the_embedded_benchmark(tmp_path):
    with pytest.raises(SystemExit, match="--model is required"):
        main(["eval", "--benchmark", "tofu", "--output_dir", str(tmp_path)])
