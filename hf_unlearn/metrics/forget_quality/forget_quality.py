"""TOFU's forget quality as an `evaluate` metric; the formula is `hf_unlearn.eval.tofu.forget_quality`."""

import datasets
import evaluate

from hf_unlearn.eval.tofu import forget_quality


_CITATION = """\
@article{maini2024tofu,
  title={TOFU: A Task of Fictitious Unlearning for LLMs},
  author={Maini, Pratyush and Feng, Zhili and Schwarzschild, Avi and Lipton, Zachary C. and Kolter, J. Zico},
  journal={arXiv preprint arXiv:2401.06121},
  year={2024}
}
"""

_DESCRIPTION = """\
Forget quality (TOFU): the p-value of the two-sample Kolmogorov-Smirnov test between the forget-set truth ratios
of the evaluated model and those of the retain model (open-unlearning `src/evals/metrics/privacy.py`, `ks_test`).
High (near 1): the two distributions are indistinguishable.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): the evaluated model's per-item forget-set truth ratios.
    references (`list` of `float`): the retain model's, on the same items.
Returns:
    forget_quality (`float`): the KS-test p-value.
Examples:
    >>> forget_quality = hf_unlearn.metrics.load("forget_quality")
    >>> round(forget_quality.compute(predictions=[1.0, 2.0, 3.0], references=[4.0, 5.0, 6.0])["forget_quality"], 6)
    0.1
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ForgetQuality(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
            reference_urls=["https://github.com/locuslab/tofu", "https://github.com/locuslab/open-unlearning"],
        )

    def _compute(self, predictions, references):
        return {"forget_quality": forget_quality(predictions, references)}
