"""MMLU accuracy (Hendrycks et al., 2021), as SemEval-2025 Task 4 scores model utility.

The task's organisers score MMLU with open-instruct's `eval/mmlu/run_eval.py` at its defaults (5 shots, all 57
subjects) and take its `average_acc`; this module reproduces that protocol:

- prompt: `"The following are multiple choice questions (with answers) about  {subject}.\\n\\n"` (two spaces:
  the subject is written `" " + " ".join(words)`, as in the original evaluation), then the first `num_shots` rows
  of the subject's dev split, each `"{question}\\nA. {choice}\\nB. ...\\nD. {choice}\\nAnswer: {letter}\\n\\n"`, then
  the test question ending in `"\\nAnswer:"`; the CSV text is used verbatim;
- a prompt longer than `max_length` (2048) tokens, counted without special tokens, drops its last shot until it
  fits; the model reads it tokenized with special tokens;
- prediction: argmax over the next-token logits of the last tokens of `" A"`, `" B"`, `" C"`, `" D"`;
- accuracy = (correct answers) / (questions), over all questions of all subjects (micro average, open-instruct's
  `average_acc`); per-subject accuracies and their plain mean (`macro_accuracy`) are reported beside it;
- `max_items=N` keeps N test questions per subject drawn as open-instruct's `--n_instances N`
  (`DataFrame.sample(N, random_state=42)`, i.e. `RandomState(42).permutation(n)[:N]`).

The result says whether it is that official score (`official`: 5 shots, the 57 subjects, every test question) and,
when it is not, why (`note`, `settings["missing_subjects"]`): SemEval's 0.371 threshold is calibrated on the
official score only.

Deliberate differences: CSV cells are read as text (open-instruct's pandas turns cells such as "None" or "0.50"
into NaN / 0.5); a prompt still too long with no shot left (or pushed past `max_length` by its special tokens)
keeps its last `max_length` tokens (open-instruct loops forever, or passes it on whole); prompts are batched,
left-padded, with position ids counted from the first real token (the logits of the unpadded prompt, as
open-instruct's default batch size 1).

Data: a local folder of CSV files `<subject>_dev.csv` and `<subject>_test.csv` (with a header `question,
choice0..3,answer`, answer 0-3; or the original header-less files `question,A,B,C,D,<letter>`, also under `dev/`
and `test/` subfolders), or a Hub data set such as `cais/mmlu` (one config per subject; `question, choices,
answer`).
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..data.formatting import ensure_pad_token, left_padded_prompts
from ..modeling import eval_mode


MMLU_HUB_NAME = "cais/mmlu"
LETTERS = ("A", "B", "C", "D")
OFFICIAL_NUM_SHOTS = 5  # open-instruct's --ntrain default, used by the SemEval-2025 Task 4 organisers
MAX_PROMPT_TOKENS = 2048  # open-instruct drops shots until a prompt has at most this many tokens
SAMPLE_SEED = 42  # open-instruct's --n_instances: test_df.sample(n, random_state=42)
MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)


# ----- data --------------------------------------------------------------------------------------------------------
def _row(fields: list[str]) -> dict:
    question, *choices, answer = fields
    if len(choices) != 4:
        raise ValueError(f"An MMLU row has a question, 4 choices and an answer; got {len(fields)} fields.")
    answer = answer.strip()
    index = LETTERS.index(answer) if answer in LETTERS else int(answer)
    return {"question": question, "choices": list(choices), "answer": index}


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
    CSVs (text kept verbatim) or a Hub data set (`cais/mmlu`)."""
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


def sample_items(rows: list[dict], max_items: int | None) -> list[dict]:
    """`max_items` rows drawn as open-instruct's `--n_instances` (pandas `sample(n, random_state=42)`: the first n
    of `RandomState(42).permutation(len(rows))`, in that order); all rows, in file order, when `max_items` is None
    or not below their number."""
    if max_items is None or max_items >= len(rows):
        return rows
    if max_items < 1:
        raise ValueError(f"max_items must be a positive number of questions per subject, got {max_items}.")
    return [rows[i] for i in np.random.RandomState(SAMPLE_SEED).permutation(len(rows))[:max_items]]


# ----- prompts and the pure metric ---------------------------------------------------------------------------------
def format_question(row: dict, with_answer: bool = False) -> str:
    lines = [row["question"]] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"])]
    text = "\n".join(lines) + "\nAnswer:"
    return text + f" {LETTERS[row['answer']]}\n\n" if with_answer else text


def mmlu_prompt(subject: str, row: dict, shots: list[dict]) -> str:
    """The original MMLU prompt: a header (`about` + two spaces + the subject's words), the solved `shots`, then
    the question."""
    header = f"The following are multiple choice questions (with answers) about  {' '.join(subject.split('_'))}.\n\n"
    return header + "".join(format_question(s, with_answer=True) for s in shots) + format_question(row)


def fit_prompt(tokenizer, subject: str, row: dict, shots: list[dict], max_length: int = MAX_PROMPT_TOKENS
               ) -> tuple[str, int]:
    """(prompt, shots used): `mmlu_prompt` with its last shots dropped until it has at most `max_length` tokens
    (counted without special tokens), as open-instruct does; with no shot left the prompt is returned as is."""
    k = len(shots)
    prompt = mmlu_prompt(subject, row, shots)
    while k > 0 and len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) > max_length:
        k -= 1
        prompt = mmlu_prompt(subject, row, shots[:k])
    return prompt, k


def choice_accuracy(choice_logits: torch.Tensor, answers) -> float:
    """Fraction of rows whose largest logit among the 4 letters is the answer; `choice_logits` is (rows, 4)."""
    return float((choice_logits.argmax(-1) == torch.as_tensor(answers)).float().mean())


def letter_token_ids(tokenizer) -> list[int]:
    """Token ids of " A".." D" as they follow "Answer:" (the last token, should a tokenizer split the space off)."""
    ids = [tokenizer(f" {letter}", add_special_tokens=False)["input_ids"][-1] for letter in LETTERS]
    if len(set(ids)) != 4:
        raise ValueError(f"The tokenizer does not give the letters A-D distinct tokens ({ids}).")
    return ids


def official_status(subjects: list[str], num_shots: int, subsampled: bool) -> tuple[bool, str]:
    """(official, note): whether an MMLU run is SemEval-2025 Task 4's official score (5 shots, the 57 subjects,
    every test question) and a sentence saying so, or why not."""
    missing = [s for s in MMLU_SUBJECTS if s not in subjects]
    extra = [s for s in subjects if s not in MMLU_SUBJECTS]
    reasons = []
    if missing:
        reasons.append(f"{len(MMLU_SUBJECTS) - len(missing)} of the 57 subjects ({len(missing)} missing)")
    if extra:
        reasons.append(f"subjects outside MMLU's 57: {extra}")
    if num_shots != OFFICIAL_NUM_SHOTS:
        reasons.append(f"{num_shots}-shot instead of {OFFICIAL_NUM_SHOTS}-shot")
    if subsampled:
        reasons.append("a sample of the test questions (max_items)")
    if not reasons:
        return True, ("The official SemEval-2025 Task 4 MMLU score: 5-shot, all 57 subjects, every test question "
                      "(open-instruct's average_acc).")
    return False, ("Not the official SemEval-2025 Task 4 MMLU score (5-shot, all 57 subjects, every test question): "
                   + "; ".join(reasons) + ". Do not compare it with the task's 0.371 threshold.")


# ----- evaluation --------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_mmlu(
    model,
    tokenizer,
    data: str | os.PathLike = MMLU_HUB_NAME,
    subjects: list[str] | None = None,
    num_shots: int = OFFICIAL_NUM_SHOTS,
    max_items: int | None = None,
    batch_size: int = 8,
    max_length: int = MAX_PROMPT_TOKENS,
) -> dict:
    """MMLU accuracy of a causal LM as SemEval-2025 Task 4 scores it (open-instruct, see the module docstring).

    accuracy = (questions answered right) / (questions), over all evaluated subjects (micro average).

    Args:
        subjects: subjects to evaluate; by default every subject of a local folder, or MMLU's 57 for a Hub name.
        num_shots: solved dev examples before each question (5, the official setting; 0 is lm-eval's default).
        max_items: evaluate N test questions per subject, drawn as open-instruct's `--n_instances` (all by default).
        max_length: a longer prompt drops shots until it fits (2048, the official setting).

    Returns a JSON-serialisable dict: `accuracy`, `per_subject` accuracies, `official` (whether this is the official
    score), `note` (why not, if not), `eval_time_s` and `settings` (with `subjects`, `missing_subjects` of the 57,
    `num_questions`, `macro_accuracy`, `num_prompts_with_fewer_shots`).
    """
    start = time.perf_counter()
    ensure_pad_token(tokenizer)
    if subjects is None:
        subjects = mmlu_subjects(data) if Path(data).expanduser().is_dir() else list(MMLU_SUBJECTS)
    if not subjects:
        raise ValueError(f"No MMLU subjects found in {data}: it needs <subject>_test.csv files (or test/ and dev/).")
    if num_shots < 0:
        raise ValueError(f"num_shots must be 0 or more solved examples, got {num_shots}.")
    letters = torch.tensor(letter_token_ids(tokenizer))
    device = next(model.parameters()).device
    per_subject, correct, subsampled, fewer_shots = {}, [], False, 0
    with eval_mode(model):
        for subject in subjects:
            shots = load_mmlu(data, subject, "dev")[:num_shots] if num_shots else []
            all_rows = load_mmlu(data, subject, "test")
            rows = sample_items(all_rows, max_items)
            subsampled |= len(rows) < len(all_rows)
            prompts = []
            for row in rows:
                text, used = fit_prompt(tokenizer, subject, row, shots, max_length)
                fewer_shots += used < len(shots)
                prompts.append(tokenizer(text, add_special_tokens=True)["input_ids"][-max_length:])
            logits = []
            for start_index in range(0, len(prompts), batch_size):
                batch = left_padded_prompts(prompts[start_index : start_index + batch_size], tokenizer.pad_token_id)
                mask = batch["attention_mask"].to(device)
                out = model(input_ids=batch["input_ids"].to(device), attention_mask=mask,
                            position_ids=(mask.cumsum(-1) - 1).clamp(min=0), logits_to_keep=1)
                logits.append(out.logits[:, -1, letters.to(device)].float().cpu())
            right = (torch.cat(logits).argmax(-1) == torch.tensor([r["answer"] for r in rows])).tolist()
            per_subject[subject] = float(np.mean(right))
            correct += right
    official, note = official_status(subjects, num_shots, subsampled)
    return {
        "accuracy": float(np.mean(correct)),
        "per_subject": per_subject,
        "official": official,
        "note": note,
        "eval_time_s": round(time.perf_counter() - start, 3),
        "settings": {"data": str(data), "subjects": list(subjects),
                     "missing_subjects": [s for s in MMLU_SUBJECTS if s not in subjects], "num_shots": num_shots,
                     "max_items": max_items, "max_length": max_length, "num_questions": len(correct),
                     "macro_accuracy": float(np.mean(list(per_subject.values()))),
                     "num_prompts_with_fewer_shots": fewer_shots},
    }
