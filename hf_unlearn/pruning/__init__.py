"""Pruning against harmful fine-tuning: Antidote (its benchmark is `hf_unlearn.benchmarks.harmful_finetuning`)."""

from .antidote import (
    AntidoteConfig,
    AntidoteSummary,
    antidote_prune,
    find_prunable_linears,
    magnitude_scores,
    random_scores,
    squared_feature_norms,
    top_fraction_mask,
    wanda_scores,
)


__all__ = [
    "AntidoteConfig",
    "AntidoteSummary",
    "antidote_prune",
    "find_prunable_linears",
    "magnitude_scores",
    "random_scores",
    "squared_feature_norms",
    "top_fraction_mask",
    "wanda_scores",
]
