"""MUSE metrics on a local folder in MUSE's layouts, written from the embedded benchmark: the forget authors' QA
play MUSE's forget texts, the holdout authors' its holdout texts."""

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_unlearn.data import load_tofu_split
from hf_unlearn.eval import evaluate_muse, load_muse_split, write_report


pytestmark = pytest.mark.usefixtures("single_thread")


def _muse_sets(embedded) -> dict[tuple[str, str], list]:
    forget = load_tofu_split(embedded.data_dir, "forget10").to_list()
    retain = load_tofu_split(embedded.data_dir, "retain90").to_list()[:24]
    holdout = load_tofu_split(embedded.data_dir, "holdout10").to_list()
    text = "Question: {question}\nAnswer: {answer}"
    return {
        ("verbmem", "forget"): [{"prompt": f"Question: {r['question']}\nAnswer:", "gt": r["answer"]} for r in forget],
        ("knowmem", "forget_qa"): [{"question": r["question"], "answer": r["answer"]} for r in forget],
        ("knowmem", "retain_qa"): [{"question": r["question"], "answer": r["answer"]} for r in retain],
        ("privleak", "forget"): [text.format(**r) for r in forget],
        ("privleak", "retain"): [text.format(**r) for r in retain],
        ("privleak", "holdout"): [text.format(**r) for r in holdout],
    }


@pytest.fixture(scope="module")
def muse_folder(embedded, tmp_path_factory):
    """MUSE's GitHub layout: `<subset>/<split>.json`, privleak splits as lists of strings."""
    folder = tmp_path_factory.mktemp("muse_json")
    for (subset, split), rows in _muse_sets(embedded).items():
        (folder / subset).mkdir(exist_ok=True)
        (folder / subset / f"{split}.json").write_text(json.dumps(rows))
    return folder


@pytest.fixture(scope="module")
def muse_results(embedded, finetuned, muse_folder):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model; restored after, so later tests keep the machine's threads
    try:
        retain_model = AutoModelForCausalLM.from_pretrained(embedded.retain_dir), AutoTokenizer.from_pretrained(embedded.retain_dir)
        settings = {"max_length": 128, "verbmem_max_new_tokens": 32, "progress": False}
        retain = evaluate_muse(*retain_model, muse_folder, **settings)
        return {"retain": retain, "finetuned": evaluate_muse(*finetuned, muse_folder, reference=retain, **settings)}
    finally:
        torch.set_num_threads(threads)


def test_hub_parquet_layout_reads_the_same_rows(embedded, muse_folder, tmp_path):
    """The Hub's layout (`<subset>/<split>-00000-of-00001.parquet`, privleak rows with a `text` column)."""
    for (subset, split), rows in _muse_sets(embedded).items():
        (tmp_path / subset).mkdir(exist_ok=True)
        table = [{"text": r} for r in rows] if subset == "privleak" else rows
        Dataset.from_list(table).to_parquet(str(tmp_path / subset / f"{split}-00000-of-00001.parquet"))
    for subset, split in _muse_sets(embedded):
        assert load_muse_split(tmp_path, subset, split) == load_muse_split(muse_folder, subset, split)
    assert load_muse_split(tmp_path, "knowmem", "forget_qa_icl", required=False) is None
    with pytest.raises(ValueError, match="No MUSE split knowmem/forget_qa_icl"):
        load_muse_split(tmp_path, "knowmem", "forget_qa_icl")


def test_finetuned_model_memorised_the_forget_texts(muse_results, embedded):
    finetuned, retain = muse_results["finetuned"], muse_results["retain"]
    assert finetuned["verbmem_f"] > 0.95 > 0.5 > retain["verbmem_f"]  # measured 1.0 vs 0.23
    # KnowMem, MUSE's way: mean ROUGE-L F1 (rouge_score, no stemming) of the greedy answer against the true answer.
    # (On the embedded model it does not separate finetuned from retain: MUSE's prompt ends in "Answer: ", a lone
    # space token the model never saw before an answer; finetuned vs retain measured 0.21 vs 0.03 on one build, 0.20
    # vs 0.29 on build seed 1. So this checks the value, not a direction.)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    answers = {"forget": _muse_sets(embedded)[("knowmem", "forget_qa")], "retain": _muse_sets(embedded)[("knowmem", "retain_qa")]}
    for result in (finetuned, retain):
        for name, key in (("forget", "knowmem_f"), ("retain", "knowmem_r")):
            generations = result["per_item"][f"knowmem_{name}_generation"]
            f1 = [scorer.score(row["answer"], g)["rougeL"].fmeasure for row, g in zip(answers[name], generations)]
            assert len(f1) == len(answers[name]) and result[key] == pytest.approx(sum(f1) / len(f1), abs=1e-12)
    assert finetuned["mia_auc_loss"] > 0.9 and finetuned["mia_auc_min_k"] > 0.75  # measured 0.97, 0.84
    assert abs(retain["mia_auc_min_k"] - 0.5) < 0.1  # measured 0.51
    assert finetuned["privleak"] > 0.5  # measured 0.63
    assert retain["privleak"] is None  # no reference given


def test_muse_result_is_json_and_reports(muse_results, tmp_path):
    result = muse_results["finetuned"]
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert result["settings"]["num_items"] == {"verbmem": 48, "knowmem_forget": 48, "knowmem_retain": 24,
                                               "privleak_forget": 48, "privleak_holdout": 80}
    assert result["settings"]["knowmem_icl_examples"] == {"forget": 0, "retain": 0}
    paths = write_report(muse_results, tmp_path, title="MUSE")
    assert "| verbmem_f |" in paths["markdown"].read_text()
    assert paths["plot"].stat().st_size > 0
