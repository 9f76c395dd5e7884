"""Prompt formatting and answer-only label masking, shared by training and evaluation.

A question is formatted with the tokenizer's chat template when it has one, and as
`Question: {question}\nAnswer:` otherwise; the answer follows (with a leading space in the plain format) and ends
with the template's end of turn and the EOS token, as open-unlearning scores it. Labels are `-100` on the prompt, so
every loss and metric sees answer tokens only.
"""

from __future__ import annotations

import warnings

import torch


IGNORE_INDEX = -100
PLAIN_TEMPLATE = "Question: {question}\nAnswer:"


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token its EOS token as pad token; raise when it has neither."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token is None:
        raise ValueError(
            f"The tokenizer {type(tokenizer).__name__} has neither a pad token nor an EOS token to pad with. "
            "Set one, e.g. `tokenizer.add_special_tokens({'pad_token': '<pad>'})` and resize the model's embeddings."
        )
    warnings.warn(f"The tokenizer has no pad token; using its EOS token {tokenizer.eos_token!r} for padding.")
    tokenizer.pad_token = tokenizer.eos_token


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, question: str) -> str:
    """The prompt text for a question: chat template with a generation prompt, or the plain QA format."""
    if uses_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
    return PLAIN_TEMPLATE.format(question=question)


def encode_prompt(tokenizer, question: str) -> list[int]:
    """Token ids of the formatted prompt (BOS included where the tokenizer adds one)."""
    prompt = format_prompt(tokenizer, question)
    return tokenizer(prompt, add_special_tokens=not uses_chat_template(tokenizer))["input_ids"]


_ANSWER_PLACEHOLDER = "\x00hf_unlearn answer\x00"


def end_of_turn_text(tokenizer) -> str:
    """The text a chat template puts after an assistant answer (ChatML: `<|im_end|>\\n`); `""` without a template
    or when the template does not render the answer verbatim."""
    if not uses_chat_template(tokenizer):
        return ""
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": _ANSWER_PLACEHOLDER}],
            tokenize=False, add_generation_prompt=False,
        )
    except Exception:  # a template that refuses this conversation: score the answer and EOS only
        return ""
    _, found, suffix = rendered.partition(_ANSWER_PLACEHOLDER)
    return suffix if found else ""


def encode_answer(tokenizer, answer: str) -> list[int]:
    """Token ids of an answer as it follows the prompt: the answer, the chat template's end of turn, and EOS unless
    the turn already ends with it.

    This is open-unlearning's `preprocess_chat_instance` (`src/data/utils.py`): the labels are every token of the
    conversation after the generation prompt, with EOS appended when the conversation does not end with it. For
    SmolLM2's ChatML template that is `answer <|im_end|> \\n <|im_end|>`. Without a chat template: `" " + answer`
    and EOS (the plain `Question: ...\\nAnswer:` format).
    """
    if uses_chat_template(tokenizer):
        ids = tokenizer(answer + end_of_turn_text(tokenizer), add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(" " + answer.lstrip(), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    return ids


def example_token_limit(tokenizer, model_config=None, max_length: int | None = None) -> int:
    """The number of tokens an example may have: `max_length`, else the model's context
    (`hf_unlearn.compatibility.context_length` of `model_config`), else the tokenizer's."""
    from ..compatibility import context_length as model_context_length

    if max_length is not None:
        return max_length
    if model_config is not None and (limit := model_context_length(model_config)) is not None:
        return limit
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 1_000_000 else 2048


def tokenize_qa(tokenizer, question: str, answer: str, max_length: int = 512) -> dict[str, list[int]]:
    """Tokenize one QA pair into `input_ids`, `attention_mask` and `labels` (prompt tokens masked with -100).

    An answer that runs past `max_length` is truncated; a prompt that does not leave room for one answer token is
    an error, since training or scoring it would silently see no answer at all.
    """
    prompt_ids = encode_prompt(tokenizer, question)
    if len(prompt_ids) >= max_length:
        raise ValueError(
            f"A prompt of {len(prompt_ids)} tokens does not fit in max_length={max_length} (it must leave room for "
            f"the answer): {question[:80]!r}... Raise max_length (up to the model's context) or shorten the prompt."
        )
    answer_ids = encode_answer(tokenizer, answer)[: max_length - len(prompt_ids)]
    input_ids = prompt_ids + answer_ids
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


def tokenize_pairs(tokenizer, questions, answers, max_length: int = 512) -> list[dict[str, list[int]]]:
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers.")
    return [tokenize_qa(tokenizer, q, a, max_length) for q, a in zip(questions, answers)]


def left_padded_prompts(prompt_ids: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Token-id prompts as one left-padded batch (`input_ids`, `attention_mask`), ready for batched generation."""
    return pad_examples([{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in prompt_ids], pad_token_id, "left")


def pad_examples(examples: list[dict], pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad tokenized examples into a batch: `input_ids` with the pad id, `attention_mask` with 0, `labels` with -100."""
    width = max(len(e["input_ids"]) for e in examples)
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    batch = {}
    for key in ("input_ids", "attention_mask", "labels"):
        if key not in examples[0]:
            continue
        rows = []
        for e in examples:
            pad = [fill[key]] * (width - len(e[key]))
            rows.append(pad + list(e[key]) if padding_side == "left" else list(e[key]) + pad)
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch
