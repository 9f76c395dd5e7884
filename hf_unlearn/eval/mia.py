"""Membership-inference attacks on per-example token log-probabilities, their AUC, and PrivLeak.

Every attack scores an example so that a HIGHER score means "more likely a member" (seen in training):
- LOSS (Yeom et al., 2018): -(mean token NLL).
- zlib (Carlini et al., 2021): -(mean token NLL) / (zlib-compressed length of the text in bytes).
- Min-K% (Shi et al., 2024): mean of the lowest k fraction of token log-probs (k = 0.4).
- Min-K%++ (Zhang et al., 2024): the same over per-token z-scores (log p(y) - mu) / sigma, mu and sigma the
  mean and standard deviation of log p(z) under the model's next-token distribution at that position.
open-unlearning negates these scores (lower = member) and labels holdout as 1; its AUC is the same number.

Tokens scored: LOSS and zlib average over every scored token, the answer's EOS included; Min-K% and Min-K%++ leave
out the final EOS of an answer, as open-unlearning does (`src/evals/metrics/utils.py`, `tokenwise_logprobs` and
`tokenwise_vocab_logprobs`: the last labelled token is dropped "to ignore eos prediction"; `evaluate_probability`,
behind LOSS and zlib, keeps it). `attack_scores(..., ends_with_eos=False)` scores every token, for texts scored
without an appended EOS (MUSE's PrivLeak texts: MUSE's `metrics/privleak.py` scores every token after the first).

The AUC is the Mann-Whitney probability that a member outscores a non-member (ties count one half), forget set as
members. PrivLeak is in percent, in MUSE's orientation: see `privleak`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata


MIN_K_FRACTION = 0.4
ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")
PRIVLEAK_UNIT = "percent"


def min_k_mean(values: Sequence[float], k: float = MIN_K_FRACTION) -> float:
    """Mean of the lowest max(1, floor(k * n)) of n values (the Min-K% statistic; open-unlearning
    `src/evals/metrics/mia/min_k.py` takes the same count, with the opposite sign)."""
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


def attack_scores(
    token_logprobs: Sequence[float],
    token_zscores: Sequence[float],
    text: str,
    k: float = MIN_K_FRACTION,
    ends_with_eos: bool = True,
) -> dict[str, float]:
    """All four attacks' scores for one example (higher = more likely a member).

    `ends_with_eos`: the last scored token is the EOS appended to an answer (what `score_answers` scores). Min-K%
    and Min-K%++ then leave it out, as open-unlearning does; LOSS and zlib keep it. Pass False for texts scored
    without an appended EOS (`score_texts`), whose tokens are all scored by every attack.
    """
    if len(token_logprobs) != len(token_zscores):
        raise ValueError(
            f"{len(token_logprobs)} token log-probs but {len(token_zscores)} z-scores: pass both for the same tokens."
        )
    kept = len(token_logprobs) - 1 if ends_with_eos else len(token_logprobs)  # Min-K% leaves out the EOS
    if kept < 1:
        raise ValueError(
            "Min-K% needs a scored token besides the EOS: the answer is empty (or pass ends_with_eos=False)."
        )
    return {
        "loss": loss_score(token_logprobs),
        "zlib": zlib_score(token_logprobs, text),
        "min_k": min_k_mean(token_logprobs[:kept], k),
        "min_k_plus_plus": min_k_mean(token_zscores[:kept], k),
    }


def mia_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """AUC = P(member score > non-member score) + 0.5 P(tie), by Mann-Whitney ranks:
    (R_members - n_m (n_m + 1) / 2) / (n_m n_n), R_members the sum of the members' average ranks.

    With the forget set as members this is open-unlearning's MIA AUC (`src/evals/metrics/mia/utils.py`,
    `mia_auc`: "auc is 1 when the forget data is much more likely than the holdout data") and 1 minus MUSE's
    (`eval.py`, key `forget_holdout_Min-40%`: holdout labelled as members)."""
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
    """PrivLeak (Shi et al., 2024, MUSE) in percent, from forget-vs-holdout AUCs oriented as `mia_auc` gives them
    (forget set as members):

        PrivLeak = 100 * ((1 - AUC_model) - (1 - AUC_retain)) / (1 - AUC_retain)

    1 - AUC is MUSE's AUC, which labels the holdout set as members (`eval.py`: `privleak_auc_key =
    'forget_holdout_Min-40%'`, then `(auc - AUC_RETRAIN) / AUC_RETRAIN * 100`); open-unlearning computes the same
    from its forget-as-member AUCs (`src/evals/metrics/privacy.py`, `privleak`: `1 - score`, `1 - ref`, then the
    relative difference x 100). 0: the model leaks as much as the retain model; negative: it leaks more, down to
    -100 for a model that ranks every forget example above every holdout example (AUC_model = 1); positive: it
    leaks less (over-unlearned). AUC_model = 0.9, AUC_retain = 0.6 give -75.
    """
    for name, auc in (("auc_model", auc_model), ("auc_retain", auc_retain)):
        if not 0 <= auc <= 1:
            raise ValueError(f"{name} must be an AUC in [0, 1], got {auc}.")
    if auc_retain >= 1:
        raise ValueError(
            "PrivLeak divides by 1 - AUC_retain, which is 0: pass the retain model's AUC on the same forget and "
            "holdout sets."
        )
    retain_muse, model_muse = 1 - auc_retain, 1 - auc_model
    return 100 * (model_muse - retain_muse) / retain_muse


def mia_aucs(members: list[dict[str, float]], nonmembers: list[dict[str, float]]) -> dict[str, float]:
    """AUC of each attack from per-example `attack_scores` of members and non-members."""
    return {attack: mia_auc([m[attack] for m in members], [n[attack] for n in nonmembers]) for attack in ATTACKS}
