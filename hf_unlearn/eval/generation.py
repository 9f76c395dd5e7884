"""Batched greedy answers to questions, formatted exactly as in training."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data.formatting import encode_prompt, left_padded_prompts
from ..modeling import eval_mode


def generate_answers(
    model,
    tokenizer,
    questions: list[str],
    max_new_tokens: int = 48,
    batch_size: int = 32,
    progress: bool = False,
    **generate_kwargs,
) -> list[str]:
    """Greedy (unless `generate_kwargs` say otherwise) answers to `questions`, prompts left-padded in batches."""
    prompt_ids = [encode_prompt(tokenizer, q) for q in questions]
    answers = generate_from_ids(model, tokenizer, prompt_ids, max_new_tokens, batch_size, progress, **generate_kwargs)
    return [a.strip() for a in answers]


@torch.no_grad()
def generate_from_ids(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    max_new_tokens: int = 128,
    batch_size: int = 32,
    progress: bool = False,
    **generate_kwargs,
) -> list[str]:
    """Greedy (unless `generate_kwargs` say otherwise) continuations of already tokenized prompts (raw text
    continuation, e.g. MUSE's VerbMem and KnowMem prompts), left-padded in batches.

    The model generates in eval mode (a model left training, e.g. with gradient checkpointing and dropout after
    fine-tuning, generates noise) and is put back in the mode it was in."""
    continuations = []
    device = next(model.parameters()).device
    with eval_mode(model):
        for start in tqdm(range(0, len(prompt_ids), batch_size), desc="generating", disable=not progress):
            batch = left_padded_prompts(prompt_ids[start : start + batch_size], tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
            kwargs.update(generate_kwargs)
            output = model.generate(**batch, **kwargs)
            continuations += tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return continuations
