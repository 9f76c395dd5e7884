"""A straightforward, independent implementation of the TOFU metrics, to cross-check `hf_unlearn.eval.tofu`.

One question at a time: no batching, no padding, no KV-cache sharing between answers, plain `model(input_ids)`
forward passes, and greedy decoding token by token. Nothing here imports `hf_unlearn`; only the prompt template is
an input both sides share (the tokenizer's chat template with a generation prompt, or the plain
`Question: ...\\nAnswer:` format when the tokenizer has none), and the test checks that both build the same prompt.

The formulas follow the field's references, cited per function:
- locuslab/open-unlearning @ d3d7cf9e6b3c125d16687d4232680d8d83548f1a (2025-12-24):
  `src/data/utils.py` (`preprocess_chat_instance`: which tokens are scored), `src/evals/metrics/utils.py`
  (`evaluate_probability`, `eval_text_similarity`), `src/evals/metrics/memorization.py` (`probability`,
  `truth_ratio` and its aggregators `closer_to_1_better`, `true_better`), `configs/eval/tofu_metrics/*.yaml`
  (`forget_Truth_Ratio.yaml`: correct = paraphrased answer, wrong = perturbed answers, `closer_to_1_better`;
  `retain_Truth_Ratio.yaml`: `true_better`), `configs/generation/default.yaml` (greedy, max_new_tokens: 200).
- locuslab/tofu @ 8c49eee7da2b96b2b718c41c66f4e21331c89189: `aggregate_eval_stat.py` (`get_model_utility`: the
  same truth ratio written as exp(mean perturbed loss - paraphrased loss) and its inverse), `config/eval_everything.yaml`
  (`base_answer_key: paraphrased_answer` for the forget set, the perturbed answers scored given `question`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from rouge_score import rouge_scorer


# open-unlearning `configs/generation/default.yaml`: do_sample: False, max_new_tokens: 200
MAX_NEW_TOKENS = 200
PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
# open-unlearning `src/evals/metrics/memorization.py` (`truth_ratio`): the epsilon added to denominators
EPSILON = 1e-10


# ----------------------------------------------------------------------------------------------------------------
# Tokens


def _ids(encoded) -> list[int]:
    """`apply_chat_template(tokenize=True)` returns a list or, in newer transformers, a BatchEncoding."""
    return list(encoded if isinstance(encoded, list) else encoded["input_ids"])


def prompt_ids(tokenizer, question: str) -> list[int]:
    """The prompt: the user turn through the chat template with the assistant's generation prompt (the template's
    own default system prompt, if any, included), or the plain QA format with the tokenizer's special tokens.
    This is the shared input (the evaluator's template), not a metric definition."""
    if getattr(tokenizer, "chat_template", None):
        return _ids(tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=True, add_generation_prompt=True))
    return tokenizer(PLAIN_TEMPLATE.format(question=question), add_special_tokens=True)["input_ids"]


def conversation_ids(tokenizer, question: str, answer: str) -> tuple[list[int], int]:
    """The scored sequence of one (question, answer) pair and the number of leading prompt tokens not scored.

    open-unlearning `src/data/utils.py` `preprocess_chat_instance`: the whole conversation (user turn and
    assistant answer) is tokenized through the chat template; the EOS token is appended when the conversation does
    not already end with it; the labels are the conversation's tokens after the first len(prompt) tokens. So every
    token the template puts after the answer (for a ChatML template, `<|im_end|>` and a newline) is scored, plus the
    appended EOS. Without a chat template the prompt and the answer (after a space, the evaluator's plain format)
    are tokenized together, with the tokenizer's special tokens.
    """
    prompt = prompt_ids(tokenizer, question)
    if getattr(tokenizer, "chat_template", None):
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        ids = _ids(tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=False))
    else:
        text = PLAIN_TEMPLATE.format(question=question) + " " + answer.lstrip()
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and ids[-1] != tokenizer.eos_token_id:
        ids = ids + [tokenizer.eos_token_id]
    return ids, len(prompt)


# ----------------------------------------------------------------------------------------------------------------
# Probability and truth ratio


@dataclass
class Scored:
    """The scored tokens of one (question, answer) pair and their log-probabilities."""

    token_ids: list[int]
    token_logprobs: list[float]

    @property
    def avg_loss(self) -> float:
        """-(1/T) sum_t log p(y_t | y_<t) over the T scored tokens (open-unlearning `avg_loss`)."""
        return -float(np.mean(np.asarray(self.token_logprobs, dtype=np.float64)))


@torch.no_grad()
def score(model, tokenizer, question: str, answer: str) -> Scored:
    """Log-probabilities of the scored tokens of one (question, answer) pair, from one unpadded forward pass of the
    whole conversation (no attention mask, no padding).

    open-unlearning `src/evals/metrics/utils.py` `evaluate_probability`: cross-entropy of the shifted logits
    (position t predicts token t + 1) against the labels, summed over the labelled tokens and divided by their
    number (`avg_loss`); the labels are those of `conversation_ids`.
    """
    ids, prompt_length = conversation_ids(tokenizer, question, answer)
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
    log_probs = torch.log_softmax(logits[:-1], dim=-1)  # position t predicts token t + 1
    targets = torch.tensor(ids[1:], device=device)
    token_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[prompt_length - 1 :]
    if token_log_probs.numel() == 0:
        raise ValueError(f"No scored token for the answer {answer[:60]!r}.")
    return Scored(ids[prompt_length:], token_log_probs.tolist())


def probability(avg_loss: float) -> float:
    """Length-normalised answer probability exp(-avg_loss).

    open-unlearning `src/evals/metrics/utils.py` `evaluate_probability` (`normalized_probs`); the metric
    (`src/evals/metrics/memorization.py` `probability`, config `forget_Q_A_Prob.yaml`) averages it over items.
    """
    return math.exp(-avg_loss)


def truth_ratio(paraphrased_avg_loss: float, perturbed_avg_losses: list[float]) -> float:
    """Per-item truth ratio: P(wrong) / (P(correct) + 1e-10), with P(correct) = exp(-avg_loss of the paraphrased
    answer) and P(wrong) = exp(-mean_j avg_loss of the perturbed answers) (the geometric mean of the perturbed
    answers' length-normalised probabilities).

    open-unlearning `src/evals/metrics/memorization.py` `truth_ratio` (`aggregate_to_1D` averages the perturbed
    answers' avg_loss before the exp; `wrong_prob / (correct_prob + 1e-10)`), with correct/wrong as in
    `configs/eval/tofu_metrics/forget_Truth_Ratio.yaml` (`forget_Q_A_PARA_Prob`, `forget_Q_A_PERT_Prob`). TOFU
    `aggregate_eval_stat.py` writes the inverse, exp(mean perturbed loss - paraphrased loss).
    """
    correct = math.exp(-paraphrased_avg_loss)
    wrong = math.exp(-float(np.mean(perturbed_avg_losses)))
    return wrong / (correct + EPSILON)


def closer_to_1_better(truth_ratios) -> float:
    """Forget-set aggregate: mean(min(TR, 1 / (TR + 1e-10))).

    open-unlearning `src/evals/metrics/memorization.py` `truth_ratio.closer_to_1_better`, the aggregator of
    `configs/eval/tofu_metrics/forget_Truth_Ratio.yaml`; TOFU `aggregate_eval_stat.py`: mean(min(x, 1/x))."""
    tr = np.asarray(truth_ratios, dtype=np.float64)
    return float(np.mean(np.minimum(tr, 1 / (tr + EPSILON))))


def true_better(truth_ratios) -> float:
    """Retain, real-authors and world-facts aggregate: mean(max(0, 1 - TR)).

    open-unlearning `src/evals/metrics/memorization.py` `truth_ratio.true_better` (`retain_Truth_Ratio.yaml`,
    `ra_Truth_Ratio.yaml`, `wf_Truth_Ratio.yaml`); TOFU `aggregate_eval_stat.py`: mean(max(0, 1 - 1/x))."""
    tr = np.asarray(truth_ratios, dtype=np.float64)
    return float(np.mean(np.maximum(0, 1 - tr)))


# ----------------------------------------------------------------------------------------------------------------
# Generation and ROUGE


def stop_ids(model, tokenizer) -> set[int]:
    """Where a greedy answer ends: the model's generation-config EOS ids (where open-unlearning's `model.generate`
    stops) and the tokenizer's EOS (where `eval_text_similarity` cuts the text)."""
    config_ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set([config_ids] if isinstance(config_ids, int) else config_ids or [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    stopped_at_eos: bool
    # per step: top-1 minus top-2 logit (how close greedy decoding was to picking another token)
    margins: list[float] = field(default_factory=list)


@torch.no_grad()
def greedy_answer(model, tokenizer, question: str, max_new_tokens: int = MAX_NEW_TOKENS) -> Generation:
    """Greedy answer to one unpadded prompt, one token per forward pass (the KV cache of the answer so far is kept,
    as `generate` does): the argmax token is appended until a stop id or `max_new_tokens` tokens.

    open-unlearning `configs/generation/default.yaml` (do_sample: False, max_new_tokens: 200) and
    `src/evals/metrics/utils.py` `eval_text_similarity` (decoded with skip_special_tokens and
    clean_up_tokenization_spaces, cut at the EOS text, stripped).
    """
    device = next(model.parameters()).device
    stops = stop_ids(model, tokenizer)
    out = model(input_ids=torch.tensor([prompt_ids(tokenizer, question)], device=device), use_cache=True)
    generated, margins, stopped = [], [], False
    for _ in range(max_new_tokens):
        logits = out.logits[0, -1].float()
        top = torch.topk(logits, 2).values
        margins.append(float(top[0] - top[1]))
        token = int(torch.argmax(logits))
        if token in stops:
            stopped = True
            break
        generated.append(token)
        out = model(input_ids=torch.tensor([[token]], device=device), past_key_values=out.past_key_values, use_cache=True)
    text = tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    if tokenizer.eos_token is not None:
        text = text.split(tokenizer.eos_token)[0]
    return Generation(text.strip(), generated, stopped, margins)


def rouge_ground_truth(tokenizer, question: str, answer: str) -> str:
    """The text ROUGE compares against: the conversation's labels decoded (special tokens skipped), the decoded
    prompt removed, stripped.

    open-unlearning `src/evals/metrics/utils.py` `eval_text_similarity` (`ground_truths`), with the labels of
    `src/data/utils.py` `preprocess_chat_instance(predict_with_generate=True)` (the whole conversation).
    """
    ids, prompt_length = conversation_ids(tokenizer, question, answer)
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True, clean_up_tokenization_spaces=True)  # noqa: E731
    return decode(ids).replace(decode(ids[:prompt_length]), "").strip()


_SCORER = None


def rouge_l_recall(generation: str, ground_truth: str) -> float:
    """ROUGE-L recall (LCS of stemmed lower-cased alphanumeric words / words of the ground truth), with the
    `rouge_score` package as the reference uses it.

    open-unlearning `src/evals/metrics/utils.py` `eval_text_similarity.eval_rouge_recall_batch`:
    `RougeScorer(["rouge1", "rougeL"], use_stemmer=True).score(gt, gen)["rougeL"].recall`.
    """
    global _SCORER
    if _SCORER is None:
        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _SCORER.score(ground_truth, generation)["rougeL"].recall


# ----------------------------------------------------------------------------------------------------------------
# One item


@dataclass
class ItemMetrics:
    probability: float
    truth_ratio: float
    rouge_l_recall: float
    generation: Generation
    ground_truth: str
    answer: Scored
    paraphrased: Scored
    perturbed: list[Scored]
    scoring_s: float
    generation_s: float


def evaluate_item(model, tokenizer, row: dict, max_new_tokens: int = MAX_NEW_TOKENS) -> ItemMetrics:
    """All forget-set metrics of one TOFU `*_perturbed` row (`question`, `answer`, `paraphrased_answer`,
    `perturbed_answer`): every answer scored given `question` (open-unlearning `configs/eval/tofu.yaml`
    `question_key: question`; TOFU `config/eval_everything.yaml` `question_key`)."""
    question = row["question"]
    start = time.perf_counter()
    answer = score(model, tokenizer, question, row["answer"])
    paraphrased = score(model, tokenizer, question, row["paraphrased_answer"])
    perturbed = [score(model, tokenizer, question, p) for p in row["perturbed_answer"]]
    scored = time.perf_counter()
    generation = greedy_answer(model, tokenizer, question, max_new_tokens)
    generated = time.perf_counter()
    ground_truth = rouge_ground_truth(tokenizer, question, row["answer"])
    return ItemMetrics(
        probability=probability(answer.avg_loss),
        truth_ratio=truth_ratio(paraphrased.avg_loss, [p.avg_loss for p in perturbed]),
        rouge_l_recall=rouge_l_recall(generation.text, ground_truth),
        generation=generation,
        ground_truth=ground_truth,
        answer=answer,
        paraphrased=paraphrased,
        perturbed=perturbed,
        scoring_s=scored - start,
        generation_s=generated - scored,
    )
