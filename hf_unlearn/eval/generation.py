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
    """Greedy (unless `generate_kwargs` say otherwise) answers to `questions`, prompts left-padded in batches.

    Each answer ends at its first EOS (the tokenizer's, which ends every training answer, or one of the model's
    generation config) or after `max_new_tokens` tokens; a batch runs until its last answer ends.
    """
    prompt_ids = [encode_prompt(tokenizer, q) for q in questions]
    if "eos_token_id" not in generate_kwargs and (stop_ids := stop_token_ids(model, tokenizer)):
        generate_kwargs["eos_token_id"] = stop_ids
    answers = generate_from_ids(model, tokenizer, prompt_ids, max_new_tokens, batch_size, progress, **generate_kwargs)
    return [a.strip() for a in answers]


def stop_token_ids(model, tokenizer) -> list[int] | None:
    """The tokenizer's EOS id and the model's generation-config EOS ids (an answer ends at the first of them), or
    None when neither is set."""
    config_ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_ids, int):
        config_ids = [config_ids]
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids += [i for i in config_ids or [] if i is not None and i not in ids]
    return ids or None


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
