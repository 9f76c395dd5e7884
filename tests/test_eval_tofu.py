"""TOFU metrics on the embedded benchmark: the finetuned model (saw the forget authors) against the retain model
(never saw them). Also the report files."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_unlearn.eval import evaluate_tofu, write_report
from hf_unlearn.eval.report import format_number
from hf_unlearn.eval.tofu import load_reference

ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def retain_model(embedded):
    return AutoModelForCausalLM.from_pretrained(embedded.retain_dir), AutoTokenizer.from_pretrained(embedded.retain_dir)


@pytest.fixture(scope="module")
def evaluations(embedded, finetuned, retain_model, tmp_path_factory):
    torch.set_num_threads(1)
    retain = evaluate_tofu(*retain_model, embedded.data_dir, progress=False)
    saved = tmp_path_factory.mktemp("reference") / "retain_eval.json"
    saved.write_text(json.dumps(retain))
    return {"retain": retain, "finetuned": evaluate_tofu(*finetuned, embedded.data_dir, reference=saved, progress=False), "saved": saved}


def test_retain_model_against_its_own_saved_evaluation_has_forget_quality_one(embedded, retain_model, evaluations):
    again = evaluate_tofu(*retain_model, embedded.data_dir, reference=evaluations["saved"], progress=False)
    assert again["forget_quality"] == 1.0
    assert again["privleak"] == 0.0
    assert evaluations["retain"]["forget_quality"] is None  # no reference, no forget quality


def test_finetuned_model_is_far_from_the_retain_model(evaluations):
    finetuned, retain = evaluations["finetuned"], evaluations["retain"]
    assert finetuned["forget_quality"] < 1e-6  # measured 3.5e-15 (48 forget items)
    assert finetuned["forget_prob"] > retain["forget_prob"] + 0.5  # measured 0.997 vs 0.022
    assert finetuned["forget_rougeL_recall"] > retain["forget_rougeL_recall"] + 0.5  # measured 1.0 vs 0.20
    # the finetuned model prefers the true (paraphrased) answer: raw truth ratios well below the retain model's
    assert np.mean(finetuned["per_item"]["forget_truth_ratio"]) < 0.7 < 1.2 < np.mean(retain["per_item"]["forget_truth_ratio"])


def test_model_utility_of_both_models(evaluations):
    for result in (evaluations["finetuned"], evaluations["retain"]):
        parts = [result[f"{s}_{m}"] for s in ("retain", "real_authors", "world_facts") for m in ("prob", "rougeL_recall", "truth_ratio")]
        assert all(0 < p <= 1 for p in parts)
        assert result["model_utility"] == pytest.approx(len(parts) / sum(1 / p for p in parts))
        assert result["retain_rougeL_recall"] > 0.9  # both models were trained on the retain authors
    # both know the retain set, so their utilities are close (measured 0.772 vs 0.763)
    assert abs(evaluations["finetuned"]["model_utility"] - evaluations["retain"]["model_utility"]) < 0.05


def test_membership_inference_finds_the_forget_set_only_in_the_finetuned_model(evaluations):
    finetuned, retain = evaluations["finetuned"], evaluations["retain"]
    for attack in ATTACKS:
        assert finetuned[f"mia_auc_{attack}"] > 0.95  # measured 1.0
        # forget and holdout authors are both unseen by the retain model (measured 0.43-0.48; 0.61-0.72 before the
        # tokenizer saw both groups equally often, see `embedded_benchmark.tokenizer_corpus`)
        assert abs(retain[f"mia_auc_{attack}"] - 0.5) < 0.1
        assert finetuned[f"mia_auc_{attack}"] - retain[f"mia_auc_{attack}"] > 0.25
    assert finetuned["privleak"] > 0.5  # measured 1.07


def test_result_is_json_with_flat_headline_and_per_item_lists(evaluations):
    result = evaluations["finetuned"]
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    counts = result["settings"]["num_items"]
    assert counts == {"forget": 48, "retain": 80, "real_authors": 40, "world_facts": 24, "holdout": 80}
    for name in ("forget", "retain", "real_authors", "world_facts"):
        assert len(result["per_item"][f"{name}_truth_ratio"]) == counts[name]
        assert len(result["per_item"][f"{name}_generation"]) == counts[name]
    assert len(result["per_item"]["mia_holdout_loss"]) == counts["holdout"]
    assert result["settings"]["holdout_split"] == "holdout10"


def test_reference_must_match_the_forget_set(embedded, finetuned, evaluations):
    with pytest.raises(ValueError, match="forget split"):
        evaluate_tofu(*finetuned, embedded.data_dir, forget_split="forget05", reference=evaluations["retain"], max_items=2, progress=False)
    with pytest.raises(ValueError, match="not a TOFU evaluation"):
        load_reference({"per_item": {}})


def test_report_is_written_atomically_and_never_overwritten(evaluations, tmp_path):
    results = {"finetuned": evaluations["finetuned"], "retain": evaluations["retain"]}
    first = write_report(results, tmp_path, title="Embedded benchmark", settings={"seed": 0})
    before = first["json"].read_bytes()
    second = write_report(results, tmp_path, title="Embedded benchmark")
    assert first["json"].name == "evaluation.json" and second["json"].name == "evaluation-2.json"
    assert first["json"].read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["evaluation.json", "evaluation.md", "evaluation.png", "evaluation-2.json", "evaluation-2.md", "evaluation-2.png"]
    )  # no temporary files left behind
    report = json.loads(before)
    assert report["settings"] == {"seed": 0}
    assert report["headline"]["finetuned"]["forget_quality"] == evaluations["finetuned"]["forget_quality"]
    assert report["results"]["retain"]["per_item"]["forget_truth_ratio"] == evaluations["retain"]["per_item"]["forget_truth_ratio"]
    markdown = first["markdown"].read_text()
    assert "| metric | finetuned | retain |" in markdown
    assert f"| forget_quality | {format_number(evaluations['finetuned']['forget_quality'])} | - |" in markdown
    assert first["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a report serves as a reference: its "retain" result is picked
    assert load_reference(first["json"])["per_item"] == evaluations["retain"]["per_item"]
