"""Evaluation: TOFU metrics (forget quality, model utility), membership-inference attacks, MUSE metrics, reports."""

from .generation import generate_answers, generate_from_ids
from .mia import ATTACKS, PRIVLEAK_UNIT, attack_scores, mia_auc, min_k_mean, privleak
from .mmlu import evaluate_mmlu, load_mmlu
from .muse import evaluate_muse, load_muse_split
from .report import read_evaluation, write_report
from .rouge import rouge_l, rouge_l_f1, rouge_l_recall
from .scoring import answer_probability, score_answers, score_examples, score_texts, token_logprob_stats
from .semeval import evaluate_semeval, load_semeval_mia, load_semeval_split, mia_score, task_aggregate
from .tofu import (
    TOFU_MAX_NEW_TOKENS,
    UTILITY_METRICS,
    evaluate_tofu,
    forget_quality,
    forget_truth_ratio_statistic,
    harmonic_mean,
    model_utility,
    normalized_probability,
    retain_truth_ratio_statistic,
    truth_ratio,
)


__all__ = [
    "ATTACKS",
    "PRIVLEAK_UNIT",
    "TOFU_MAX_NEW_TOKENS",
    "UTILITY_METRICS",
    "answer_probability",
    "attack_scores",
    "model_utility",
    "evaluate_mmlu",
    "evaluate_semeval",
    "load_mmlu",
    "load_semeval_mia",
    "load_semeval_split",
    "mia_score",
    "task_aggregate",
    "evaluate_muse",
    "evaluate_tofu",
    "forget_quality",
    "forget_truth_ratio_statistic",
    "generate_answers",
    "generate_from_ids",
    "harmonic_mean",
    "load_muse_split",
    "mia_auc",
    "min_k_mean",
    "normalized_probability",
    "privleak",
    "read_evaluation",
    "retain_truth_ratio_statistic",
    "rouge_l",
    "rouge_l_f1",
    "rouge_l_recall",
    "score_answers",
    "score_examples",
    "score_texts",
    "token_logprob_stats",
    "truth_ratio",
    "write_report",
]
