"""Pruning against harmful fine-tuning: Antidote and its harmful fine-tuning benchmark."""

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
from .harmful_finetuning import (
    HarmfulFinetuningBenchmark,
    HarmfulFinetuningConfig,
    antidote_table,
    build_harmful_finetuning_benchmark,
    load_advbench,
)

__all__ = [
    "AntidoteConfig",
    "AntidoteSummary",
    "HarmfulFinetuningBenchmark",
    "HarmfulFinetuningConfig",
    "antidote_prune",
    "antidote_table",
    "build_harmful_finetuning_benchmark",
    "find_prunable_linears",
    "load_advbench",
    "magnitude_scores",
    "random_scores",
    "squared_feature_norms",
    "top_fraction_mask",
    "wanda_scores",
]
