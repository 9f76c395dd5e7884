"""Membership-inference AUC as an `evaluate` metric; the formula is `hf_unlearn.eval.mia.mia_auc`."""

import datasets
import evaluate

from hf_unlearn.eval.mia import mia_auc


_DESCRIPTION = """\
Membership-inference AUC: P(member score > non-member score) + 0.5 * P(tie), by Mann-Whitney ranks, with scores
oriented so that higher means "more likely a member". With the forget set as members and the holdout set as
non-members this is open-unlearning's MIA AUC (`src/evals/metrics/mia/utils.py`, `mia_auc`) and 1 minus MUSE's
(`eval.py`, `forget_holdout_*` keys, which label the holdout set as members).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): one attack score per example, higher = more likely a member.
    references (`list` of `int`): 1 for a member (forget set), 0 for a non-member (holdout set).
Returns:
    auc (`float`): in [0, 1]; 0.5 when the scores do not tell members from non-members.
Examples:
    >>> mia_auc = hf_unlearn.metrics.load("mia_auc")
    >>> mia_auc.compute(predictions=[3.0, 2.0, 1.0, 2.0, 0.0], references=[1, 1, 1, 0, 0])
    {'auc': 0.75}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MIAAUC(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("int32")}),
            reference_urls=["https://github.com/locuslab/open-unlearning"],
        )

    def _compute(self, predictions, references):
        if set(references) - {0, 1}:
            raise ValueError(f"MIA labels must be 1 (member) or 0 (non-member), got {sorted(set(references) - {0, 1})}.")
        members = [s for s, label in zip(predictions, references) if label == 1]
        nonmembers = [s for s, label in zip(predictions, references) if label == 0]
        return {"auc": mia_auc(members, nonmembers)}
