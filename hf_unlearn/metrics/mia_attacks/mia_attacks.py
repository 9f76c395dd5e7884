"""The four membership-inference attacks' AUCs (LOSS, zlib, Min-K%, Min-K%++) as an `evaluate` metric; the
scores are `hf_unlearn.eval.mia.attack_scores`, the AUCs `hf_unlearn.eval.mia.mia_aucs`."""

import datasets
import evaluate

from hf_unlearn.eval.mia import MIN_K_FRACTION, attack_scores, mia_aucs


_DESCRIPTION = """\
AUCs of the LOSS, zlib, Min-K% and Min-K%++ attacks from per-token statistics of each example (what
`hf_unlearn.eval.score_answers` and `score_texts` return): its token log-probs, its Min-K%++ z-scores and its text.
Min-K% and Min-K%++ leave out the final EOS when `ends_with_eos` (open-unlearning, `src/evals/metrics/utils.py`,
`tokenwise_logprobs`); LOSS and zlib average over every token. AUCs are oriented as `mia_auc` (1 member, 0
non-member; 1 = members always score higher).
"""

_KWARGS_DESCRIPTION = """
Args:
    token_logprobs (`list` of `list` of `float`): per example, the log-probability of each scored token.
    token_zscores (`list` of `list` of `float`): per example, the Min-K%++ z-score of each scored token.
    texts (`list` of `str`): per example, its text (the zlib attack divides by its compressed length).
    references (`list` of `int`): 1 for a member (forget set), 0 for a non-member (holdout set).
    k (`float`, default 0.4): the Min-K% fraction.
    ends_with_eos (`bool`, default True): the last scored token is an appended EOS (answers scored by
        `score_answers`); False for texts scored by `score_texts`.
Returns:
    loss, zlib, min_k, min_k_plus_plus (`float`): each attack's AUC.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MIAAttacks(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "token_logprobs": datasets.Sequence(datasets.Value("float64")),
                    "token_zscores": datasets.Sequence(datasets.Value("float64")),
                    "texts": datasets.Value("string"),
                    "references": datasets.Value("int32"),
                }
            ),
            reference_urls=["https://github.com/locuslab/open-unlearning"],
        )

    def _compute(self, token_logprobs, token_zscores, texts, references, k=MIN_K_FRACTION, ends_with_eos=True):
        if set(references) - {0, 1}:
            raise ValueError(f"MIA labels must be 1 (member) or 0 (non-member), got {sorted(set(references) - {0, 1})}.")
        scores = [attack_scores(lp, z, text, k, ends_with_eos) for lp, z, text in zip(token_logprobs, token_zscores, texts)]
        members = [s for s, label in zip(scores, references) if label == 1]
        nonmembers = [s for s, label in zip(scores, references) if label == 0]
        return mia_aucs(members, nonmembers)
