"""ROUGE-L with `rouge-score` directly (`evaluate.load("rouge")` fetches its script from the Hub)."""

from __future__ import annotations

from functools import lru_cache

from rouge_score import rouge_scorer


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> tuple[float, float]:
    """ROUGE-L (recall, F1) of a prediction against a reference (LCS over stemmed words)."""
    score = _scorer().score(reference, prediction)["rougeL"]
    return score.recall, score.fmeasure


def rouge_l_recall(predictions: list[str], references: list[str]) -> list[float]:
    return [rouge_l(p, r)[0] for p, r in zip(predictions, references, strict=True)]


def rouge_l_f1(predictions: list[str], references: list[str]) -> list[float]:
    return [rouge_l(p, r)[1] for p, r in zip(predictions, references, strict=True)]


@lru_cache(maxsize=1)
def _unstemmed_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l_f1_unstemmed(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 without stemming, as MUSE scores VerbMem and KnowMem."""
    return [_unstemmed_scorer().score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
