"""TOFU metrics (Maini et al., 2024): answer probability, ROUGE-L recall, truth ratio, forget quality, model
utility; and membership-inference AUCs (forget vs holdout) with PrivLeak.

Definitions, per evaluation set (`{forget}_perturbed`, `retain_perturbed`, `real_authors_perturbed`,
`world_facts_perturbed`):
- probability: exp(-mean token NLL of the answer) (answer tokens and EOS, given the question; `answer_probability`),
  averaged over items; for real authors and world facts it is normalised per item,
  P(true) / (P(true) + sum_j P(perturbed_j)), with length-normalised probabilities as in TOFU's release.
- ROUGE-L recall (stemmed) of the greedy answer against the true answer; answers end at EOS or after
  `max_new_tokens` = 200 tokens, open-unlearning's generation length.
- truth ratio per item: TR = (geometric mean_j P(perturbed_j)) / P(paraphrased), each P length-normalised, i.e.
  TR = exp(NLL_para - mean_j NLL_pert_j). As in TOFU's release, the paraphrased and perturbed answers are scored
  given the item's `question` (not its `paraphrased_question`); sets without `paraphrased_answer` (real authors,
  world facts) use the answer itself as the paraphrase. Statistic: mean(min(TR, 1/TR)) on the forget set,
  mean(max(0, 1 - TR)) on the others.
- forget quality: p-value of the two-sample Kolmogorov-Smirnov test between the forget-set truth ratios of the
  model and of the retain model (the `reference` evaluation).
- model utility: harmonic mean of the 9 numbers (probability, ROUGE-L, truth-ratio statistic) of the retain,
  real-authors and world-facts sets.

Reference: locuslab/open-unlearning, `src/evals/metrics/memorization.py` (probability, probability_w_options,
rouge, truth_ratio), `src/evals/metrics/utils.py` (evaluate_probability, eval_text_similarity, get_forget_quality),
`src/evals/metrics/utility.py` (hm_aggregate), `configs/eval/tofu_metrics/*.yaml` (which answers and aggregators
each metric uses) and `configs/generation/default.yaml` (greedy, max_new_tokens: 200).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import ks_2samp

from ..compatibility import context_length, fit_max_length
from ..data.formatting import encode_prompt, ensure_pad_token, example_token_limit
from ..data.tofu import is_local_dataset, load_tofu_split
from ..modeling import eval_mode, model_description
from .distributed import map_sharded, process_layout
from .generation import generate_answers
from .mia import ATTACKS, MIN_K_FRACTION, PRIVLEAK_UNIT, attack_scores, mia_aucs, privleak
from .report import read_evaluation
from .rouge import rouge_l_recall
from .scoring import answer_probability, mean_nll, score_answers


UTILITY_SETS = {"real_authors": "real_authors_perturbed", "world_facts": "world_facts_perturbed"}
UTILITY_METRICS = tuple(f"{name}_{metric}" for name in ("retain", *UTILITY_SETS) for metric in ("prob", "rougeL_recall", "truth_ratio"))
# open-unlearning's generation length for every TOFU ROUGE (`configs/generation/default.yaml`: max_new_tokens: 200);
# greedy answers stop at EOS, so the long budget costs only what the answers that need it use.
TOFU_MAX_NEW_TOKENS = 200
TOFU_MAX_LENGTH = 256  # most tokens of a scored question + answer, at most the model's context
PRIVLEAK_ATTACK = "min_k"  # MUSE computes PrivLeak from the Min-K% (k = 0.4) attack


# ----------------------------------------------------------------------------------------------------------------
# Formulas (pure functions of per-item numbers)


def truth_ratio(paraphrased_nll, perturbed_nll) -> torch.Tensor:
    """Per-item truth ratio from length-normalised NLLs: exp(NLL_para - mean_j NLL_pert_j)
    = (geometric mean_j P(perturbed_j)) / P(paraphrased). `perturbed_nll` is (items, answers); NaN pads ragged rows."""
    paraphrased = torch.as_tensor(paraphrased_nll, dtype=torch.float64)
    perturbed = torch.as_tensor(perturbed_nll, dtype=torch.float64)
    return torch.exp(paraphrased - perturbed.nanmean(-1))


def forget_truth_ratio_statistic(truth_ratios) -> float:
    """Forget-set statistic: mean(min(TR, 1/TR)) (1 when true and false answers are equally likely)."""
    tr = torch.as_tensor(truth_ratios, dtype=torch.float64)
    return float(torch.minimum(tr, 1 / tr).mean())


def retain_truth_ratio_statistic(truth_ratios) -> float:
    """Retain-type statistic: mean(max(0, 1 - TR)) (1 when the false answers are far less likely)."""
    tr = torch.as_tensor(truth_ratios, dtype=torch.float64)
    return float((1 - tr).clamp(min=0).mean())


def forget_quality(truth_ratios, reference_truth_ratios) -> float:
    """Two-sample Kolmogorov-Smirnov p-value between the model's and the retain model's forget-set truth ratios."""
    return float(ks_2samp(np.asarray(truth_ratios, dtype=np.float64), np.asarray(reference_truth_ratios, dtype=np.float64)).pvalue)


def normalized_probability(true_nll, perturbed_nll) -> torch.Tensor:
    """Per-item P(true) / (P(true) + sum_j P(perturbed_j)), probabilities length-normalised (exp(-mean NLL));
    `perturbed_nll` is (items, answers), NaN pads ragged rows."""
    true_p = torch.exp(-torch.as_tensor(true_nll, dtype=torch.float64))
    false_p = torch.exp(-torch.as_tensor(perturbed_nll, dtype=torch.float64)).nansum(-1)
    return true_p / (true_p + false_p)


def harmonic_mean(values: Sequence[float]) -> float:
    """n / sum(1 / v); 0 when any value is 0 (TOFU's model utility aggregation, like scipy.stats.hmean)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0 or (array < 0).any() or not np.isfinite(array).all():
        raise ValueError(f"The harmonic mean needs finite non-negative values, got {list(values)}.")
    if (array == 0).any():
        return 0.0
    return float(array.size / (1 / array).sum())


def model_utility(metrics: dict) -> float:
    """TOFU's model utility: the harmonic mean of the 9 `UTILITY_METRICS` of `metrics` (retain, real-authors and
    world-facts probability, ROUGE-L recall and truth-ratio statistic); other keys are ignored.

    Reference: locuslab/open-unlearning `configs/eval/tofu_metrics/model_utility.yaml` (its 9 pre-computed
    metrics) and `src/evals/metrics/utility.py` (`hm_aggregate`: scipy.stats.hmean).
    """
    missing = [key for key in UTILITY_METRICS if metrics.get(key) is None]
    if missing:
        raise ValueError(f"Model utility needs all of {list(UTILITY_METRICS)}; missing {missing}.")
    return harmonic_mean([metrics[key] for key in UTILITY_METRICS])


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def evaluate_tofu(
    model,
    tokenizer,
    data: str | os.PathLike,
    forget_split: str = "forget10",
    retain_split: str = "retain_perturbed",
    holdout_split: str | None = None,
    reference: dict | str | os.PathLike | None = None,
    batch_size: int = 32,
    max_new_tokens: int = TOFU_MAX_NEW_TOKENS,
    max_length: int | None = TOFU_MAX_LENGTH,
    progress: bool = True,
    accelerator=None,
    max_items: int | None = None,
) -> dict:
    """Evaluate a causal LM on TOFU-schema data (a local folder or a Hub name such as `locuslab/TOFU`).

    Args:
        forget_split: forget set (`forget10` or `forget10_perturbed`; its `_perturbed` split is evaluated).
        retain_split: retain evaluation set with perturbed answers.
        holdout_split: non-members for the MIA AUCs; by default `holdout<NN>` matching the forget split when the data
            has it (the embedded benchmark and newer `locuslab/TOFU` do), else the MIA AUCs are left out.
        reference: the retain model's evaluation (a dict returned by this function, or the path of its saved JSON,
            or of a report from `write_report` holding a "retain" result) for forget quality and PrivLeak. Without it
            they are None; the forget-set truth ratios are returned either way, so the result can be a reference.
        max_new_tokens: most tokens of a greedy answer (ROUGE-L); it ends at EOS before that. Default 200, as
            open-unlearning (a shorter budget cuts long true answers and lowers ROUGE-L recall even for a model
            that reproduces them).
        max_length: most tokens of a scored question + answer (answers are cut to fit); clipped, with a warning, to
            the model's context (`max_position_embeddings` or equivalent); None: the model's context. A question whose
            prompt leaves no room for an answer is refused before anything runs.
        max_items: evaluate only the first `max_items` items of every set (quick checks).
        accelerator: an `Accelerator` (or `PartialState`) to split the work across processes; every process must
            call this function, and every process returns the same result.

    Returns a JSON-serialisable dict: flat headline numbers (`forget_quality`, `model_utility`, `forget_prob`,
    `forget_rougeL_recall`, `forget_truth_ratio`, the same for `retain`, `real_authors` and `world_facts`,
    `mia_auc_<attack>`, `privleak`, `holdout_prob`), `per_item` lists and the `settings` that produced them.
    """
    start = time.perf_counter()
    ensure_pad_token(tokenizer)
    reference_result = load_reference(reference) if reference is not None else None
    if max_length is None:
        max_length = example_token_limit(tokenizer, getattr(model, "config", None))
    else:
        max_length = fit_max_length(model, max_length, default=TOFU_MAX_LENGTH)
    forget_eval_split = perturbed_split(forget_split)
    if reference_result is not None:
        check_same_forget_split(reference_result, forget_eval_split)
    splits = {"forget": forget_eval_split, "retain": retain_split, **UTILITY_SETS}
    rows = {name: _first(load_tofu_split(data, split), max_items) for name, split in splits.items()}
    holdout_split = resolve_holdout_split(data, forget_split, holdout_split)
    holdout_rows = _first(load_tofu_split(data, holdout_split), max_items) if holdout_split else []
    check_prompts_fit(tokenizer, {name: (splits[name], items) for name, items in rows.items()}
                      | {"holdout": (holdout_split, holdout_rows)}, max_length, context_length(model))

    # One scoring pass over every distinct (question, answer) pair the metrics need.
    pairs: dict[tuple[str, str], int] = {}

    def pair(question: str, answer: str) -> int:
        return pairs.setdefault((question, answer), len(pairs))

    plan = {
        name: [
            {
                "true": pair(r["question"], r["answer"]),
                "paraphrased": pair(r["question"], r.get("paraphrased_answer") or r["answer"]),
                "perturbed": [pair(r["question"], p) for p in r["perturbed_answer"]],
            }
            for r in items
        ]
        for name, items in rows.items()
    }
    holdout_plan = [pair(r["question"], r["answer"]) for r in holdout_rows]
    with eval_mode(model):
        scores = score_answers(
            model,
            tokenizer,
            [q for q, _ in pairs],
            [a for _, a in pairs],
            batch_size=batch_size,
            max_length=max_length,
            accelerator=accelerator,
            progress=progress,
            desc="scoring answers",
        )
        questions = list(dict.fromkeys(r["question"] for items in rows.values() for r in items))
        answers = dict(zip(questions, generate_sharded(model, tokenizer, questions, max_new_tokens, batch_size, accelerator, progress)))
    nll = [mean_nll(s["logprobs"]) for s in scores]

    result: dict = {"forget_quality": None, "model_utility": None}
    per_item: dict[str, list] = {}
    for name, items in plan.items():
        true_nll = [nll[i["true"]] for i in items]
        paraphrased_nll = [nll[i["paraphrased"]] for i in items]
        perturbed_nll = _nan_padded([[nll[j] for j in i["perturbed"]] for i in items])
        truth_ratios = truth_ratio(paraphrased_nll, perturbed_nll)
        answer_probs = torch.tensor([answer_probability(scores[i["true"]]["logprobs"]) for i in items], dtype=torch.float64)
        generations = [answers[r["question"]] for r in rows[name]]
        recalls = rouge_l_recall(generations, [r["answer"] for r in rows[name]])
        if name in UTILITY_SETS:
            probs = normalized_probability(true_nll, perturbed_nll)
            per_item[f"{name}_normalized_prob"] = probs.tolist()
            tr_statistic = retain_truth_ratio_statistic(truth_ratios)
        else:
            probs = answer_probs
            tr_statistic = (forget_truth_ratio_statistic if name == "forget" else retain_truth_ratio_statistic)(truth_ratios)
        result[f"{name}_prob"] = float(probs.mean())
        result[f"{name}_rougeL_recall"] = float(np.mean(recalls))
        result[f"{name}_truth_ratio"] = tr_statistic
        per_item[f"{name}_answer_prob"] = answer_probs.tolist()
        per_item[f"{name}_truth_ratio"] = truth_ratios.tolist()
        per_item[f"{name}_rougeL_recall"] = recalls
        per_item[f"{name}_generation"] = generations
    result["model_utility"] = model_utility(result)

    if holdout_rows:
        member_texts = [r["answer"] for r in rows["forget"]]
        members = [attack_scores(scores[i["true"]]["logprobs"], scores[i["true"]]["zscores"], text) for i, text in zip(plan["forget"], member_texts)]
        nonmembers = [attack_scores(scores[j]["logprobs"], scores[j]["zscores"], r["answer"]) for j, r in zip(holdout_plan, holdout_rows)]
        result.update({f"mia_auc_{attack}": auc for attack, auc in mia_aucs(members, nonmembers).items()})
        result["holdout_prob"] = float(np.mean([answer_probability(scores[j]["logprobs"]) for j in holdout_plan]))
        for attack in ATTACKS:
            per_item[f"mia_forget_{attack}"] = [m[attack] for m in members]
            per_item[f"mia_holdout_{attack}"] = [n[attack] for n in nonmembers]
    if reference_result is not None:
        result.update(compare_with_reference(result | {"per_item": per_item}, reference_result, forget_eval_split))

    _, num_processes = process_layout(accelerator)
    result["eval_time_s"] = round(time.perf_counter() - start, 3)
    result["per_item"] = per_item
    result["settings"] = {
        "benchmark": "tofu",
        "data": str(data),
        "splits": splits,
        "holdout_split": holdout_split,
        "num_items": {name: len(items) for name, items in rows.items()} | {"holdout": len(holdout_rows)},
        **model_description(model, tokenizer),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "max_length": max_length,
        "max_items": max_items,
        "num_processes": num_processes,
        "min_k_fraction": MIN_K_FRACTION,
        "privleak_attack": PRIVLEAK_ATTACK,
        "privleak_unit": PRIVLEAK_UNIT,
        "reference": _describe_reference(reference),
        "truth_ratio": "geometric-mean P(perturbed) / P(paraphrased), length-normalised, both given `question`",
    }
    return result


def check_prompts_fit(tokenizer, sets: dict[str, tuple[str | None, list[dict]]], max_length: int,
                      context: int | None = None) -> None:
    """Refuse, before any scoring or generation, an item whose prompt (its question, formatted with the chat
    template, without the answer) leaves no room for an answer token within `max_length`: it would be scored and
    answered from positions past the model's context (answers from garbage, e.g. a ROUGE-L of 0 that looks
    forgotten). `sets` maps a set's name to (its split, its items); `context` is the model's, for the message."""
    lengths: dict[str, int] = {}
    for name, (split, items) in sets.items():
        for index, row in enumerate(items):
            question = row["question"]
            if question not in lengths:
                lengths[question] = len(encode_prompt(tokenizer, question))
            if lengths[question] >= max_length:
                at_context = context is not None and max_length >= context
                limit = f"the model's context of {max_length} tokens" if at_context else f"max_length={max_length}"
                fix = ("shorten that question or evaluate a model with a longer context" if at_context else
                       "raise max_length" + (f" (up to the model's context of {context} tokens)" if context else "")
                       + " or shorten that question")
                raise ValueError(
                    f"TOFU {name} item {index} (split {split!r}) has a prompt of {lengths[question]} tokens (its "
                    f"question formatted for the model, without the answer), which leaves no room for an answer "
                    f"within {limit}: {fix}."
                )


def compare_with_reference(result: dict, reference: dict, forget_eval_split: str | None = None) -> dict:
    """Forget quality and PrivLeak (in percent, see `hf_unlearn.eval.mia.privleak`) of `result` against the retain
    model's evaluation `reference`."""
    if forget_eval_split is not None:
        check_same_forget_split(reference, forget_eval_split)
    ours, theirs = result["per_item"]["forget_truth_ratio"], reference["per_item"]["forget_truth_ratio"]
    if len(ours) != len(theirs):
        raise ValueError(
            f"The reference evaluation has {len(theirs)} forget-set truth ratios, this one {len(ours)}: they were "
            "not computed on the same items (check the data and `max_items`)."
        )
    compared = {"forget_quality": forget_quality(ours, theirs)}
    key = f"mia_auc_{PRIVLEAK_ATTACK}"
    if result.get(key) is not None and reference.get(key) is not None:
        compared["privleak"] = privleak(result[key], reference[key])
    return compared


def perturbed_split(forget_split: str) -> str:
    """The split evaluated for `forget_split`: its `_perturbed` version, which holds the truth ratios' answers."""
    return forget_split if forget_split.endswith("_perturbed") else f"{forget_split}_perturbed"


def check_same_forget_split(reference: dict, forget_split: str) -> None:
    """Refuse a reference evaluation made on another forget split (`forget10` and `forget10_perturbed` are one)."""
    forget_eval_split = perturbed_split(forget_split)
    ref_split = reference.get("settings", {}).get("splits", {}).get("forget")
    if ref_split is not None and ref_split != forget_eval_split:
        raise ValueError(
            f"The reference evaluation is on forget split '{ref_split}', this one on '{forget_eval_split}'. "
            "Forget quality compares truth ratios on the same forget set: evaluate the retain model on it."
        )


def load_reference(reference: dict | str | os.PathLike) -> dict:
    """The retain model's TOFU evaluation: a result dict, a saved result JSON, or a `write_report` JSON (its
    single result, or the one labelled "retain")."""
    loaded = read_evaluation(reference, label="retain")
    if "forget_truth_ratio" not in loaded.get("per_item", {}):
        raise ValueError(
            f"{_describe_reference(reference)} is not a TOFU evaluation with per-item forget truth ratios "
            "(`per_item.forget_truth_ratio`). Evaluate the retain model with `evaluate_tofu` and pass that result or "
            "its saved JSON."
        )
    return loaded


def resolve_holdout_split(data, forget_split: str, holdout_split: str | None) -> str | None:
    """The explicit holdout split, else `holdout<NN>` for `forget<NN>` when the data has it, else None."""
    if holdout_split is not None:
        return holdout_split
    name = forget_split.removesuffix("_perturbed")
    if not name.startswith("forget"):
        return None
    candidate = "holdout" + name.removeprefix("forget")
    if is_local_dataset(data):
        folder = Path(data).expanduser()
        return candidate if any((folder / f"{candidate}{ext}").is_file() for ext in (".json", ".jsonl")) else None
    from datasets import get_dataset_config_names

    return candidate if candidate in get_dataset_config_names(str(data)) else None


def generate_sharded(model, tokenizer, questions: list[str], max_new_tokens: int, batch_size: int, accelerator=None, progress: bool = False) -> list[str]:
    """Greedy answers to `questions` (`generate_answers`), in prompt-length-sorted batches split across processes."""
    return map_sharded(
        questions,
        [len(encode_prompt(tokenizer, q)) for q in questions],
        batch_size,
        lambda batch: generate_answers(model, tokenizer, batch, max_new_tokens=max_new_tokens, batch_size=len(batch)),
        accelerator,
        progress=progress,
        desc="generating answers",
    )


def _first(dataset, max_items: int | None) -> list[dict]:
    rows = dataset.to_list()
    return rows if max_items is None else rows[:max_items]


def _nan_padded(rows: list[list[float]]) -> torch.Tensor:
    if any(len(r) == 0 for r in rows):
        raise ValueError("Every item needs at least one perturbed answer for the truth ratio; one has none.")
    width = max(len(r) for r in rows)
    return torch.tensor([r + [float("nan")] * (width - len(r)) for r in rows], dtype=torch.float64)


def _describe_reference(reference) -> str | None:
    if reference is None:
        return None
    if isinstance(reference, dict):
        return f"result of {reference.get('settings', {}).get('model', 'an evaluation')}"
    return str(reference)
