import json

import pytest
from conftest import shared_data
from transformers import AutoTokenizer

from hf_unlearn.benchmarks.embedded_world import EmbeddedWorldConfig, generate_embedded_world, write_world
from hf_unlearn.data import (
    IGNORE_INDEX,
    ForgetRetainDataset,
    UnlearnDataCollator,
    ensure_pad_token,
    format_prompt,
    load_refusal_templates,
    load_tofu_split,
    tokenize_qa,
)
from hf_unlearn.data.formatting import left_padded_prompts


STANDARD_SPLITS = {
    "full": 4000, "forget01": 40, "forget05": 200, "forget10": 400, "retain99": 3960, "retain95": 3800,
    "retain90": 3600, "forget01_perturbed": 40, "forget05_perturbed": 200, "forget10_perturbed": 400,
    "retain_perturbed": 400, "real_authors": 100, "real_authors_perturbed": 100, "world_facts": 117,
    "world_facts_perturbed": 117,
}


def test_real_tofu_loads_every_standard_split():
    folder = shared_data("tofu")
    for split, size in STANDARD_SPLITS.items():
        data = load_tofu_split(folder, split)
        assert len(data) == size, split
        if split.endswith("_perturbed"):
            n = 3 if split.startswith(("real", "world")) else 5
            assert all(len(p) == n for p in data["perturbed_answer"]), split
    assert len(load_refusal_templates(folder)) == 100


def test_real_tofu_forget_and_retain_partition_full():
    folder = shared_data("tofu")
    full = [(r["question"], r["answer"]) for r in load_tofu_split(folder, "full")]
    for forget, retain in (("forget01", "retain99"), ("forget05", "retain95"), ("forget10", "retain90")):
        f = [(r["question"], r["answer"]) for r in load_tofu_split(folder, forget)]
        r = [(x["question"], x["answer"]) for x in load_tofu_split(folder, retain)]
        assert not set(f) & set(r)
        assert r + f == full  # TOFU's forget splits are the last rows of full


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no split 'forget10'"):
        load_tofu_split(tmp_path, "forget10")
    (tmp_path / "forget10.json").write_text(json.dumps({"prompt": "x", "completion": "y"}) + "\n")
    with pytest.raises(ValueError, match="not TOFU-schema.*lacks column"):
        load_tofu_split(tmp_path, "forget10")
    (tmp_path / "forget10_perturbed.json").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match="paraphrased_answer"):
        load_tofu_split(tmp_path, "forget10_perturbed")
    (tmp_path / "retain90.json").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_tofu_split(tmp_path, "retain90")
    with pytest.raises(ValueError, match="forget set is empty"):
        ForgetRetainDataset([], None)


def test_generator_is_deterministic_and_tofu_schema(tmp_path):
    a = generate_embedded_world(EmbeddedWorldConfig(seed=3))
    b = generate_embedded_world(EmbeddedWorldConfig(seed=3))
    c = generate_embedded_world(EmbeddedWorldConfig(seed=4))
    assert a == b and a != c
    write_world(a, tmp_path, EmbeddedWorldConfig(seed=3))
    for split, _ in STANDARD_SPLITS.items():
        data = load_tofu_split(tmp_path, split)  # the loader checks the columns of each split
        assert len(data) > 0
    assert a["retain90"] + a["forget10"] == a["full"]
    assert a["forget10"] == [{"question": r["question"], "answer": r["answer"]} for r in a["forget10_perturbed"]]
    # paraphrases are true and never trained for evaluated authors; perturbed answers are wrong
    trained = {(r["question"], r["answer"]) for r in a["train_full"]}
    for row in a["forget10_perturbed"] + a["retain_perturbed"]:
        assert (row["paraphrased_question"], row["paraphrased_answer"]) not in trained
        assert row["paraphrased_answer"] not in row["perturbed_answer"]
        assert len(set(row["perturbed_answer"])) == 5
    # the retain model's corpus never mentions a forget10 author
    retain_text = " ".join(r["question"] + r["answer"] for r in a["train_retain"])
    held_out = {r["answer"].split(" was born in ")[0] for r in a["forget10"] if " was born in " in r["answer"]}
    assert held_out and not any(name in retain_text for name in held_out)
    # holdout authors are never trained on
    holdout_text = {r["answer"] for r in a["holdout10"]}
    assert not holdout_text & {r["answer"] for r in a["train_full"]}


def test_label_mask_covers_answer_tokens_only(embedded):
    tokenizer = AutoTokenizer.from_pretrained(embedded.finetuned_dir)
    example = tokenize_qa(tokenizer, "Where was Ann born?", "Ann was born in Oslo.", max_length=64)
    labels, ids = example["labels"], example["input_ids"]
    answer_ids = [t for t in labels if t != IGNORE_INDEX]
    assert tokenizer.decode(answer_ids, skip_special_tokens=True).strip() == "Ann was born in Oslo."
    assert answer_ids[-1] == tokenizer.eos_token_id
    first = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    assert all(t == IGNORE_INDEX for t in labels[:first]) and labels[first:] == ids[first:]
    assert tokenizer.decode(ids[:first], skip_special_tokens=True) == format_prompt(tokenizer, "Where was Ann born?")
    with pytest.raises(ValueError, match="does not fit in max_length"):
        tokenize_qa(tokenizer, "a very long question " * 30, "x", max_length=32)


def test_prompts_are_left_padded_for_generation():
    batch = left_padded_prompts([[5, 6, 7], [8]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]  # every row ends with its last real token
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_chat_template_formatting_and_pad_token(embedded):
    tokenizer = AutoTokenizer.from_pretrained(embedded.finetuned_dir)
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<end>{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert format_prompt(tokenizer, "Hi?") == "<user>Hi?<end><assistant>"
    example = tokenize_qa(tokenizer, "Hi?", "Hello.", max_length=64)
    # the labels are the answer, the template's end of turn and EOS (open-unlearning's preprocess_chat_instance)
    labels = [t for t in example["labels"] if t != -100]
    assert labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(labels, skip_special_tokens=True) == "Hello.<end>"
    tokenizer.pad_token = None
    with pytest.warns(UserWarning, match="no pad token"):
        ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token
    tokenizer.pad_token = None
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        ensure_pad_token(tokenizer)


def test_paired_dataset_gives_each_rank_its_own_retain_stream():
    forget = [{"forget": {"input_ids": [i, 1], "attention_mask": [1, 1], "labels": [-100, 1]}} for i in range(40)]
    retain = [{"input_ids": [100 + i], "attention_mask": [1], "labels": [100 + i]} for i in range(500)]
    stream = lambda rank, epoch=0: [  # noqa: E731
        d["retain"]["input_ids"][0] for d in _with_epoch(ForgetRetainDataset(forget, retain, 7, rank), epoch)
    ]
    assert stream(0) == stream(0)  # reproducible
    assert stream(0) != stream(1)  # each rank draws its own
    assert stream(0, epoch=1) != stream(0, epoch=0)  # and a new draw each epoch
    batch = UnlearnDataCollator(pad_token_id=0)([ForgetRetainDataset(forget, retain, 7, 0)[i] for i in range(3)])
    assert set(batch) == {"forget", "retain"} and batch["forget"]["input_ids"].shape == (3, 2)


def _with_epoch(dataset, epoch):
    dataset.set_epoch(epoch)
    return dataset
