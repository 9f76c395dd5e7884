"""TOFU metrics on the embedded benchmark: the finetuned model (saw the forget authors) against the retain model
(never saw them). Also the report files."""

import inspect
import json

import numpy as np
import pytest
import torch
from scipy.stats import hmean
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_unlearn.eval.tofu as tofu
from hf_unlearn.cli import DEFAULT_MAX_NEW_TOKENS, build_parser
from hf_unlearn.data import load_tofu_split, tokenize_qa
from hf_unlearn.eval import evaluate_tofu, generate_answers, write_report
from hf_unlearn.eval.report import format_number
from hf_unlearn.eval.tofu import load_reference, model_utility
from hf_unlearn.trainers.base import UnlearnConfig


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


def test_model_utility_is_the_harmonic_mean_of_the_nine_non_forget_numbers():
    # hand-made numbers 1/2 .. 1/10: their reciprocals sum to 2 + 3 + ... + 10 = 54, so the harmonic mean is 9/54
    names = ["retain_prob", "retain_rougeL_recall", "retain_truth_ratio", "real_authors_prob", "real_authors_rougeL_recall",
             "real_authors_truth_ratio", "world_facts_prob", "world_facts_rougeL_recall", "world_facts_truth_ratio"]
    nine = {name: 1 / k for name, k in zip(names, range(2, 11))}
    forget = {"forget_prob": 1e-6, "forget_rougeL_recall": 1e-6, "forget_truth_ratio": 1e-6, "forget_quality": 1e-6}
    assert model_utility(nine | forget) == pytest.approx(1 / 6, rel=1e-15)  # forget-set numbers play no part
    assert model_utility(nine | {"world_facts_truth_ratio": 0.0}) == 0.0  # scipy.stats.hmean's convention
    with pytest.raises(ValueError, match="missing \\['real_authors_prob'\\]"):
        model_utility({k: v for k, v in nine.items() if k != "real_authors_prob"})


def test_model_utility_of_both_models(evaluations):
    # recomputed from the per-item values as open-unlearning aggregates them (`model_utility.yaml`: retain
    # probability, normalised probability on real authors and world facts, ROUGE-L recall, `true_better` truth-ratio
    # statistic; `hm_aggregate`: scipy.stats.hmean)
    for result in (evaluations["finetuned"], evaluations["retain"]):
        items = result["per_item"]
        nine = []
        for name, prob in (("retain", "answer_prob"), ("real_authors", "normalized_prob"), ("world_facts", "normalized_prob")):
            tr = np.asarray(items[f"{name}_truth_ratio"])
            nine += [np.mean(items[f"{name}_{prob}"]), np.mean(items[f"{name}_rougeL_recall"]), np.mean(np.maximum(0, 1 - tr))]
        assert all(0 < p <= 1 for p in nine)
        assert result["model_utility"] == pytest.approx(hmean(nine), rel=1e-12)
        assert result["retain_rougeL_recall"] > 0.9  # both models were trained on the retain authors
    # both know the retain set, so their utilities are close (measured 0.772 vs 0.763)
    assert abs(evaluations["finetuned"]["model_utility"] - evaluations["retain"]["model_utility"]) < 0.05


def test_membership_inference_finds_the_forget_set_only_in_the_finetuned_model(evaluations):
    finetuned, retain = evaluations["finetuned"], evaluations["retain"]
    for attack in ATTACKS:
        assert finetuned[f"mia_auc_{attack}"] > 0.95  # measured 1.0
        # forget and holdout authors are both unseen by the retain model (measured 0.43-0.48; 0.61-0.72 before the
        # tokenizer saw both groups equally often, see `benchmarks.embedded.tokenizer_corpus`)
        assert abs(retain[f"mia_auc_{attack}"] - 0.5) < 0.1
        assert finetuned[f"mia_auc_{attack}"] - retain[f"mia_auc_{attack}"] > 0.25
    assert finetuned["privleak"] < -50  # percent, MUSE's sign: it leaks the forget set (measured -100.0)


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


def test_generation_length_is_open_unlearnings_200_everywhere(evaluations):
    # open-unlearning `configs/generation/default.yaml`: max_new_tokens: 200 for every TOFU ROUGE
    assert tofu.TOFU_MAX_NEW_TOKENS == 200
    assert inspect.signature(evaluate_tofu).parameters["max_new_tokens"].default == 200
    assert evaluations["finetuned"]["settings"]["max_new_tokens"] == 200
    # the callers that set a length follow it: trainers' evaluation, `hf-unlearn eval` and `hf-unlearn relapse`
    assert UnlearnConfig.__dataclass_fields__["eval_max_new_tokens"].default == 200
    assert build_parser().parse_args(["eval", "--output_dir", "x"]).max_new_tokens is None
    assert DEFAULT_MAX_NEW_TOKENS["tofu"] == DEFAULT_MAX_NEW_TOKENS["embedded"] == 200
    assert build_parser().parse_args(["relapse", "--model", "m", "--output_dir", "x"]).max_new_tokens == 200


def test_evaluation_generates_with_the_default_length(embedded, finetuned, monkeypatch):
    lengths = []

    def recording(*args, max_new_tokens, **kwargs):
        lengths.append(max_new_tokens)
        return generate_answers(*args, max_new_tokens=max_new_tokens, **kwargs)

    monkeypatch.setattr(tofu, "generate_answers", recording)
    evaluate_tofu(*finetuned, embedded.data_dir, max_items=2, progress=False)
    assert lengths and set(lengths) == {200}


def test_answers_end_at_eos_even_without_one_in_the_generation_config(embedded, finetuned):
    model, tokenizer = finetuned
    rows = load_tofu_split(embedded.data_dir, "forget10").to_list()[:8]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        answers = generate_answers(model, tokenizer, [r["question"] for r in rows], max_new_tokens=200)
    finally:
        model.generation_config.eos_token_id = saved
    # the finetuned model reproduces its answers; with nothing generated after their EOS, exactly
    assert answers == [r["answer"] for r in rows]


def test_answer_probability_scores_the_answer_and_its_eos(embedded, retain_model, evaluations):
    """open-unlearning's probability (`src/evals/metrics/utils.py` `evaluate_probability`) averages the loss over
    every labelled token, and its labels end with EOS (`src/data/utils.py` `preprocess_chat_instance`)."""
    model, tokenizer = retain_model
    rows = load_tofu_split(embedded.data_dir, "forget10_perturbed").to_list()[:4]
    reported = evaluations["retain"]["per_item"]["forget_answer_prob"][:4]
    for row, probability in zip(rows, reported):
        example = tokenize_qa(tokenizer, row["question"], row["answer"], 256)
        answer_start = example["labels"].count(-100)
        ids = example["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id
        with torch.no_grad():
            log_probs = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
        # position t predicts token t + 1: the answer's tokens and its EOS
        token_log_probs = [float(log_probs[t - 1, ids[t]]) for t in range(answer_start, len(ids))]
        with_eos = float(np.exp(np.mean(token_log_probs)))
        without_eos = float(np.exp(np.mean(token_log_probs[:-1])))
        assert probability == pytest.approx(with_eos, rel=1e-4)
        assert abs(with_eos - without_eos) > 10 * 1e-4 * with_eos  # the check tells the two apart
