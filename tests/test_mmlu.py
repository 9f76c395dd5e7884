"""MMLU accuracy: loading the real CSVs (and the original header-less layout), the prompt, and the accuracy of
models whose answers are known."""

import csv
from types import SimpleNamespace

import pytest
import torch

from conftest import shared_data
from hf_unlearn.eval.mmlu import (
    choice_accuracy,
    evaluate_mmlu,
    letter_token_ids,
    load_mmlu,
    mmlu_prompt,
    mmlu_subjects,
)

SUBJECTS = ["astronomy", "college_biology", "high_school_geography", "high_school_us_history", "marketing",
            "world_religions"]


def test_real_csv_folder():
    folder = shared_data("mmlu")
    assert mmlu_subjects(folder) == SUBJECTS
    rows = load_mmlu(folder, "astronomy", "test")
    assert len(rows) == 152 and all(len(r["choices"]) == 4 and r["answer"] in range(4) for r in rows)
    assert rows[0]["question"] and len(load_mmlu(folder, "astronomy", "dev")) == 5
    with pytest.raises(FileNotFoundError, match="subjects there"):
        load_mmlu(folder, "anatomy")


def test_original_headerless_layout(tmp_path):
    (tmp_path / "test").mkdir()
    with open(tmp_path / "test" / "virology_test.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["What is a virus?", "a", "b", "c", "d", "C"], ["Q2", "w", "x", "y", "z", "A"]])
    assert mmlu_subjects(tmp_path) == ["virology"]
    assert load_mmlu(tmp_path, "virology") == [
        {"question": "What is a virus?", "choices": ["a", "b", "c", "d"], "answer": 2},
        {"question": "Q2", "choices": ["w", "x", "y", "z"], "answer": 0},
    ]


def test_prompt_and_accuracy():
    row = {"question": "2 + 2?", "choices": ["3", "4", "5", "6"], "answer": 1}
    prompt = mmlu_prompt("high_school_math", row, shots=[{"question": "1 + 1?", "choices": ["2", "3", "4", "5"], "answer": 0}])
    assert prompt == ("The following are multiple choice questions (with answers) about high school math.\n\n"
                      "1 + 1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer: A\n\n2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    logits = torch.tensor([[0.0, 1.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    assert choice_accuracy(logits, [1, 1, 3]) == pytest.approx(2 / 3)


class LetterModel(torch.nn.Module):
    """A stand-in model that always puts its largest next-token logit on one letter's token."""

    def __init__(self, token_id: int, vocab_size: int):
        super().__init__()
        self.token_id, self.vocab_size = token_id, vocab_size
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen_widths = []

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep):
        self.seen_widths.append(int(attention_mask.sum(-1).max()))
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab_size)
        logits[:, :, self.token_id] = 5.0
        return SimpleNamespace(logits=logits)


def test_accuracy_of_models_with_known_answers(finetuned):
    folder = shared_data("mmlu")
    _, tokenizer = finetuned
    letters = letter_token_ids(tokenizer)
    rows = {s: load_mmlu(folder, s)[:10] for s in ("astronomy", "marketing")}
    for index in range(4):  # a model always answering letter `index` is right exactly on the rows whose answer it is
        model = LetterModel(letters[index], len(tokenizer))
        result = evaluate_mmlu(model, tokenizer, folder, subjects=list(rows), max_items=10, num_shots=2, batch_size=4)
        expected = {s: sum(r["answer"] == index for r in subject_rows) / 10 for s, subject_rows in rows.items()}
        assert result["per_subject"] == pytest.approx(expected)
        assert result["accuracy"] == pytest.approx(sum(expected.values()) / 2)
    assert len(model.seen_widths) == 6  # 3 batches per subject


def test_real_model_runs(finetuned):
    folder = shared_data("mmlu")
    model, tokenizer = finetuned
    result = evaluate_mmlu(model, tokenizer, folder, max_items=4, max_length=128)
    assert result["settings"]["num_questions"] == 24 and 0 <= result["accuracy"] <= 1
    assert set(result["per_subject"]) == set(SUBJECTS)
