"""MMLU accuracy as SemEval-2025 Task 4 scores it (open-instruct's eval/mmlu/run_eval.py at its defaults): loading
the real CSVs (and the original header-less layout), the prompt, shot dropping, question sampling, the micro
average, the official/not-official verdict, and the accuracy of models whose answers are known."""

import csv
from types import SimpleNamespace

import pytest
import torch
from conftest import shared_data

from hf_unlearn.eval.mmlu import (
    choice_accuracy,
    evaluate_mmlu,
    fit_prompt,
    letter_token_ids,
    load_mmlu,
    mmlu_prompt,
    mmlu_subjects,
    sample_items,
)


SUBJECTS = ["astronomy", "college_biology", "high_school_geography", "high_school_us_history", "marketing",
            "world_religions"]


def write_subject(folder, subject, test_rows, dev_rows=()):
    """`<subject>_test.csv` / `_dev.csv` with the shared data's header; rows are (question, 4 choices, answer 0-3)."""
    for split, rows in (("test", test_rows), ("dev", dev_rows)):
        with open(folder / f"{subject}_{split}.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([["question", "choice0", "choice1", "choice2", "choice3", "answer"], *rows])


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


def test_prompt_is_open_instructs(tmp_path):
    """The header has two spaces after "about" (open-instruct writes the subject as " " + words) and the CSV text
    is kept verbatim (open-instruct's pandas does not strip cells)."""
    write_subject(tmp_path, "high_school_math", [["2 + 2?", " 3", "4 ", "5", "6", "1"]])
    row = load_mmlu(tmp_path, "high_school_math")[0]
    prompt = mmlu_prompt("high_school_math", row, shots=[{"question": "1 + 1?", "choices": ["2", "3", "4", "5"], "answer": 0}])
    assert prompt == ("The following are multiple choice questions (with answers) about  high school math.\n\n"
                      "1 + 1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer: A\n\n2 + 2?\nA.  3\nB. 4 \nC. 5\nD. 6\nAnswer:")
    logits = torch.tensor([[0.0, 1.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    assert choice_accuracy(logits, [1, 1, 3]) == pytest.approx(2 / 3)


class CharTokenizer:
    """One token per character, so that token counts are string lengths."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": list(range(len(text)))}


def test_a_long_prompt_drops_its_last_shots():
    """open-instruct: while the prompt has more than 2048 tokens (without special tokens), use one shot fewer."""
    shots = [{"question": f"S{i}", "choices": ["a", "b", "c", "d"], "answer": i} for i in range(3)]
    row = {"question": "Q", "choices": ["a", "b", "c", "d"], "answer": 0}
    one_shot = ("The following are multiple choice questions (with answers) about  art.\n\n"
                "S0\nA. a\nB. b\nC. c\nD. d\nAnswer: A\n\nQ\nA. a\nB. b\nC. c\nD. d\nAnswer:")
    assert fit_prompt(CharTokenizer(), "art", row, shots, max_length=len(one_shot)) == (one_shot, 1)
    assert fit_prompt(CharTokenizer(), "art", row, shots, max_length=len(one_shot) - 1)[1] == 0
    assert fit_prompt(CharTokenizer(), "art", row, shots, max_length=10_000)[1] == 3
    assert fit_prompt(CharTokenizer(), "art", row, shots, max_length=5)[1] == 0  # no shot left: kept as is


def test_max_items_samples_as_open_instructs_n_instances():
    """--n_instances N: test_df.sample(N, random_state=42), in the sampled order; all rows when N >= their number."""
    import pandas as pd

    rows = [{"question": f"Q{i}", "choices": ["a", "b", "c", "d"], "answer": i % 4} for i in range(40)]
    expected = pd.DataFrame(rows).sample(7, random_state=42)["question"].tolist()
    assert [r["question"] for r in sample_items(rows, 7)] == expected
    assert sample_items(rows, 40) == rows and sample_items(rows, None) == rows


class LetterModel(torch.nn.Module):
    """A stand-in model that always puts its largest next-token logit on one letter's token."""

    def __init__(self, token_id: int, vocab_size: int):
        super().__init__()
        self.token_id, self.vocab_size = token_id, vocab_size
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep):
        self.seen += [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab_size)
        logits[:, :, self.token_id] = 5.0
        return SimpleNamespace(logits=logits)


def test_accuracy_is_the_mean_over_all_questions(finetuned, tmp_path):
    """open-instruct's average_acc pools the questions: subject a (1 of 1 right) and b (1 of 4 right) give 2 / 5,
    not the mean of the subject accuracies (1 + 1/4) / 2."""
    _, tokenizer = finetuned
    shot = ["Solved?", "w", "x", "y", "z", "0"]
    write_subject(tmp_path, "a", [["Q", "p", "q", "r", "s", "2"]], [shot] * 5)
    write_subject(tmp_path, "b", [["Q", "p", "q", "r", "s", str(k)] for k in (2, 0, 1, 3)], [shot] * 5)
    model = LetterModel(letter_token_ids(tokenizer)[2], len(tokenizer))  # always answers C
    result = evaluate_mmlu(model, tokenizer, tmp_path, batch_size=2)
    assert result["accuracy"] == pytest.approx(2 / 5)
    assert result["per_subject"] == pytest.approx({"a": 1.0, "b": 0.25})
    assert result["settings"]["macro_accuracy"] == pytest.approx(0.625) and result["settings"]["num_questions"] == 5
    # 5 shots by default: each prompt holds 5 solved examples and the question
    assert all(tokenizer.decode(ids).count("Answer:") == 6 for ids in model.seen) and len(model.seen) == 5


def test_official_only_with_5_shots_all_57_subjects_and_every_question(finetuned, tmp_path):
    from hf_unlearn.eval.mmlu import MMLU_SUBJECTS

    _, tokenizer = finetuned
    model = LetterModel(letter_token_ids(tokenizer)[0], len(tokenizer))
    result = evaluate_mmlu(model, tokenizer, shared_data("mmlu"), subjects=["astronomy"], max_items=2)
    assert result["official"] is False and len(result["settings"]["missing_subjects"]) == 56
    assert "1 of the 57 subjects" in result["note"] and "sample" in result["note"] and "0.371" in result["note"]
    assert len(MMLU_SUBJECTS) == 57
    for subject in MMLU_SUBJECTS:
        write_subject(tmp_path, subject, [["Q", "p", "q", "r", "s", "0"]], [["S", "w", "x", "y", "z", "1"]] * 5)
    full = evaluate_mmlu(model, tokenizer, tmp_path, batch_size=64)
    assert full["official"] is True and full["settings"]["missing_subjects"] == [] and full["accuracy"] == 1.0
    zero_shot = evaluate_mmlu(model, tokenizer, tmp_path, num_shots=0, batch_size=64)
    assert zero_shot["official"] is False and "0-shot" in zero_shot["note"]


def test_accuracy_of_models_with_known_answers(finetuned):
    import pandas as pd

    folder = shared_data("mmlu")
    _, tokenizer = finetuned
    letters = letter_token_ids(tokenizer)
    # open-instruct's --n_instances 10 sample of each subject's test questions
    answers = {s: pd.DataFrame(load_mmlu(folder, s)).sample(10, random_state=42)["answer"].tolist()
               for s in ("astronomy", "marketing")}
    for index in range(4):  # a model always answering letter `index` is right exactly on the rows whose answer it is
        model = LetterModel(letters[index], len(tokenizer))
        result = evaluate_mmlu(model, tokenizer, folder, subjects=list(answers), max_items=10, num_shots=2, batch_size=4)
        expected = {s: sum(a == index for a in subject_answers) / 10 for s, subject_answers in answers.items()}
        assert result["per_subject"] == pytest.approx(expected)
        assert result["accuracy"] == pytest.approx(sum(expected.values()) / 2)
    assert len(model.seen) == 20


def test_real_model_runs(finetuned):
    """The embedded model (128 positions): 5-shot prompts drop shots to fit."""
    folder = shared_data("mmlu")
    model, tokenizer = finetuned
    result = evaluate_mmlu(model, tokenizer, folder, max_items=4, max_length=128)
    assert result["settings"]["num_questions"] == 24 and 0 <= result["accuracy"] <= 1
    assert set(result["per_subject"]) == set(SUBJECTS) and result["official"] is False
    assert result["settings"]["num_prompts_with_fewer_shots"] == 24
