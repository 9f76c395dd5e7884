"""SemEval-2025 Task 4: metrics against hand-computed values, loading of the real parquet and MIA files, and an
evaluation of a real model on a small sample of the real data."""

import math

import pytest
from statistics import harmonic_mean

from conftest import shared_data
from hf_unlearn.eval.semeval import (
    evaluate_semeval,
    exact_match,
    final_score,
    group_means,
    item_kind,
    item_scores,
    load_semeval_mia,
    load_semeval_split,
    mia_score,
    sample_per_group,
    task_aggregate,
)

ROWS = [
    {"id": "a1sc1", "task": "Task1", "kind": "completion", "output": "the cat sat on the mat"},
    {"id": "a1qa0", "task": "Task1", "kind": "qa", "output": "Paris"},
    {"id": "b2qa0", "task": "Task2", "kind": "qa", "output": "42"},
    {"id": "b2qa1", "task": "Task2", "kind": "qa", "output": "blue"},
]
GENERATIONS = ["the cat on a mat", "  paris ", "41", "Blue"]


def test_item_kind_from_the_id():
    assert item_kind('"2ebbbb06-ab81"sc1') == "completion"
    assert item_kind("67148749qa12") == "qa"
    with pytest.raises(ValueError, match="sc<N>"):
        item_kind("67148749")


def test_item_scores_and_group_means_by_hand():
    assert exact_match("  Paris\n", "paris") == 1.0 and exact_match("Paris.", "Paris") == 0.0
    scores = item_scores(ROWS, GENERATIONS)
    # ROUGE-L recall: LCS("the cat sat on the mat", "the cat on a mat") = "the cat on mat" = 4 of 6 reference words
    assert scores == pytest.approx([4 / 6, 1.0, 0.0, 1.0])
    groups = group_means(ROWS, scores)
    assert groups == {"Task1": {"knowledge": 1.0, "regurgitation": pytest.approx(4 / 6)}, "Task2": {"knowledge": 0.5}}


def test_task_aggregate_inverts_forget_scores():
    forget = {"Task1": {"knowledge": 0.2, "regurgitation": 0.5}, "Task2": {"knowledge": 0.0}}
    retain = {"Task1": {"knowledge": 0.9, "regurgitation": 0.6}, "Task2": {"knowledge": 0.8}}
    expected = harmonic_mean([0.8, 0.5, 1.0, 0.9, 0.6, 0.8])
    assert task_aggregate(forget, retain) == pytest.approx(expected)
    assert task_aggregate({"Task1": {"knowledge": 1.0}}, retain) == 0.0  # a fully remembered forget group


def test_mia_and_final_scores():
    assert mia_score(0.5) == 1.0 and mia_score(1.0) == 0.0 and mia_score(0.0) == 0.0
    assert mia_score(0.741) == pytest.approx(0.518)
    assert final_score(0.9, 0.6, 0.3) == pytest.approx(0.6)


def test_sample_per_group_keeps_file_order():
    rows = [{"task": t, "kind": k, "i": i} for i, (t, k) in enumerate(
        [("Task1", "qa"), ("Task1", "qa"), ("Task2", "qa"), ("Task1", "completion"), ("Task1", "qa")])]
    assert [r["i"] for r in sample_per_group(rows, 1)] == [0, 2, 3]
    assert sample_per_group(rows, None) == rows


def test_real_parquet_and_mia_files():
    folder = shared_data("semeval25_task4")
    counts = {"forget_train": 1112, "forget_validation": 254, "retain_train": 1136, "retain_validation": 278}
    for split, count in counts.items():
        rows = load_semeval_split(folder, split)
        assert len(rows) == count
        assert {r["task"] for r in rows} == {"Task1", "Task2", "Task3"}
        assert {r["kind"] for r in rows} == {"completion", "qa"}
    rows = load_semeval_split(folder, "forget_train")
    assert sum(r["kind"] == "completion" for r in rows) == 342 and sum(r["kind"] == "qa" for r in rows) == 770
    members, nonmembers = load_semeval_mia(folder)
    assert len(members) == 150 and len(nonmembers) == 150 and all(members) and all(nonmembers)
    with pytest.raises(ValueError, match="Unknown SemEval split"):
        load_semeval_split(folder, "forget_test")
    with pytest.raises(FileNotFoundError):
        load_semeval_split(folder / "mia", "forget_train")


def test_evaluation_on_real_data(finetuned):
    """The embedded model (128 positions) on 2 items per (task, kind) group of the real validation files."""
    folder = shared_data("semeval25_task4")
    model, tokenizer = finetuned
    result = evaluate_semeval(model, tokenizer, folder, split="validation", mia_data=folder, mmlu_accuracy=0.25,
                              max_new_tokens=8, max_length=128, max_items_per_group=2, max_mia_items=6)
    assert result["settings"]["num_items"] == {"forget": 12, "retain": 12}
    per_item = result["per_item"]
    # the aggregate is recomputed from the per-item scores by hand
    values = []
    for name in ("forget", "retain"):
        rows = [r for r in load_semeval_split(folder, f"{name}_validation") if r["id"] in set(per_item[f"{name}_id"])]
        by_id = dict(zip(per_item[f"{name}_id"], per_item[f"{name}_score"]))
        assert item_scores(rows, [per_item[f"{name}_generation"][per_item[f"{name}_id"].index(r["id"])] for r in rows]) \
            == pytest.approx([by_id[r["id"]] for r in rows])
        for task in ("Task1", "Task2", "Task3"):
            for kind, metric in (("completion", "regurgitation"), ("qa", "knowledge")):
                mean = sum(by_id[r["id"]] for r in rows if r["task"] == task and r["kind"] == kind) / 2
                assert result[f"{name}_{task}_{metric}"] == pytest.approx(mean)
                values.append(1 - mean if name == "forget" else mean)
    assert result["task_aggregate"] == pytest.approx(harmonic_mean(values) if min(values) > 0 else 0.0)
    assert 0 <= result["mia_auc"] <= 1 and result["mia_score"] == pytest.approx(1 - 2 * abs(result["mia_auc"] - 0.5))
    assert len(per_item["mia_member_mean_logprob"]) == 6 and all(math.isfinite(v) for v in per_item["mia_member_mean_logprob"])
    assert result["final_score"] == pytest.approx((result["task_aggregate"] + result["mia_score"] + 0.25) / 3)


def test_evaluation_of_a_model_left_in_training_mode(embedded, tmp_path):
    """A model fresh from training (train mode, gradient checkpointing) is evaluated as in eval mode: in train mode
    generate() would run without its cache and produce noise. Data: the embedded facts in SemEval's format."""
    import pandas as pd
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_unlearn.data.tofu import load_tofu_split

    for name, split in (("forget", "forget10"), ("retain", "retain90")):
        rows = load_tofu_split(embedded.data_dir, split).to_list()[:6]
        pd.DataFrame([{"id": f"{name}{i}qa0", "input": r["question"], "output": r["answer"], "task": "Task2",
                       "split": name} for i, r in enumerate(rows)]).to_parquet(tmp_path / f"{name}_validation.parquet")
    model = AutoModelForCausalLM.from_pretrained(embedded.finetuned_dir)
    tokenizer = AutoTokenizer.from_pretrained(embedded.finetuned_dir)
    settings = dict(prompt_format="qa", max_new_tokens=24, max_length=128)
    reference = evaluate_semeval(model.eval(), tokenizer, tmp_path, **settings)
    assert reference["forget_knowledge"] == 1.0 and reference["retain_knowledge"] == 1.0  # memorised: exact matches
    assert reference["task_aggregate"] == 0.0  # forget knowledge fully kept: 1 - 1 = 0
    model.gradient_checkpointing_enable()
    model.train()
    result = evaluate_semeval(model, tokenizer, tmp_path, **settings)
    assert result["per_item"]["forget_generation"] == reference["per_item"]["forget_generation"]
    assert model.training  # left as it was


def test_a_split_in_several_shards_is_read_whole(tmp_path):
    from datasets import Dataset

    (tmp_path / "data").mkdir()
    shards = [[{"id": "a1qa0", "input": "Q?", "output": "A", "task": "Task1"}],
              [{"id": "b2sc1", "input": "The", "output": "end", "task": "Task2"},
               {"id": "b2qa2", "input": "Q2?", "output": "B", "task": "Task2"}]]
    for index, rows in enumerate(shards):
        Dataset.from_list(rows).to_parquet(str(tmp_path / "data" / f"forget_train-0000{index}-of-00002.parquet"))
    rows = load_semeval_split(tmp_path, "forget_train")
    assert [r["id"] for r in rows] == ["a1qa0", "b2sc1", "b2qa2"] and rows[1]["kind"] == "completion"
