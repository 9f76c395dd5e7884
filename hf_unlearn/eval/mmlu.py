"""MMLU accuracy (Hendrycks et al., 2021): the utility check that SemEval-2025 Task 4 reports next to forgetting.

Each question is shown as in the original evaluation,

    The following are multiple choice questions (with answers) about {subject}.

    {question}
    A. {choice 0}
    ...
    Answer:

after `num_shots` solved examples from the subject's dev split; the prediction is the letter among " A".." D"
with the largest next-token logit. Accuracy is averaged over all questions (micro) and per subject.

Data: a local folder of CSV files `<subject>_dev.csv` and `<subject>_test.csv` (with a header `question,
choice0..3,answer`, answer 0-3; or the original header-less files `question,A,B,C,D,<letter>`, also under `dev/`
and `test/` subfolders), or a Hub data set such as `cais/mmlu` (one config per subject; `question, choices,
answer`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch

from ..data.formatting import ensure_pad_token, left_padded_prompts
from ..modeling import eval_mode

MMLU_HUB_NAME = "cais/mmlu"
LETTERS = ("A", "B", "C", "D")


# ----- data --------------------------------------------------------------------------------------------------------
def _row(fields: list[str]) -> dict:
    question, *choices, answer = fields
    if len(choices) != 4:
        raise ValueError(f"An MMLU row has a question, 4 choices and an answer; got {len(fields)} fields.")
    answer = answer.strip()
    index = LETTERS.index(answer) if answer in LETTERS else int(answer)
    return {"question": question.strip(), "choices": [c.strip() for c in choices], "answer": index}


def _csv_file(folder: Path, subject: str, split: str) -> Path | None:
    for path in (folder / f"{subject}_{split}.csv", folder / split / f"{subject}_{split}.csv"):
        if path.is_file():
            return path
    return None


def mmlu_subjects(name_or_path: str | os.PathLike) -> list[str]:
    """Subjects with a test file in a local MMLU folder."""
    folder = Path(name_or_path).expanduser()
    return sorted({p.name[: -len("_test.csv")] for p in [*folder.glob("*_test.csv"), *folder.glob("test/*_test.csv")]})


def load_mmlu(name_or_path: str | os.PathLike, subject: str, split: str = "test") -> list[dict]:
    """Rows `{question, choices[4], answer (0-3)}` of one subject's split ("test" or "dev") from a local folder of
    CSVs or a Hub data set (`cais/mmlu`)."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        path = _csv_file(folder, subject, split)
        if path is None:
            raise FileNotFoundError(f"No MMLU file {subject}_{split}.csv in {folder} (or {folder / split}); "
                                    f"subjects there: {mmlu_subjects(folder)}.")
        with open(path, newline="") as handle:
            records = list(csv.reader(handle))
        if records and [f.strip() for f in records[0][:2]] == ["question", "choice0"]:
            records = records[1:]
        return [_row(r) for r in records if r]
    from datasets import load_dataset

    rows = load_dataset(str(name_or_path), subject, split=split).to_list()
    return [{"question": r["question"], "choices": list(r["choices"]), "answer": int(r["answer"])} for r in rows]


# ----- prompts and the pure metric ---------------------------------------------------------------------------------
def format_question(row: dict, with_answer: bool = False) -> str:
    lines = [row["question"]] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"])]
    text = "\n".join(lines) + "\nAnswer:"
    return text + f" {LETTERS[row['answer']]}\n\n" if with_answer else text


def mmlu_prompt(subject: str, row: dict, shots: list[dict]) -> str:
    """The original MMLU prompt: a header, `shots` solved examples, then the question."""
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return header + "".join(format_question(s, with_answer=True) for s in shots) + format_question(row)


def choice_accuracy(choice_logits: torch.Tensor, answers) -> float:
    """Fraction of rows whose largest logit among the 4 letters is the answer; `choice_logits` is (rows, 4)."""
    return float((choice_logits.argmax(-1) == torch.as_tensor(answers)).float().mean())


def letter_token_ids(tokenizer) -> list[int]:
    """Token ids of " A".." D" as they follow "Answer:" (the last token, should a tokenizer split the space off)."""
    ids = [tokenizer(f" {letter}", add_special_tokens=False)["input_ids"][-1] for letter in LETTERS]
    if len(set(ids)) != 4:
        raise ValueError(f"The tokenizer does not give the letters A-D distinct tokens ({ids}).")
    return ids


# ----- evaluation --------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_mmlu(
    model,
    tokenizer,
    data: str | os.PathLike = MMLU_HUB_NAME,
    subjects: list[str] | None = None,
    num_shots: int = 0,
    max_items: int | None = None,
    batch_size: int = 8,
    max_length: int = 2048,
) -> dict:
    """MMLU accuracy of a causal LM: `accuracy` (over all questions), `per_subject` accuracies and `settings`.

    Args:
        subjects: subjects to evaluate; every subject of a local folder by default (a Hub name needs them).
        num_shots: solved dev examples before each question (5 in the original; 0 is lm-eval's default).
        max_items: evaluate only the first N test questions of each subject.
    """
    ensure_pad_token(tokenizer)
    if subjects is None:
        if not Path(data).expanduser().is_dir():
            raise ValueError(f"Name the MMLU subjects to evaluate from {data} (e.g. subjects=['astronomy']).")
        subjects = mmlu_subjects(data)
    if not subjects:
        raise ValueError(f"No MMLU subjects found in {data}.")
    letters = torch.tensor(letter_token_ids(tokenizer))
    device = next(model.parameters()).device
    with eval_mode(model):
        per_subject, correct, total = {}, 0, 0
        for subject in subjects:
            shots = load_mmlu(data, subject, "dev")[:num_shots] if num_shots else []
            rows = load_mmlu(data, subject, "test")[:max_items]
            prompts = [tokenizer(mmlu_prompt(subject, r, shots), add_special_tokens=True)["input_ids"][-max_length:]
                       for r in rows]
            logits = []
            for start in range(0, len(prompts), batch_size):
                batch = left_padded_prompts(prompts[start : start + batch_size], tokenizer.pad_token_id)
                mask = batch["attention_mask"].to(device)
                out = model(input_ids=batch["input_ids"].to(device), attention_mask=mask,
                            position_ids=(mask.cumsum(-1) - 1).clamp(min=0), logits_to_keep=1)
                logits.append(out.logits[:, -1, letters.to(device)].float().cpu())
            choice_logits = torch.cat(logits)
            per_subject[subject] = choice_accuracy(choice_logits, [r["answer"] for r in rows])
            correct += round(per_subject[subject] * len(rows))
            total += len(rows)
    return {
        "accuracy": correct / total,
        "per_subject": per_subject,
        "settings": {"data": str(data), "subjects": subjects, "num_shots": num_shots, "max_items": max_items,
                     "num_questions": total, "macro_accuracy": float(np.mean(list(per_subject.values())))},
    }
