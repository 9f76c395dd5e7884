"""MUSE metrics (Shi et al., 2024): VerbMem, KnowMem and PrivLeak, on the Hub data set (`muse-bench/MUSE-News`,
`muse-bench/MUSE-Books`) or a local folder in either of MUSE's layouts.

- VerbMem: ROUGE-L F1 between the greedy continuation of each `verbmem/forget` prompt and its true continuation
  (`gt`, cut to the same number of tokens as generated, `verbmem_max_new_tokens`).
- KnowMem: ROUGE-L F1 between the greedy answer and the true answer on `knowmem/forget_qa` (KnowMem-forget) and
  `knowmem/retain_qa` (KnowMem-retain). Prompts as in MUSE's release: the `*_qa_icl` examples as
  "Question: {q}\\nAnswer: {a}\\n\\n" (when present), then "Question: {q}\\nAnswer: "; the answer is cut at the first
  "\\n\\n", "\\nQuestion" or "Question:". ROUGE without stemming, as MUSE scores it.
- PrivLeak: membership AUCs of `privleak/forget` (members) against `privleak/holdout` texts (see
  `hf_unlearn.eval.mia`; every token after the first is scored by every attack, as MUSE's `metrics/privleak.py`
  does), then PrivLeak of the Min-K% (k = 0.4) AUC against the retain model's, in percent and in MUSE's
  orientation: 100 x ((1 - AUC_model) - (1 - AUC_retain)) / (1 - AUC_retain), 1 - AUC being MUSE's
  `forget_holdout_Min-40%` (holdout as members). 0 leaks as the retain model does; a model that leaks is
  negative, down to -100.

The other numbers are fractions in [0, 1] (MUSE's tables show them times 100); PrivLeak is in percent, as MUSE
reports it (`settings["privleak_unit"]`).

Layouts: the Hub's (`<subset>/<split>-*.parquet`, what `snapshot_download` gives) and the MUSE GitHub
repository's (`data/<corpus>/<subset>/<split>.json`: JSON lists of `{prompt, gt}`, `{question, answer}` or, for
`privleak`, plain strings). The two name the KnowMem retain split differently: `retain_qa` / `retain_qa_icl` on the
Hub, `retain2_qa` / `retain2_qa_icl` on GitHub (jaechan-repo/muse_bench `knowmem/scripts/get_utility.py`); either
name is read (`RETAIN_QA_ALIASES`). `check_muse_data` checks a data set before any model is loaded.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..compatibility import context_length, fit_max_length
from ..data.formatting import ensure_pad_token
from ..modeling import eval_mode, model_description
from .distributed import map_sharded, process_layout
from .generation import generate_from_ids
from .mia import ATTACKS, MIN_K_FRACTION, PRIVLEAK_UNIT, attack_scores, mia_aucs, privleak
from .rouge import rouge_l_f1_unstemmed
from .scoring import score_texts


MUSE_HUB_NAME = "muse-bench/MUSE-News"
MUSE_MAX_LENGTH = 2048  # most tokens of a prompt + generation or a PrivLeak text, at most the model's context
COLUMNS = {"verbmem": ("prompt", "gt"), "knowmem": ("question", "answer"), "privleak": ("text",)}
KNOWMEM_STOP = ("\n\n", "\nQuestion", "Question:")
PRIVLEAK_ATTACK = "min_k"


# The KnowMem retain split has two names: the Hub's (`muse-bench/MUSE-News` `knowmem/retain_qa`) and MUSE's GitHub
# repository's (jaechan-repo/muse_bench `data/<corpus>/knowmem/retain2_qa.json`); likewise its in-context examples.
RETAIN_QA_ALIASES = {"retain_qa": ("retain_qa", "retain2_qa"), "retain_qa_icl": ("retain_qa_icl", "retain2_qa_icl")}
REQUIRED_SPLITS = (("verbmem", "forget"), ("knowmem", "forget_qa"), ("knowmem", "retain_qa"), ("privleak", "forget"),
                   ("privleak", "holdout"))
OPTIONAL_SPLITS = (("knowmem", "forget_qa_icl"), ("knowmem", "retain_qa_icl"))
LAYOUTS = ("A local MUSE folder holds <subset>/<split>.json (MUSE's GitHub layout, jaechan-repo/muse_bench "
           "data/<corpus>/, retain QA in knowmem/retain2_qa.json) or <subset>/<split>-*.parquet (the Hub's layout, "
           "muse-bench/MUSE-News, retain QA in knowmem/retain_qa-*.parquet).")


def split_names(subset: str, split: str) -> tuple[str, ...]:
    """The names `subset/split` may have: both of `RETAIN_QA_ALIASES` for the KnowMem retain splits, else `split`."""
    if subset == "knowmem":
        for names in RETAIN_QA_ALIASES.values():
            if split in names:
                return names
    return (split,)


def find_muse_split(name_or_path: str | os.PathLike, subset: str, split: str) -> str | None:
    """The name under which `subset/split` exists in a local folder or Hub data set (`split` or its alias), or None."""
    names = split_names(subset, split)
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        found = [name for name in names if _local_files(folder / subset, name)]
    else:
        available = _hub_split_names(str(name_or_path), subset)
        found = [name for name in names if name in available]
    if len(found) > 1:
        raise ValueError(f"{name_or_path} has both {subset}/{found[0]} and {subset}/{found[1]}, two names of one MUSE "
                         "split: keep one.")
    return found[0] if found else None


def check_muse_data(name_or_path: str | os.PathLike) -> dict[tuple[str, str], str | None]:
    """Check that a MUSE data set has every split `evaluate_muse` reads, without reading their rows (run it before
    loading a model), and return the name each has there: `{(subset, split): name}`, e.g.
    `("knowmem", "retain_qa"): "retain2_qa"` in MUSE's GitHub layout; None for an absent `*_qa_icl` split."""
    names = {key: find_muse_split(name_or_path, *key) for key in REQUIRED_SPLITS + OPTIONAL_SPLITS}
    missing = [f"{subset}/{' or '.join(split_names(subset, split))}" for subset, split in REQUIRED_SPLITS
               if names[subset, split] is None]
    if missing:
        raise ValueError(f"{name_or_path} is not a MUSE data set: it lacks {', '.join(missing)}. {LAYOUTS}")
    return names


def load_muse_split(name_or_path: str | os.PathLike, subset: str, split: str, required: bool = True) -> list[dict] | None:
    """Rows of one MUSE split (`subset` in verbmem / knowmem / privleak) from a local folder or the Hub; the KnowMem
    retain splits are found under either of their names (`RETAIN_QA_ALIASES`).

    With `required=False` a split that does not exist gives None (the optional `*_qa_icl` splits).
    """
    columns = COLUMNS[subset]
    name = find_muse_split(name_or_path, subset, split)
    if name is None:
        if not required:
            return None
        raise ValueError(f"No MUSE split {subset}/{' or '.join(split_names(subset, split))} in {name_or_path}. {LAYOUTS}")
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        rows = _read_local(folder / subset, name)
        source = f"{folder / subset}/{name}"
    else:
        from datasets import load_dataset

        rows = load_dataset(str(name_or_path), subset, split=name).to_list()
        source = f"{name_or_path} ({subset}/{name})"
    rows = [{"text": r} if isinstance(r, str) else r for r in rows]
    missing = [c for c in columns if any(c not in r for r in rows)]
    if not rows or missing:
        raise ValueError(f"{source} is not a MUSE {subset} split: it needs non-empty rows with columns {list(columns)}.")
    return rows


def _local_files(folder: Path, split: str) -> list[Path]:
    """The split's `<split>.json` (GitHub layout), else its `<split>-*.parquet` shards (Hub layout)."""
    json_file = folder / f"{split}.json"
    return [json_file] if json_file.is_file() else sorted(folder.glob(f"{split}-*.parquet"))


@lru_cache(maxsize=16)
def _hub_split_names(name: str, subset: str) -> tuple[str, ...]:
    from datasets import get_dataset_split_names

    return tuple(get_dataset_split_names(name, subset))


def _read_local(folder: Path, split: str) -> list | None:
    files = _local_files(folder, split)
    if not files:
        return None
    if files[0].suffix == ".json":
        text = files[0].read_text()
        try:
            return json.loads(text)
        except json.JSONDecodeError:  # JSON lines
            return [json.loads(line) for line in text.splitlines() if line.strip()]
    from datasets import Dataset

    return Dataset.from_parquet([str(p) for p in files]).to_list()


def evaluate_muse(
    model,
    tokenizer,
    data: str | os.PathLike = MUSE_HUB_NAME,
    reference: dict | str | os.PathLike | None = None,
    batch_size: int = 8,
    verbmem_max_new_tokens: int = 128,
    knowmem_max_new_tokens: int = 32,
    max_length: int = MUSE_MAX_LENGTH,
    progress: bool = True,
    accelerator=None,
    max_items: int | None = None,
) -> dict:
    """VerbMem, KnowMem (forget and retain) and membership AUCs on MUSE-format data; PrivLeak when `reference` (the
    retain model's `evaluate_muse` result, or its saved JSON) is given.

    Prompts longer than `max_length` minus the generation length keep their last tokens; PrivLeak texts are cut
    to their first `max_length` tokens. A `max_length` past the model's context (`max_position_embeddings` or
    equivalent) is clipped to it, with a warning. Returns a JSON-serialisable dict: `verbmem_f`, `knowmem_f`,
    `knowmem_r`, `mia_auc_<attack>`, `privleak`, plus `per_item` and `settings`.
    """
    from .report import read_evaluation

    start = time.perf_counter()
    splits = check_muse_data(data)  # every split present (either layout) before any generation
    ensure_pad_token(tokenizer)
    max_length = fit_max_length(model, max_length, default=MUSE_MAX_LENGTH)
    for name, new_tokens in (("verbmem_max_new_tokens", verbmem_max_new_tokens),
                             ("knowmem_max_new_tokens", knowmem_max_new_tokens)):
        if new_tokens >= max_length:
            clipped = " (the model's context)" if max_length == context_length(model) else ""
            raise ValueError(
                f"max_length leaves no room for the prompt: {name}={new_tokens} fills max_length={max_length}"
                f"{clipped}; lower {name} below {max_length}" + ("" if clipped else " or raise max_length") + "."
            )
    reference_result = read_evaluation(reference) if reference is not None else None
    if reference_result is not None and reference_result.get(f"mia_auc_{PRIVLEAK_ATTACK}") is None:
        raise ValueError(f"The reference evaluation has no `mia_auc_{PRIVLEAK_ATTACK}`: pass the retain model's evaluate_muse result.")

    def first(rows):
        return rows if rows is None or max_items is None else rows[:max_items]

    verbmem = first(load_muse_split(data, "verbmem", splits["verbmem", "forget"]))
    knowmem = {name: first(load_muse_split(data, "knowmem", splits["knowmem", f"{name}_qa"])) for name in ("forget", "retain")}
    icl = {name: load_muse_split(data, "knowmem", icl_split) if (icl_split := splits["knowmem", f"{name}_qa_icl"]) else None
           for name in ("forget", "retain")}
    privleak_sets = {name: first(load_muse_split(data, "privleak", splits["privleak", name])) for name in ("forget", "holdout")}

    with eval_mode(model):
        # VerbMem: continuations of the forget prompts against the true continuations cut to the same length.
        verbmem_prompts = [_prompt_ids(tokenizer, r["prompt"], max_length - verbmem_max_new_tokens) for r in verbmem]
        verbmem_outputs = _generate(model, tokenizer, verbmem_prompts, verbmem_max_new_tokens, batch_size, accelerator, progress, "VerbMem")
        references = [_first_tokens(tokenizer, r["gt"], verbmem_max_new_tokens) for r in verbmem]
        verbmem_f1 = rouge_l_f1_unstemmed(verbmem_outputs, references)

        knowmem_results = {}
        for name, rows in knowmem.items():
            prefix = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in icl[name] or [])
            prompts = [
                _prompt_ids(tokenizer, prefix + f"Question: {r['question']}\nAnswer: ", max_length - knowmem_max_new_tokens)
                for r in rows
            ]
            outputs = _generate(model, tokenizer, prompts, knowmem_max_new_tokens, batch_size, accelerator, progress, f"KnowMem {name}")
            outputs = [_cut_at_stop_words(o) for o in outputs]
            knowmem_results[name] = (outputs, rouge_l_f1_unstemmed(outputs, [r["answer"] for r in rows]))

        texts = {name: [r["text"] for r in rows] for name, rows in privleak_sets.items()}
        all_texts = texts["forget"] + texts["holdout"]
        scores = score_texts(model, tokenizer, all_texts, batch_size, max_length, accelerator, progress, "PrivLeak scoring")
    attack = [attack_scores(s["logprobs"], s["zscores"], text, ends_with_eos=False) for s, text in zip(scores, all_texts)]
    members, nonmembers = attack[: len(texts["forget"])], attack[len(texts["forget"]) :]

    result = {
        "verbmem_f": float(np.mean(verbmem_f1)),
        "knowmem_f": float(np.mean(knowmem_results["forget"][1])),
        "knowmem_r": float(np.mean(knowmem_results["retain"][1])),
        **{f"mia_auc_{a}": auc for a, auc in mia_aucs(members, nonmembers).items()},
        "privleak": None,
    }
    if reference_result is not None:
        key = f"mia_auc_{PRIVLEAK_ATTACK}"
        result["privleak"] = privleak(result[key], reference_result[key])
    per_item = {
        "verbmem_rougeL_f1": verbmem_f1,
        "verbmem_generation": verbmem_outputs,
        **{f"knowmem_{name}_rougeL_f1": f1 for name, (_, f1) in knowmem_results.items()},
        **{f"knowmem_{name}_generation": out for name, (out, _) in knowmem_results.items()},
        **{f"mia_forget_{a}": [m[a] for m in members] for a in ATTACKS},
        **{f"mia_holdout_{a}": [n[a] for n in nonmembers] for a in ATTACKS},
    }
    _, num_processes = process_layout(accelerator)
    result["eval_time_s"] = round(time.perf_counter() - start, 3)
    result["per_item"] = per_item
    result["settings"] = {
        "benchmark": "muse",
        "data": str(data),
        "num_items": {"verbmem": len(verbmem), **{f"knowmem_{k}": len(v) for k, v in knowmem.items()},
                      **{f"privleak_{k}": len(v) for k, v in privleak_sets.items()}},
        "knowmem_icl_examples": {name: len(rows or []) for name, rows in icl.items()},
        "knowmem_splits": {name: [splits["knowmem", f"{name}_qa"], splits["knowmem", f"{name}_qa_icl"]] for name in ("forget", "retain")},
        **model_description(model, tokenizer),
        "batch_size": batch_size,
        "verbmem_max_new_tokens": verbmem_max_new_tokens,
        "knowmem_max_new_tokens": knowmem_max_new_tokens,
        "max_length": max_length,
        "max_items": max_items,
        "num_processes": num_processes,
        "min_k_fraction": MIN_K_FRACTION,
        "privleak_attack": PRIVLEAK_ATTACK,
        "privleak_unit": PRIVLEAK_UNIT,
        "rouge": "ROUGE-L F1, no stemming",
        "reference": None if reference is None else (str(reference) if not isinstance(reference, dict) else "dict"),
    }
    return result


def _prompt_ids(tokenizer, prompt: str, budget: int) -> list[int]:
    if budget < 1:
        raise ValueError("max_length leaves no room for the prompt: raise max_length above the generation length.")
    return tokenizer(prompt, add_special_tokens=True)["input_ids"][-budget:]


def _first_tokens(tokenizer, text: str, count: int) -> str:
    """The text cut to its first `count` tokens (special tokens counted, as MUSE's release does)."""
    return tokenizer.decode(tokenizer(text, add_special_tokens=True)["input_ids"][:count], skip_special_tokens=True)


def _cut_at_stop_words(text: str) -> str:
    for word in KNOWMEM_STOP:
        text = text.split(word)[0]
    return text


def _generate(model, tokenizer, prompt_ids, max_new_tokens, batch_size, accelerator, progress, desc) -> list[str]:
    return map_sharded(
        prompt_ids,
        [len(p) for p in prompt_ids],
        batch_size,
        lambda batch: generate_from_ids(model, tokenizer, batch, max_new_tokens=max_new_tokens, batch_size=len(batch)),
        accelerator,
        progress=progress,
        desc=desc,
    )
