"""PrivLeak (MUSE, Shi et al., 2024) as an `evaluate` metric; the formula is `hf_unlearn.eval.mia.privleak`."""

import datasets
import evaluate

from hf_unlearn.eval.mia import privleak


_CITATION = """\
@article{shi2024muse,
  title={MUSE: Machine Unlearning Six-Way Evaluation for Language Models},
  author={Shi, Weijia and Lee, Jaechan and Huang, Yangsibo and Malladi, Sadhika and Zhao, Jieyu and Holtzman, Ari and Liu, Daogao and Zettlemoyer, Luke and Smith, Noah A. and Zhang, Chiyuan},
  journal={arXiv preprint arXiv:2407.06460},
  year={2024}
}
"""

_DESCRIPTION = """\
PrivLeak, in percent: 100 * ((1 - AUC_model) - (1 - AUC_retain)) / (1 - AUC_retain), from the forget-vs-holdout
membership-inference AUCs of the evaluated model and of the retain model, each with the forget set as members
(as `mia_auc` gives them). 1 - AUC is MUSE's AUC (holdout as members, key `forget_holdout_Min-40%` in MUSE's
`eval.py`); open-unlearning's `src/evals/metrics/privacy.py` (`privleak`) computes the same number. 0: the model
leaks as the retain model does; -100: it ranks every forget example above every holdout example; positive: it
leaks less than the retain model.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of one `float`): the evaluated model's AUC, forget set as members.
    references (`list` of one `float`): the retain model's AUC on the same forget and holdout sets.
Returns:
    privleak (`float`): PrivLeak in percent.
Examples:
    >>> privleak = hf_unlearn.metrics.load("privleak")
    >>> round(privleak.compute(predictions=[0.9], references=[0.6])["privleak"], 6)
    -75.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PrivLeak(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
            reference_urls=["https://github.com/swj0419/muse_bench", "https://github.com/locuslab/open-unlearning"],
        )

    def _compute(self, predictions, references):
        if len(predictions) != 1:
            raise ValueError(f"PrivLeak compares one model AUC with one retain AUC, got {len(predictions)} pairs: compute one pair at a time.")
        return {"privleak": privleak(predictions[0], references[0])}
