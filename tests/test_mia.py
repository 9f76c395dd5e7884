"""Membership inference and PrivLeak against the references' own definitions, on hand-made numbers (no model).

PrivLeak references: MUSE (swj0419/muse_bench `eval.py`: `(auc[privleak_auc_key] - AUC_RETRAIN[...]) /
AUC_RETRAIN[...] * 100` with `privleak_auc_key = 'forget_holdout_Min-40%'`, an AUC that labels the holdout set as
members, `metrics/privleak.py`) and open-unlearning (locuslab/open-unlearning `src/evals/metrics/privacy.py`,
`privleak`: `(1 - score) - (1 - ref)`, divided by `1 - ref`, x 100, from forget-as-member AUCs). Min-K% tokens:
open-unlearning `src/evals/metrics/utils.py` (`tokenwise_logprobs`: the last labelled token, the EOS, is dropped).
Expected values are worked out here from those definitions, never through the library's expressions.
"""

import math
import zlib

import pytest

from hf_unlearn.eval.mia import attack_scores, mia_auc, privleak
from hf_unlearn.eval.tofu import compare_with_reference


# Min-K% scores (mean of the lowest 40% token log-probs, higher = more likely a member) of a few forget (member)
# and holdout (non-member) examples, for the evaluated model and for the retain model.
MODEL_FORGET, MODEL_HOLDOUT = [0.9, 0.7, 0.4], [0.8, 0.3]
RETAIN_FORGET, RETAIN_HOLDOUT = [0.5, 0.2, 0.35], [0.4, 0.3]


def test_auc_is_the_hand_counted_share_of_forget_holdout_pairs():
    # model: 0.9 > 0.8, 0.9 > 0.3, 0.7 < 0.8, 0.7 > 0.3, 0.4 < 0.8, 0.4 > 0.3 -> 4 of 6 pairs
    assert mia_auc(MODEL_FORGET, MODEL_HOLDOUT) == pytest.approx(4 / 6, abs=1e-15)
    # retain: 0.5 > 0.4, 0.5 > 0.3, 0.2 < both, 0.35 < 0.4, 0.35 > 0.3 -> 3 of 6 pairs
    assert mia_auc(RETAIN_FORGET, RETAIN_HOLDOUT) == pytest.approx(3 / 6, abs=1e-15)


def test_privleak_is_muses_number_from_hand_counted_aucs():
    # MUSE's AUC labels the holdout set as members and scores -Min-K% "perplexity" = the Min-K% score above: the
    # share of pairs where the holdout example outscores the forget one. Model: 2 of 6; retain: 3 of 6.
    muse_auc_model, muse_auc_retain = 2 / 6, 3 / 6
    muse_privleak = (muse_auc_model - muse_auc_retain) / muse_auc_retain * 100  # MUSE eval.py
    assert muse_privleak == pytest.approx(-100 / 3)
    ours = privleak(mia_auc(MODEL_FORGET, MODEL_HOLDOUT), mia_auc(RETAIN_FORGET, RETAIN_HOLDOUT))
    assert ours == pytest.approx(muse_privleak, abs=1e-12)


def test_privleak_reference_values():
    # open-unlearning privacy.py on forget-as-member AUCs 0.9 (model) and 0.6 (retain): score = 1 - 0.9 = 0.1,
    # ref = 1 - 0.6 = 0.4, (0.1 - 0.4) / 0.4 * 100 = -75
    assert privleak(0.9, 0.6) == pytest.approx(-75.0, abs=1e-12)
    assert privleak(0.6, 0.6) == 0.0  # leaks as much as the retain model
    assert privleak(0.3, 0.6) == pytest.approx((0.7 - 0.4) / 0.4 * 100, abs=1e-12)  # +75: leaks less (over-unlearned)
    assert privleak(0.5, 0.5) == 0.0


def test_a_fully_leaking_model_is_bounded_at_minus_100():
    # AUC_model = 1 (every forget example outscores every holdout one): (0 - (1 - r)) / (1 - r) * 100 = -100
    for auc_retain in (0.0, 0.25, 0.5, 0.6, 0.99):
        assert privleak(1.0, auc_retain) == pytest.approx(-100.0, abs=1e-9)
        assert all(privleak(a / 20, auc_retain) >= -100 - 1e-9 for a in range(21))
    assert privleak(mia_auc([5.0, 6.0], [1.0, 2.0]), 0.5) == -100.0


def test_privleak_rejects_what_is_not_an_auc_pair():
    with pytest.raises(ValueError, match="1 - AUC_retain"):
        privleak(0.9, 1.0)  # MUSE's denominator would be 0
    with pytest.raises(ValueError, match=r"auc_model must be an AUC in \[0, 1\]"):
        privleak(1.2, 0.5)
    with pytest.raises(ValueError, match=r"auc_retain must be an AUC in \[0, 1\]"):
        privleak(0.5, -0.1)


def test_tofu_reference_comparison_reports_privleak_in_percent():
    result = {"mia_auc_min_k": 0.9, "per_item": {"forget_truth_ratio": [0.5, 0.7]}}
    reference = {"mia_auc_min_k": 0.6, "per_item": {"forget_truth_ratio": [0.5, 0.7]}}
    assert compare_with_reference(result, reference)["privleak"] == pytest.approx(-75.0, abs=1e-12)


# An answer's scored tokens as `score_answers` gives them: four answer tokens, then the EOS appended to every answer
# (here the least likely token, so leaving it out changes Min-K%).
ANSWER_LOGPROBS = [-0.5, -1.0, -0.2, -0.3, -9.0]
ANSWER_ZSCORES = [0.4, -1.5, 1.0, 0.2, -6.0]
ANSWER_TEXT = "Paris is the capital"


def test_min_k_leaves_out_the_answers_eos_as_open_unlearning_does():
    # open-unlearning: labelled tokens minus the last (EOS) -> 4 tokens; max(1, int(4 * 0.4)) = 1 lowest token
    scores = attack_scores(ANSWER_LOGPROBS, ANSWER_ZSCORES, ANSWER_TEXT)
    assert scores["min_k"] == -1.0  # (with the EOS: int(5 * 0.4) = 2 lowest, (-9.0 - 1.0) / 2 = -5.0)
    assert scores["min_k_plus_plus"] == -1.5  # (with the EOS: (-6.0 - 1.5) / 2 = -3.75)
    # LOSS and zlib average every labelled token, the EOS included (open-unlearning `evaluate_probability`)
    mean_logprob = (-0.5 - 1.0 - 0.2 - 0.3 - 9.0) / 5
    assert scores["loss"] == pytest.approx(mean_logprob, abs=1e-15)
    assert scores["zlib"] == pytest.approx(mean_logprob / len(zlib.compress(ANSWER_TEXT.encode("utf-8"))), abs=1e-15)


def test_texts_scored_without_an_eos_keep_every_token():
    # MUSE's metrics/privleak.py: every token after the first; the lowest int(5 * 0.4) = 2 of 5
    scores = attack_scores(ANSWER_LOGPROBS, ANSWER_ZSCORES, ANSWER_TEXT, ends_with_eos=False)
    assert scores["min_k"] == -5.0 and scores["min_k_plus_plus"] == -3.75


def test_min_k_needs_a_token_besides_the_eos():
    with pytest.raises(ValueError, match="besides the EOS"):
        attack_scores([-0.1], [0.3], "")
    with pytest.raises(ValueError, match="z-scores"):
        attack_scores([-0.1, -0.2], [0.3], "ab")
    assert math.isfinite(attack_scores([-0.1], [0.3], "a", ends_with_eos=False)["min_k"])


def test_report_tables_label_privleak_as_percent():
    from hf_unlearn.eval.report import markdown_table

    assert "| privleak (%) | -75.0000 |" in markdown_table({"model": {"mia_auc_min_k": 0.9, "privleak": -75.0}})
