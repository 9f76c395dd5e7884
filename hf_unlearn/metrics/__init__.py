"""hf_unlearn's metrics as local `evaluate` modules, loadable offline by path.

    from hf_unlearn import metrics

    privleak = metrics.load("privleak")  # or evaluate.load(metrics.metric_path("privleak"))
    privleak.compute(predictions=[0.9], references=[0.6])  # {"privleak": -75.0}, percent

Each module (`hf_unlearn/metrics/<name>/<name>.py`, an `evaluate.Metric`) calls the library function that the
TOFU and MUSE evaluators call, so there is one implementation of every formula:

| name | inputs | library function |
|---|---|---|
| `forget_quality` | the model's and the retain model's forget-set truth ratios | `hf_unlearn.eval.tofu.forget_quality` |
| `truth_ratio` | per item: NLL of the paraphrased answer, NLLs of the perturbed ones | `hf_unlearn.eval.tofu.truth_ratio` |
| `mia_auc` | attack scores (higher = member) and labels (1 member, 0 non-member) | `hf_unlearn.eval.mia.mia_auc` |
| `mia_attacks` | per example: token log-probs, Min-K%++ z-scores, text, label | `hf_unlearn.eval.mia.attack_scores` |
| `privleak` | the model's and the retain model's Min-K% AUCs | `hf_unlearn.eval.mia.privleak` |
| `rouge_l` | generations and true answers; config "tofu" or "muse" | `hf_unlearn.eval.rouge` |

Loading by path needs no network: `evaluate.load` copies the script into its modules cache and imports it.
"""

from __future__ import annotations

from pathlib import Path


METRICS = ("forget_quality", "truth_ratio", "mia_auc", "mia_attacks", "privleak", "rouge_l")
_ROOT = Path(__file__).resolve().parent


def metric_path(name: str) -> str:
    """The path of metric `name`'s `evaluate` script, for `evaluate.load(path)`."""
    if name not in METRICS:
        raise ValueError(f"No hf_unlearn metric named {name!r}: choose one of {', '.join(METRICS)}.")
    return str(_ROOT / name / f"{name}.py")


def load(name: str, config_name: str | None = None, **kwargs):
    """`evaluate.load` of metric `name` from this package (offline); `kwargs` go to `evaluate.load`."""
    import evaluate

    return evaluate.load(metric_path(name), config_name=config_name, **kwargs)


__all__ = ["METRICS", "load", "metric_path"]
