"""ROUGE-L as TOFU and MUSE compute it, as an `evaluate` metric; the formulas are `hf_unlearn.eval.rouge`'s."""

import datasets
import evaluate

from hf_unlearn.eval.rouge import rouge_l_f1_unstemmed, rouge_l_recall


CONFIGS = {"tofu": ("rougeL_recall", rouge_l_recall), "muse": ("rougeL_f1", rouge_l_f1_unstemmed)}

_DESCRIPTION = """\
ROUGE-L (longest common subsequence of words, `rouge_score`) of each generation against its true answer, averaged.
Config "tofu" (default): recall with Porter stemming, TOFU's `forget_rougeL_recall` and the others
(`hf_unlearn.eval.rouge.rouge_l_recall`). Config "muse": F1 without stemming, MUSE's VerbMem and KnowMem
(`hf_unlearn.eval.rouge.rouge_l_f1_unstemmed`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated answers.
    references (`list` of `str`): true answers.
Returns:
    rougeL_recall (`float`, config "tofu") or rougeL_f1 (`float`, config "muse"): the mean over the items.
Examples:
    >>> rouge = hf_unlearn.metrics.load("rouge_l")
    >>> rouge.compute(predictions=["the cat sat"], references=["the cat sat on the mat"])
    {'rougeL_recall': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RougeL(evaluate.Metric):
    def _info(self):
        if self._config() not in CONFIGS:
            raise ValueError(f"Unknown rouge_l config {self.config_name!r}: choose 'tofu' or 'muse'.")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            reference_urls=["https://github.com/locuslab/tofu", "https://github.com/swj0419/muse_bench"],
        )

    def _config(self):
        return "tofu" if self.config_name in (None, "default") else self.config_name

    def _compute(self, predictions, references):
        key, function = CONFIGS[self._config()]
        scores = function(list(predictions), list(references))
        return {key: sum(scores) / len(scores)}
