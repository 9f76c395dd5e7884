"""Membership-inference attacks on per-example token log-probabilities, their AUC, and PrivLeak.

Every attack scores an example so that a HIGHER score means "more likely a member" (seen in training):
- LOSS (Yeom et al., 2018): -(mean token NLL).
- zlib (Carlini et al., 2021): -(mean token NLL) / (zlib-compressed length of the text in bytes).
- Min-K% (Shi et al., 2024): mean of the lowest k fraction of token log-probs (k = 0.4).
- Min-K%++ (Zhang et al., 2024): the same over per-token z-scores (log p(y) - mu) / sigma, mu and sigma the
  mean and standard deviation of log p(z) under the model's next-token distribution at that position.
The AUC is the Mann-Whitney probability that a member outscores a non-member (ties count one half).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

MIN_K_FRACTION = 0.4
ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")


def min_k_mean(values: Sequence[float], k: float = MIN_K_FRACTION) -> float:
    """Mean of the lowest max(1, floor(k * n)) of n values (the Min-K% statistic)."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}.")
    if len(values) == 0:
        raise ValueError("Min-K% needs at least one token.")
    count = max(1, int(len(values) * k))
    return float(np.mean(np.sort(np.asarray(values, dtype=np.float64))[:count]))


def zlib_length(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text (the zlib attack's reference entropy)."""
    return len(zlib.compress(text.encode("utf-8")))


def loss_score(token_logprobs: Sequence[float]) -> float:
    """LOSS attack: the mean token log-prob, i.e. -(mean NLL)."""
    return float(np.mean(np.asarray(token_logprobs, dtype=np.float64)))


def zlib_score(token_logprobs: Sequence[float], text: str) -> float:
    """zlib attack: -(mean NLL) / zlib length of the text."""
    return loss_score(token_logprobs) / zlib_length(text)


def attack_scores(token_logprobs: Sequence[float], token_zscores: Sequence[float], text: str, k: float = MIN_K_FRACTION) -> dict[str, float]:
    """All four attacks' scores for one example (higher = more likely a member)."""
    return {
        "loss": loss_score(token_logprobs),
        "zlib": zlib_score(token_logprobs, text),
        "min_k": min_k_mean(token_logprobs, k),
        "min_k_plus_plus": min_k_mean(token_zscores, k),
    }


def mia_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """AUC = P(member score > non-member score) + 0.5 P(tie), by Mann-Whitney ranks:
    (R_members - n_m (n_m + 1) / 2) / (n_m n_n), R_members the sum of the members' average ranks."""
    members = np.asarray(member_scores, dtype=np.float64)
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64)
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError(f"An AUC needs members and non-members; got {members.size} and {nonmembers.size}.")
    if not (np.isfinite(members).all() and np.isfinite(nonmembers).all()):
        raise ValueError("MIA scores must be finite; a NaN or infinite score has no rank.")
    ranks = rankdata(np.concatenate([members, nonmembers]))  # ties get their average rank
    n_m, n_n = members.size, nonmembers.size
    return float((ranks[:n_m].sum() - n_m * (n_m + 1) / 2) / (n_m * n_n))


def privleak(auc_model: float, auc_retain: float) -> float:
    """PrivLeak (Shi et al., 2024, MUSE): (AUC_model - AUC_retain) / AUC_retain; 0 means the model leaks no more
    membership than the retain model, positive means it leaks more."""
    if auc_retain <= 0:
        raise ValueError(f"PrivLeak divides by the retain model's AUC, which is {auc_retain}.")
    return (auc_model - auc_retain) / auc_retain


def mia_aucs(members: list[dict[str, float]], nonmembers: list[dict[str, float]]) -> dict[str, float]:
    """AUC of each attack from per-example `attack_scores` of members and non-members."""
    return {attack: mia_auc([m[attack] for m in members], [n[attack] for n in nonmembers]) for attack in ATTACKS}
