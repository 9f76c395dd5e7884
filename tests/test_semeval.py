"""SemEval-2025 Task 4: metrics against hand-computed values, loading of the real parquet and MIA files, and an
evaluation of a real model on a small sample of the real data."""

import math
from statistics import harmonic_mean

import pytest
from conftest import shared_data

from hf_unlearn.eval.semeval import (
    clean_up_spaces,
    evaluate_semeval,
    exact_match,
    final_score,
    final_score_fields,
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
    """The official rule: the id without its last character ends in "sc" or "qa" (`id[:-1].endswith(...)`)."""
    assert item_kind('"2ebbbb06-ab81"sc1') == "completion" and item_kind("67148749qa0") == "qa"
    for unscored in ("67148749", "67148749qa12", "67148749sc10"):  # the official script scores none of these
        with pytest.raises(ValueError, match="unscored"):
            item_kind(unscored)


def test_generations_are_cleaned_up_as_the_official_decode():
    """The script decodes with clean_up_tokenization_spaces=True (transformers 4.x: every tokenizer), which drops
    the space before . ? ! , and clitics; its exact match then sees "Paris." where the tokens spelled "Paris ."."""
    assert clean_up_spaces("Paris .") == "Paris."
    assert clean_up_spaces("it 's 42 , is n't it ?") == "it's 42, isn't it?"
    assert clean_up_spaces("  a-b  ") == "  a-b  "
    assert exact_match(clean_up_spaces(" Paris .\n"), "paris.") == 1.0


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


def test_the_mmlu_threshold_does_not_enter_the_final_score():
    """The script averages the three scores whatever MMLU is and only warns when MMLU < 0.371 (the 7B awards
    leaderboard left those out): 0.30 still counts, (0.9 + 0.6 + 0.30) / 3 = 0.6."""
    low = final_score_fields(0.9, 0.6, 0.30)
    assert low["final_score"] == pytest.approx(0.6) and low["mmlu_above_threshold"] is False
    assert low["mmlu_official"] is None  # a bare number: its protocol is unknown
    at = final_score_fields(0.9, 0.6, 0.371)
    assert at["final_score"] == pytest.approx((0.9 + 0.6 + 0.371) / 3) and at["mmlu_above_threshold"] is True
    mmlu = {"accuracy": 0.45, "official": False, "note": "Not the official SemEval-2025 Task 4 MMLU score: 0-shot."}
    fields = final_score_fields(0.5, 0.2, mmlu)
    assert fields["mmlu_accuracy"] == 0.45 and fields["mmlu_official"] is False and fields["mmlu_note"] == mmlu["note"]
    assert fields["final_score"] == pytest.approx(1.15 / 3)  # (0.5 + 0.2 + 0.45) / 3
    assert final_score_fields(0.5, None, mmlu)["final_score"] is None  # no MIA score: no final score
    assert final_score_fields(0.5, 0.2, None) == {"mmlu_accuracy": None, "mmlu_official": None, "mmlu_note": None,
                                                   "mmlu_above_threshold": None, "final_score": None}


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
                              max_new_tokens=8, max_length=128, max_items_per_group=2, max_mia_items=6,
                              mia_max_length=128)
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
    assert result["mmlu_above_threshold"] is False


def test_mia_scores_whole_documents(finetuned):
    """The script's loss attack scores each whole document: model(ids, labels=ids).loss, AUC over -loss (members
    = 1), MIA score 1 - 2 |AUC - 0.5|. A tiny random GPT-2 with room for whole documents, prompts cut to 32 tokens."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = shared_data("semeval25_task4")
    _, tokenizer = finetuned
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=2048, n_embd=16, n_layer=1, n_head=2,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    result = evaluate_semeval(model, tokenizer, folder, mia_data=folder, max_new_tokens=2, max_length=32,
                              max_items_per_group=1, max_mia_items=3)
    members, nonmembers = load_semeval_mia(folder)
    losses = {}
    for name, documents in (("member", members[:3]), ("nonmember", nonmembers[:3])):
        with torch.no_grad():
            losses[name] = [model(ids, labels=ids).loss.item() for ids in
                            (tokenizer(d, return_tensors="pt").input_ids for d in documents)]
    assert max(len(tokenizer(d).input_ids) for d in members[:3]) > 32  # the old code cut them to max_length
    assert result["per_item"]["mia_member_mean_logprob"] == pytest.approx([-v for v in losses["member"]], rel=1e-4)
    assert result["per_item"]["mia_nonmember_mean_logprob"] == pytest.approx([-v for v in losses["nonmember"]], rel=1e-4)
    pairs = [(m < n) + 0.5 * (m == n) for m in losses["member"] for n in losses["nonmember"]]  # lower loss = member
    auc = sum(pairs) / len(pairs)
    assert result["mia_auc"] == pytest.approx(auc) and result["mia_score"] == pytest.approx(1 - abs(auc - 0.5) * 2)


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
