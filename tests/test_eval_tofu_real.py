"""TOFU metrics on real TOFU data with a real pretrained model (SmolLM2-135M-Instruct), on a small sample."""

import json
import math
from math import comb

import pytest
from conftest import shared_data

from hf_unlearn.eval import evaluate_tofu
from hf_unlearn.eval.tofu import compare_with_reference, resolve_holdout_split


ITEMS = 8


@pytest.mark.slow
def test_tofu_metrics_on_real_data_with_smollm2():
    from hf_unlearn.benchmarks.models import load_smollm2

    data = shared_data("tofu")
    assert resolve_holdout_split(data, "forget10", None) is None  # the classic TOFU files have no holdout split
    model, tokenizer = load_smollm2()
    # TOFU's retain90 plays the non-members: SmolLM2 never saw any of TOFU, so the AUCs only need to be valid
    result = evaluate_tofu(model, tokenizer, data, holdout_split="retain90", max_items=ITEMS, batch_size=8,
                           max_new_tokens=32, progress=False)

    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert result["settings"]["num_items"] == {"forget": ITEMS, "retain": ITEMS, "real_authors": ITEMS, "world_facts": ITEMS, "holdout": ITEMS}
    for name in ("forget", "retain", "real_authors", "world_facts"):
        assert 0 < result[f"{name}_prob"] < 1
        assert 0 <= result[f"{name}_rougeL_recall"] <= 1
        assert 0 <= result[f"{name}_truth_ratio"] <= 1
        assert all(0 < tr < math.inf for tr in result["per_item"][f"{name}_truth_ratio"])
        assert all(g.strip() for g in result["per_item"][f"{name}_generation"])  # the model answered
    assert 0 < result["model_utility"] <= 1
    # an instruction-tuned model knows some real-world facts (measured ROUGE-L recall 0.50 on 8 world facts)
    assert result["world_facts_rougeL_recall"] > 0.2
    assert all(0 <= result[f"mia_auc_{a}"] <= 1 for a in ("loss", "zlib", "min_k", "min_k_plus_plus"))
    assert result["forget_quality"] is None
    # Forget quality against a hand-made reference whose truth ratios all exceed the model's: with n = m = ITEMS and
    # the two samples fully separated, the exact two-sided KS test gives p = 2 / C(2n, n) (2 of the C(2n, n)
    # relabellings of the pooled sample separate it as fully), 2 / 12870 for n = 8.
    ours = result["per_item"]["forget_truth_ratio"]
    reference = {"per_item": {"forget_truth_ratio": [max(ours) + 1 + i for i in range(ITEMS)]},
                 "settings": {"splits": {"forget": "forget10_perturbed"}}}
    assert compare_with_reference(result, reference)["forget_quality"] == pytest.approx(2 / comb(2 * ITEMS, ITEMS), rel=1e-9)
    # and against a reference holding the same truth ratios in another order: identical samples, p = 1
    reference["per_item"]["forget_truth_ratio"] = ours[::-1]
    assert compare_with_reference(result, reference)["forget_quality"] == pytest.approx(1.0, rel=1e-12)
