"""Every evaluation formula on hand-computed numbers (no model)."""

import itertools
import math
import random

import pytest
import torch

from hf_unlearn.eval.mia import attack_scores, mia_auc, min_k_mean, zlib_length, zlib_score
from hf_unlearn.eval.scoring import token_logprob_stats
from hf_unlearn.eval.tofu import (
    forget_quality,
    forget_truth_ratio_statistic,
    harmonic_mean,
    normalized_probability,
    retain_truth_ratio_statistic,
    truth_ratio,
)


LN2 = math.log(2)


def test_truth_ratio_is_geometric_mean_of_perturbed_over_paraphrased():
    # item 1: P_para = e^-1, P_pert = e^-2, e^-4 -> geometric mean e^-3 -> TR = e^-3 / e^-1 = e^-2
    # item 2: P_para = e^-2, P_pert = e^-1, e^-1 -> TR = e^-1 / e^-2 = e
    tr = truth_ratio([1.0, 2.0], [[2.0, 4.0], [1.0, 1.0]])
    assert tr.tolist() == pytest.approx([math.exp(-2), math.e], rel=1e-15)


def test_truth_ratio_ragged_rows_use_their_own_answers():
    tr = truth_ratio([1.0, 1.0], [[3.0, float("nan")], [2.0, 4.0]])
    assert tr.tolist() == pytest.approx([math.exp(-2), math.exp(-2)], rel=1e-15)


def test_forget_statistic_is_mean_of_min_tr_and_inverse():
    # min(TR, 1/TR) = 0.5, 0.5, 1 -> 2/3
    assert forget_truth_ratio_statistic([0.5, 2.0, 1.0]) == pytest.approx(2 / 3, rel=1e-15)


def test_retain_statistic_is_mean_of_one_minus_tr_clipped_at_zero():
    # max(0, 1 - TR) = 0.75, 0, 0 -> 0.25
    assert retain_truth_ratio_statistic([0.25, 1.5, 1.0]) == pytest.approx(0.25, rel=1e-15)


def test_normalized_probability():
    # P(true) = 0.5, P(perturbed) = 0.25 and 0.125 -> 0.5 / 0.875 = 4/7; second item: 0.2 / (0.2 + 0.2 + nothing)
    true_nll = [-math.log(0.5), -math.log(0.2)]
    perturbed_nll = [[-math.log(0.25), -math.log(0.125)], [-math.log(0.2), float("nan")]]
    assert normalized_probability(true_nll, perturbed_nll).tolist() == pytest.approx([4 / 7, 0.5], rel=1e-12)


def test_harmonic_mean():
    assert harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / 7, rel=1e-15)
    nine = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert harmonic_mean(nine) == pytest.approx(9 / sum(1 / v for v in nine), rel=1e-15)
    assert harmonic_mean([0.9, 0.0, 0.5]) == 0.0
    with pytest.raises(ValueError):
        harmonic_mean([0.5, float("nan")])


def _exact_ks_pvalue(x, y):
    """Brute force: the share of all relabellings of the pooled sample whose KS statistic reaches the observed."""

    def statistic(a, b):
        return max(abs(sum(v <= t for v in a) / len(a) - sum(v <= t for v in b) / len(b)) for t in a + b)

    observed = statistic(x, y)
    pooled = x + y
    hits = total = 0
    for chosen in itertools.combinations(range(len(pooled)), len(x)):
        a = [pooled[i] for i in chosen]
        b = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        hits += statistic(a, b) >= observed - 1e-12
        total += 1
    return hits / total


def test_forget_quality_is_the_exact_ks_p_value():
    # n = m = 3, complete separation: 2 of the C(6, 3) = 20 arrangements reach D = 1 -> p = 0.1
    assert forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1, rel=1e-12)
    x, y = [0.3, 0.9, 1.4, 2.2], [0.5, 1.1, 2.5, 2.9, 3.3]
    assert forget_quality(x, y) == pytest.approx(_exact_ks_pvalue(x, y), rel=1e-9)
    assert forget_quality(x, x) == 1.0


def test_min_k_mean_takes_the_lowest_fraction():
    assert min_k_mean([-1.0, -2.0, -3.0, -4.0, -5.0], 0.4) == -4.5  # lowest 2 of 5
    assert min_k_mean([-1.0, -3.0, -2.0], 0.4) == -3.0  # floor(1.2) = 1
    assert min_k_mean([-7.0], 0.4) == -7.0  # at least one token
    assert min_k_mean([0.0, -1.0, -2.0, -3.0], 1.0) == -1.5


def test_token_stats_give_log_probs_and_min_k_plus_plus_z_scores():
    # next-token distribution (1/4, 1/4, 1/2): log-probs -2 ln2, -2 ln2, -ln2; mu = -1.5 ln2, sigma = 0.5 ln2
    # -> z = +1 for the likely token, -1 for an unlikely one
    logits = torch.log(torch.tensor([[[0.25, 0.25, 0.5]] * 3]))
    labels = torch.tensor([[-100, 2, 0]])
    logprobs, zscores, mask = token_logprob_stats(logits, labels)
    assert mask.tolist() == [[True, True]]
    assert logprobs[0].tolist() == pytest.approx([-LN2, -2 * LN2], rel=1e-6)
    assert zscores[0].tolist() == pytest.approx([1.0, -1.0], rel=1e-5)
    assert min_k_mean(zscores[0].tolist(), 0.4) == pytest.approx(-1.0, rel=1e-5)


def test_token_stats_ignore_impossible_tokens():
    logits = torch.tensor([[[0.0, 0.0, float("-inf")], [0.0, 0.0, 0.0]]])
    logprobs, zscores, mask = token_logprob_stats(logits, torch.tensor([[-100, 0]]))
    # two equally likely tokens: sigma = 0, z = 0 / eps = 0 for either
    assert logprobs[0].tolist() == pytest.approx([-LN2]) and zscores[0].tolist() == pytest.approx([0.0], abs=1e-3)


def test_zlib_score_divides_mean_log_prob_by_compressed_length():
    assert zlib_length("abc") == 11  # 2-byte header, 5-byte deflate block, 4-byte Adler-32
    assert zlib_score([-1.0, -3.0], "abc") == pytest.approx(-2.0 / 11, rel=1e-15)
    rng = random.Random(0)
    assert zlib_length("ab" * 100) < zlib_length("".join(rng.choice("abcdefghij") for _ in range(200)))


def test_attack_scores_are_higher_for_more_likely_text():
    likely = attack_scores([-0.1, -0.2, -0.1], [0.5, 0.4, 0.6], "same text")
    unlikely = attack_scores([-3.0, -2.0, -4.0], [-1.0, -2.0, -0.5], "same text")
    assert all(likely[a] > unlikely[a] for a in likely)


def test_auc_counts_ties_as_one_half():
    # pairs: 3>2, 3>0, 2=2 (0.5), 2>0, 1<2, 1>0 -> 4.5 / 6
    assert mia_auc([3.0, 2.0, 1.0], [2.0, 0.0]) == 0.75
    assert mia_auc([5.0, 6.0], [1.0, 2.0]) == 1.0
    assert mia_auc([1.0, 2.0], [5.0, 6.0]) == 0.0
    assert mia_auc([1.0, 1.0], [1.0]) == 0.5


def test_auc_equals_pairwise_count_with_ties():
    rng = random.Random(0)
    members = [rng.randint(0, 5) / 2 for _ in range(23)]
    nonmembers = [rng.randint(0, 5) / 2 for _ in range(17)]
    pairwise = sum((m > n) + 0.5 * (m == n) for m in members for n in nonmembers) / (23 * 17)
    assert mia_auc(members, nonmembers) == pytest.approx(pairwise, abs=1e-15)
