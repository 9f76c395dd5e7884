"""Per-example token log-probabilities of answers (or whole texts), batched: one forward pass per batch.

Flat scoring: examples are left-padded with position ids counted from each example's first real token, so a
padded example sees exactly the positions it would see alone, and every answer ends at the last column; the model
only projects the last `answer width + 1` hidden states to the vocabulary (`logits_to_keep`), which matters for
large vocabularies.

Prompt sharing (`score_answers`, the default for models with a KV cache): the answers to one question share its
prompt, which is run once; its KV cache is repeated for each answer, and the answers (right-padded) are run on
top of it. TOFU scores 4-7 answers per question and chat-template prompts are most of each sequence, so this
saves most of the compute. Work is split across processes as described in `hf_unlearn.eval.distributed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..data.formatting import IGNORE_INDEX, left_padded_prompts, pad_examples, tokenize_qa
from ..layout import forward_accepts
from .distributed import map_sharded, run_sharded


# Rows whose vocabulary statistics are computed at once (bounds memory to rows x positions x vocabulary floats).
STATS_ROWS = 8


def token_logprob_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per scored token: its log-probability and its Min-K%++ z-score, plus the mask of scored tokens.

    `logits[:, t]` predicts `labels[:, t + 1]`; tokens labelled -100 are not scored. With p the model's next-token
    distribution at that position, z = (log p(y) - mu) / sigma, mu = E_{z~p}[log p(z)],
    sigma^2 = E_{z~p}[log p(z)^2] - mu^2 (Zhang et al., 2024, Min-K%++). Returns three (batch, positions - 1)
    tensors: log-probs (float32), z-scores (float32) and the boolean mask.
    """
    return _aligned_stats(logits[:, :-1], labels[:, 1:])


def _aligned_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`token_logprob_stats` where `logits[:, t]` predicts `targets[:, t]`."""
    mask = targets != IGNORE_INDEX
    log_probs = logits.float().log_softmax(-1)
    token_logprobs = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    probs = log_probs.exp()
    finite = log_probs.masked_fill(~torch.isfinite(log_probs), 0.0)  # tokens with p = 0 add nothing to mu, sigma
    mu = (probs * finite).sum(-1)
    variance = (probs * finite.square()).sum(-1) - mu.square()
    token_zscores = (token_logprobs - mu) / variance.clamp(min=1e-12).sqrt()
    return token_logprobs, token_zscores, mask


def _per_example(logits: torch.Tensor, targets: torch.Tensor) -> list[dict[str, list[float]]]:
    """Aligned logits and targets -> one {"logprobs", "zscores"} per row, a few rows at a time (bounded memory)."""
    results = []
    for start in range(0, len(targets), STATS_ROWS):
        rows = slice(start, start + STATS_ROWS)
        logprobs, zscores, mask = _aligned_stats(logits[rows], targets[rows])
        for lp, z, m in zip(logprobs, zscores, mask):
            results.append({"logprobs": lp[m].tolist(), "zscores": z[m].tolist()})
    return results


@torch.no_grad()
def _score_batch(model, examples: list[dict], pad_token_id: int) -> list[dict[str, list[float]]]:
    batch = pad_examples(examples, pad_token_id, padding_side="left")
    device = next(model.parameters()).device
    input_ids, attention_mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    width = input_ids.shape[1]
    scored = labels != IGNORE_INDEX
    # logits are needed from the position before the earliest scored token to the end
    first_scored = torch.where(scored.any(-1), scored.int().argmax(-1), width)
    keep = int(min(width, width - int(first_scored.min()) + 1))
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    if forward_accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits[:, -keep:]
    return _per_example(logits[:, :-1], labels[:, width - keep + 1 :])


def score_examples(
    model,
    examples: list[dict],
    pad_token_id: int,
    batch_size: int = 32,
    accelerator=None,
    progress: bool = False,
    desc: str = "scoring",
) -> list[dict[str, list[float]]]:
    """Token log-probs and Min-K%++ z-scores of the labelled tokens of tokenized examples (`input_ids`, `labels`).

    Returns, in the order of `examples`, one `{"logprobs": [...], "zscores": [...]}` per example. Under several
    processes each rank scores its share of the batches and every rank returns all results.
    """
    return map_sharded(
        examples,
        [len(e["input_ids"]) for e in examples],
        batch_size,
        lambda batch: _score_batch(model, batch, pad_token_id),
        accelerator,
        progress=progress,
        desc=desc,
    )


@dataclass
class _PromptGroup:
    """Answers sharing one prompt: the prompt's token ids and (example index, answer token ids) pairs."""

    prompt: list[int]
    answers: list[tuple[int, list[int]]]


def _prompt_batches(examples: list[dict], batch_size: int) -> list[list[_PromptGroup]]:
    """Group examples by prompt (the tokens before the first label) and pack the groups into batches of at most
    `batch_size` answers, longest first; the same on every process."""
    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for index, example in enumerate(examples):
        prompt_length = next(i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
        prompt = tuple(example["input_ids"][:prompt_length])
        groups.setdefault(prompt, []).append((index, list(example["input_ids"][prompt_length:])))
    units = [
        _PromptGroup(list(prompt), answers[start : start + batch_size])
        for prompt, answers in groups.items()
        for start in range(0, len(answers), batch_size)
    ]
    units.sort(key=lambda u: (-(len(u.prompt) + max(len(a) for _, a in u.answers)), u.answers[0][0]))
    batches: list[list[_PromptGroup]] = []
    rows = batch_size
    for unit in units:
        if rows + len(unit.answers) > batch_size:
            batches.append([])
            rows = 0
        batches[-1].append(unit)
        rows += len(unit.answers)
    return batches


@torch.no_grad()
def _score_prompt_batch(model, groups: list[_PromptGroup], examples: list[dict], pad_token_id: int) -> list[tuple[int, dict]]:
    """Run each distinct prompt once, repeat its KV cache for each of its answers, then run the answers on top."""
    device = next(model.parameters()).device
    prompts = left_padded_prompts([g.prompt for g in groups], pad_token_id)
    prompt_ids, prompt_mask = prompts["input_ids"].to(device), prompts["attention_mask"].to(device)
    kwargs = {"logits_to_keep": 1} if forward_accepts(model, "logits_to_keep") else {}
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True, **kwargs)
    cache = out.past_key_values
    rows = [(g, index, answer) for g, group in enumerate(groups) for index, answer in group.answers]
    if not hasattr(cache, "batch_select_indices"):  # a model without a standard KV cache: score without sharing
        return list(zip([index for _, index, _ in rows], _score_batch(model, [examples[i] for _, i, _ in rows], pad_token_id)))
    row_prompt = torch.tensor([g for g, _, _ in rows], device=device)
    cache.batch_select_indices(row_prompt)
    answers = pad_examples([{"input_ids": a, "attention_mask": [1] * len(a), "labels": a} for _, _, a in rows], pad_token_id, "right")
    answer_ids, answer_mask, targets = (answers[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    positions = prompt_mask.sum(-1)[row_prompt].unsqueeze(-1) + torch.arange(answer_ids.shape[1], device=device)
    answer_logits = model(input_ids=answer_ids, attention_mask=torch.cat([prompt_mask[row_prompt], answer_mask], -1),
                          position_ids=positions, past_key_values=cache, use_cache=True).logits
    # the prompt's last position predicts the first answer token, answer position t predicts token t + 1
    logits = torch.cat([out.logits[:, -1][row_prompt].unsqueeze(1), answer_logits[:, :-1]], 1)
    return list(zip([index for _, index, _ in rows], _per_example(logits, targets)))


def score_answers(
    model,
    tokenizer,
    questions: list[str],
    answers: list[str],
    batch_size: int = 32,
    max_length: int = 256,
    accelerator=None,
    progress: bool = False,
    desc: str = "scoring answers",
    share_prompts: bool | None = None,
) -> list[dict[str, list[float]]]:
    """`score_examples` over question/answer pairs formatted as in training (`tokenize_qa`: answer tokens and EOS
    are scored, the prompt is not).

    `share_prompts` (default: when the model's forward takes `past_key_values`) runs each distinct prompt once for
    all its answers (see the module docstring); `batch_size` counts answers.
    """
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers.")
    examples = [tokenize_qa(tokenizer, q, a, max_length) for q, a in zip(questions, answers)]
    if share_prompts is None:
        share_prompts = forward_accepts(model, "past_key_values")
    if not share_prompts:
        return score_examples(model, examples, tokenizer.pad_token_id, batch_size, accelerator, progress, desc)
    per_batch = run_sharded(
        _prompt_batches(examples, batch_size),
        lambda groups: _score_prompt_batch(model, groups, examples, tokenizer.pad_token_id),
        accelerator,
        progress=progress,
        desc=desc,
    )
    results: list = [None] * len(examples)
    for index, result in (pair for batch in per_batch for pair in batch):
        results[index] = result
    return results


def score_texts(
    model,
    tokenizer,
    texts: list[str],
    batch_size: int = 8,
    max_length: int = 2048,
    accelerator=None,
    progress: bool = False,
    desc: str = "scoring texts",
) -> list[dict[str, list[float]]]:
    """`score_examples` over plain texts (tokenized with special tokens, cut to `max_length`): every token after
    the first is scored."""
    examples = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_length]
        if len(ids) < 2:
            raise ValueError(f"A text must have at least two tokens to be scored: {text[:80]!r}.")
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE_INDEX] + ids[1:]})
    return score_examples(model, examples, tokenizer.pad_token_id, batch_size, accelerator, progress, desc)


def mean_nll(token_logprobs: list[float]) -> float:
    """Length-normalised negative log-likelihood: -(1/T) sum_t log p(y_t)."""
    if not token_logprobs:
        raise ValueError("No scored tokens: an empty answer has no likelihood.")
    return -sum(token_logprobs) / len(token_logprobs)


def answer_probability(token_logprobs: list[float]) -> float:
    """TOFU's answer probability: the length-normalised likelihood exp(-mean NLL) = exp((1/T) sum_t log p(y_t)),
    over the T scored tokens (answer, end of turn and EOS, as `score_answers` scores them).

    Reference: locuslab/open-unlearning `src/evals/metrics/utils.py` (`evaluate_probability`: exp(-summed
    cross-entropy / number of labelled tokens), the labels ending with EOS as `src/data/utils.py`
    `preprocess_chat_instance` builds them).
    """
    return math.exp(-mean_nll(token_logprobs))
