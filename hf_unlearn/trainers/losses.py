"""Log-probability primitives over answer tokens that every unlearning loss builds on (pure tensor functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.formatting import IGNORE_INDEX


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align logits at position t with the label at t+1."""
    return logits[:, :-1, :], labels[:, 1:]


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log pi(y_t | y_<t, x) at answer positions and the answer mask, both (batch, length - 1).

    `labels` hold -100 on prompt and padding; positions there get log-prob 0 and mask 0.
    """
    logits, labels = shift_for_next_token(logits, labels)
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return log_probs * mask, mask


def sequence_log_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log pi(y | x) per example: the sum of answer-token log-probs, shape (batch,)."""
    log_probs, _ = token_log_probs(logits, labels)
    return log_probs.sum(-1)


def mean_token_log_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(1/|y|) log pi(y | x) per example, shape (batch,)."""
    log_probs, mask = token_log_probs(logits, labels)
    return log_probs.sum(-1) / mask.sum(-1).clamp(min=1)


def mean_token_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The average per-token probability (1/|y|) sum_t pi(y_t | y_<t, x) per example (FLAT's P), shape (batch,)."""
    log_probs, mask = token_log_probs(logits, labels)
    return (log_probs.exp() * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over all answer tokens of the batch (the usual causal-LM loss)."""
    logits, labels = shift_for_next_token(logits, labels)
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX)


KL_POSITIONS = ("all", "answer")


def kl_to_reference(
    logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, positions: str = "all"
) -> torch.Tensor:
    """KL(pi_ref || pi_theta) = sum_v pi_ref(v) (log pi_ref(v) - log pi_theta(v)) of the models' output distributions.

    `positions="all"` (default) is open-unlearning's `compute_kl_divergence` (locuslab/open-unlearning,
    `src/trainer/utils.py`): `kl_div(log_softmax(logits), log_softmax(ref_logits), reduction="batchmean",
    log_target=True)` on the logits flattened to (batch * length, vocab), i.e. the KL summed over *every* position of
    the padded batch (prompt, answer, padding and the last position alike) and divided by batch * length.
    `positions="answer"` (this library's earlier definition) averages it over the positions that predict an answer
    token only (labels != -100 at t+1).
    """
    if positions not in KL_POSITIONS:
        raise ValueError(f"positions must be one of {KL_POSITIONS}, got {positions!r}.")
    log_p = torch.log_softmax(logits.float(), dim=-1)
    log_ref = torch.log_softmax(ref_logits.float(), dim=-1)
    kl = (log_ref.exp() * (log_ref - log_p)).sum(-1)  # (batch, length)
    if positions == "all":
        return kl.sum() / kl.numel()
    mask = shift_for_next_token(logits, labels)[1] != IGNORE_INDEX
    return (kl[:, :-1] * mask).sum() / mask.sum().clamp(min=1)
