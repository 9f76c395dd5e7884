"""TOFU's truth ratio as an `evaluate` metric; the formulas are `hf_unlearn.eval.tofu.truth_ratio` and its two
statistics, `forget_truth_ratio_statistic` and `retain_truth_ratio_statistic`."""

import math

import datasets
import evaluate

from hf_unlearn.eval.tofu import forget_truth_ratio_statistic, retain_truth_ratio_statistic, truth_ratio


STATISTICS = {"forget": forget_truth_ratio_statistic, "retain": retain_truth_ratio_statistic}

_DESCRIPTION = """\
Truth ratio (TOFU), per item: exp(NLL_paraphrased - mean_j NLL_perturbed_j) = (geometric mean_j P(perturbed_j)) /
P(paraphrased), each NLL the mean token NLL of that answer given the question. `statistic` aggregates the items as
`hf_unlearn.eval.tofu` does: "forget" for the forget set, "retain" for the retain, real-authors and world-facts
sets (see those functions for the formulas and their reference).
"""

_KWARGS_DESCRIPTION = """
Args:
    paraphrased_nll (`list` of `float`): per item, the mean token NLL of the paraphrased answer.
    perturbed_nll (`list` of `list` of `float`): per item, the mean token NLL of each perturbed answer.
    statistic (`str`, default "forget"): "forget" or "retain".
Returns:
    truth_ratio (`float`): the statistic over the items.
    truth_ratios (`list` of `float`): the per-item truth ratios.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TruthRatio(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"paraphrased_nll": datasets.Value("float64"), "perturbed_nll": datasets.Sequence(datasets.Value("float64"))}
            ),
            reference_urls=["https://github.com/locuslab/tofu", "https://github.com/locuslab/open-unlearning"],
        )

    def _compute(self, paraphrased_nll, perturbed_nll, statistic="forget"):
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be 'forget' or 'retain', got {statistic!r}.")
        if any(len(row) == 0 for row in perturbed_nll):
            raise ValueError("Every item needs at least one perturbed answer's NLL.")
        width = max(len(row) for row in perturbed_nll)
        padded = [list(row) + [math.nan] * (width - len(row)) for row in perturbed_nll]  # NaN pads ragged rows
        ratios = truth_ratio(paraphrased_nll, padded)
        return {"truth_ratio": STATISTICS[statistic](ratios), "truth_ratios": ratios.tolist()}
