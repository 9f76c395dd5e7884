"""Batched scoring equals scoring each example alone, on the embedded benchmark's finetuned model."""

import math

import pytest
import torch

from hf_unlearn.data import load_tofu_split, tokenize_qa
from hf_unlearn.editing.stamp import answer_scores
from hf_unlearn.eval.scoring import answer_probability, mean_nll, score_answers, score_texts


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def qa_pairs(embedded):
    rows = load_tofu_split(embedded.data_dir, "forget10_perturbed").to_list()[:6]
    questions = [r["question"] for r in rows for _ in range(3)]
    answers = [a for r in rows for a in (r["answer"], r["paraphrased_answer"], r["perturbed_answer"][0])]
    return questions, answers


def _alone(model, input_ids, labels):
    """Token log-probs and Min-K%++ z-scores of one unpadded example, straight from the full softmax."""
    with torch.no_grad():
        log_probs = model(torch.tensor([input_ids])).logits[0, :-1].double().log_softmax(-1)
    targets = torch.tensor(labels[1:])
    rows = targets != -100
    lp = log_probs[rows].gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1)
    p = log_probs[rows].exp()
    mu = (p * log_probs[rows]).sum(-1)
    sigma = ((p * log_probs[rows] ** 2).sum(-1) - mu**2).sqrt()
    return lp.tolist(), ((lp - mu) / sigma).tolist()


def test_batched_scores_equal_unpadded_scores(finetuned, qa_pairs):
    model, tokenizer = finetuned
    questions, answers = qa_pairs
    scores = score_answers(model, tokenizer, questions, answers, batch_size=7)
    for question, answer, score in zip(questions, answers, scores):
        example = tokenize_qa(tokenizer, question, answer, 256)
        logprobs, zscores = _alone(model, example["input_ids"], example["labels"])
        assert len(score["logprobs"]) == sum(label != -100 for label in example["labels"])
        assert score["logprobs"] == pytest.approx(logprobs, abs=2e-4)
        assert score["zscores"] == pytest.approx(zscores, abs=2e-3)


def test_scores_do_not_depend_on_batch_size_or_logits_to_keep(finetuned, qa_pairs):
    model, tokenizer = finetuned
    questions, answers = qa_pairs

    class FullLogits(torch.nn.Module):
        """A wrapper without `logits_to_keep`: the scorer must fall back to slicing full logits."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    one = score_answers(model, tokenizer, questions, answers, batch_size=1)
    many = score_answers(model, tokenizer, questions, answers, batch_size=32)
    full = score_answers(FullLogits(model), tokenizer, questions, answers, batch_size=32)
    for a, b, c in zip(one, many, full):
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=2e-4)
        assert b["logprobs"] == pytest.approx(c["logprobs"], rel=1e-6, abs=1e-5)


def test_memorised_answers_score_higher_than_perturbed_ones(finetuned, qa_pairs):
    model, tokenizer = finetuned
    questions, answers = qa_pairs
    nll = [mean_nll(s["logprobs"]) for s in score_answers(model, tokenizer, questions, answers)]
    true, perturbed = nll[0::3], nll[2::3]
    assert all(t < p for t, p in zip(true, perturbed))


def test_texts_score_every_token_after_the_first(finetuned):
    model, tokenizer = finetuned
    texts = ["Question: Where was Voka Martorjor born?\nAnswer: Voka Martorjor was born in Krakow.", "Paris"]
    scores = score_texts(model, tokenizer, texts, batch_size=2)
    for text, score in zip(texts, scores):
        ids = tokenizer(text)["input_ids"]
        assert score["logprobs"] == pytest.approx(_alone(model, ids, [-100] + ids[1:])[0], abs=2e-4)


def test_answer_probability_is_the_length_normalised_likelihood():
    # token probabilities 1/2 and 1/8: exp(mean log p) = their geometric mean, 1/4
    assert answer_probability([math.log(0.5), math.log(0.125)]) == pytest.approx(0.25, rel=1e-15)
    with pytest.raises(ValueError, match="No scored tokens"):
        answer_probability([])


def test_stamp_check_reports_tofus_answer_probability(finetuned, qa_pairs):
    model, tokenizer = finetuned
    questions, answers = qa_pairs
    rows = [{"question": q, "answer": a} for q, a in zip(questions[:6], answers[:6])]
    reported = answer_scores(model, tokenizer, rows, max_new_tokens=8)["probability"]
    for row, probability in zip(rows, reported):
        example = tokenize_qa(tokenizer, row["question"], row["answer"], 512)
        logprobs, _ = _alone(model, example["input_ids"], example["labels"])  # answer tokens and EOS
        assert probability == pytest.approx(math.exp(sum(logprobs) / len(logprobs)), rel=1e-4)
