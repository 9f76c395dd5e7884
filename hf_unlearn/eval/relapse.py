"""The quantization-relapse evaluator: does 4-bit or 8-bit quantization bring forgotten knowledge back? (Zhang et
al., 2024, "Catastrophic Failure of LLM Unlearning via Quantization").

`evaluate_relapse` evaluates the unlearned (and optionally the original) model at full precision and at each
precision of `hf_unlearn.eval.quantization` (bitsandbytes NF4/FP4/int8 and round-to-nearest fake quantizers).
Relapse of a forget metric at precision q = metric(quantized model) - metric(full-precision model), for metrics
where higher means more knowledge (forget ROUGE-L recall, forget answer probability); the share of the forgotten
knowledge recovered is (unlearned at q - unlearned at full) / (original at full - unlearned at full).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path

import torch
from transformers import PreTrainedModel

from . import quantization
from .quantization import (
    DEFAULT_PRECISIONS,
    FULL_PRECISION,
    KNOWLEDGE_METRICS,
    TABLE_METRICS,
    changed_weights,
    check_not_quantized,
    merged_model,
    parse_precision,
    quantized_linear_names,
)


@contextlib.contextmanager
def _quiet_int8_casts():
    """bitsandbytes logs "MatMul8bitLt: inputs will be cast ..." at every int8 matmul of a float32 model."""
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def relapse_table(evaluations: dict[str, dict[str, dict]], precisions: list[str]) -> dict[str, dict[str, dict]]:
    """Relapse per model and precision: metric(quantized) - metric(full precision) for `KNOWLEDGE_METRICS`, and the
    same for `model_utility` (its change). `evaluations` is {model: {precision: evaluation}} with `"full"`."""
    table: dict[str, dict[str, dict]] = {}
    for model, by_precision in evaluations.items():
        full = by_precision[FULL_PRECISION]
        table[model] = {}
        for precision in precisions:
            quantized = by_precision[precision]
            table[model][precision] = {
                f"relapse_{metric}": _difference(quantized.get(metric), full.get(metric))
                for metric in (*KNOWLEDGE_METRICS, "model_utility")
            }
    return table


def _difference(a, b):
    return None if a is None or b is None else float(a) - float(b)


def recovered_fraction(unlearned_quantized: float, unlearned_full: float, original_full: float, min_forgotten: float = 0.01) -> float | None:
    """Share of the forgotten knowledge that quantization brings back: (q - u) / (o - u), with u, q the unlearned
    model's metric at full precision and quantized, o the original model's at full precision; None when less than
    `min_forgotten` was forgotten (o - u), where the ratio would be noise."""
    forgotten = original_full - unlearned_full
    return None if forgotten < min_forgotten else (unlearned_quantized - unlearned_full) / forgotten


def evaluate_relapse(
    model,
    tokenizer,
    data: str | os.PathLike,
    precisions=DEFAULT_PRECISIONS,
    original=None,
    label: str = "unlearned",
    original_label: str = "original",
    full_precision: dict | None = None,
    original_evaluations: dict[str, dict] | None = None,
    device: str | torch.device | None = None,
    **eval_kwargs,
) -> dict:
    """Evaluate `model` (and `original`, the model before unlearning, when given) at full precision and at each
    precision with `evaluate_tofu`; report relapse and the share of weights whose quantized value changed.

    Args:
        precisions: names for `parse_precision` (default: `nf4` and `int8` with bitsandbytes).
        original: the model before unlearning (object or path): evaluated too, and compared weight by weight.
        label / original_label: the two models' names in the result.
        full_precision: `model`'s evaluation already computed at full precision (skips it).
        original_evaluations: the original's evaluations already computed with the same settings, {precision:
            `evaluate_tofu` result or its headline numbers}: e.g. `{"full": ...}`, or an earlier call's
            `result["evaluations"][original_label]`. The precisions found there are not evaluated again, so several
            unlearned models can be compared with one original at the cost of one.
        device: where quantized copies run (default: the model's device).
        eval_kwargs: passed to `evaluate_tofu` (`forget_split`, `reference`, `max_items`, `max_new_tokens`, ...).

    Returns a JSON-serialisable dict: `precisions`, `evaluations` {model label: {precision: headline numbers}},
    `relapse` {label: {precision: {relapse_<metric>: rise}}}, `recovered` {precision: {metric: fraction}},
    `changed_weights` {precision: fractions}, `settings`.
    """
    from .report import headline
    from .tofu import evaluate_tofu

    specs = [parse_precision(p) for p in precisions]
    if not specs:
        raise ValueError("Name at least one precision, e.g. precisions=['nf4', 'int8'].")
    model = merged_model(model)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"Quantization relapse quantizes a transformers model (or a PEFT model over one), got {type(model).__name__}. "
            "A model that combines several (like ULD's logit difference) has no single set of weights to quantize."
        )
    check_not_quantized(model)
    if isinstance(original, (str, os.PathLike)):
        from ..modeling import load_causal_lm

        check_not_quantized(original)
        original, _ = load_causal_lm(original)
    models = {label: (model, {FULL_PRECISION: headline(full_precision)} if full_precision is not None else {})}
    if original is not None:
        check_not_quantized(original)
        known = {precision: headline(numbers) for precision, numbers in (original_evaluations or {}).items()}
        models[original_label] = (original, known)
    eval_kwargs.setdefault("progress", False)

    evaluations: dict[str, dict[str, dict]] = {}
    for name, (candidate, known) in models.items():
        target_device = device if device is not None else next(candidate.parameters()).device
        evaluations[name] = {}
        if FULL_PRECISION in known:
            evaluations[name][FULL_PRECISION] = known[FULL_PRECISION]
        else:
            full = evaluate_tofu(candidate.to(target_device), tokenizer, data, **eval_kwargs)
            evaluations[name][FULL_PRECISION] = headline(full)
        for spec in specs:
            if spec.name in known:
                evaluations[name][spec.name] = known[spec.name]
                continue
            quantized = quantization.load_quantized(candidate, spec, device=target_device)
            with _quiet_int8_casts():
                result = evaluate_tofu(quantized, tokenizer, data, **eval_kwargs)
            evaluations[name][spec.name] = headline(result)
            del quantized

    names = [s.name for s in specs]
    summary = {
        "label": label,
        "original_label": original_label if original is not None else None,
        "precisions": [FULL_PRECISION, *names],
        "evaluations": evaluations,
        "relapse": relapse_table(evaluations, names),
        "settings": {
            "data": str(data),
            "precisions": {s.name: vars(s) for s in specs},
            "quantized_layers": quantized_linear_names(model),
            "evaluation": {k: v for k, v in eval_kwargs.items() if k not in ("reference", "accelerator")},
        },
    }
    if original is not None:
        summary["changed_weights"] = {s.name: changed_weights(original, model, s) for s in specs}
        summary["recovered"] = {
            s.name: {
                metric: recovered_fraction(
                    evaluations[label][s.name][metric], evaluations[label][FULL_PRECISION][metric],
                    evaluations[original_label][FULL_PRECISION][metric],
                )
                for metric in KNOWLEDGE_METRICS
            }
            for s in specs
        }
    return summary


def quantized_results(relapse: dict) -> dict[str, dict]:
    """The quantized evaluations of an `evaluate_relapse` result as `write_report` results, labelled
    `<model> @ <precision>`, so they appear as columns of an evaluation report."""
    return {
        f"{model} @ {precision}": numbers
        for model, by_precision in relapse["evaluations"].items()
        for precision, numbers in by_precision.items()
        if precision != FULL_PRECISION
    }


# ----------------------------------------------------------------------------------------------------------------
# Report


def relapse_markdown(relapse: dict, title: str = "Quantization relapse") -> str:
    """Markdown: one row per (model, precision) with the forget metrics, utility, relapse and changed weights."""
    from .report import format_number

    columns = [*TABLE_METRICS, *(f"relapse_{m}" for m in KNOWLEDGE_METRICS)]
    has_changed = "changed_weights" in relapse
    header = ["model", "precision", *columns] + (["weights in another bucket"] if has_changed else [])
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for model, by_precision in relapse["evaluations"].items():
        for precision, numbers in by_precision.items():
            rise = relapse["relapse"][model].get(precision, {})
            cells = [format_number(numbers.get(m)) for m in TABLE_METRICS]
            cells += [format_number(rise.get(f"relapse_{m}")) for m in KNOWLEDGE_METRICS]
            if has_changed:
                changed = relapse["changed_weights"].get(precision)
                cells.append(format_number(changed["changed_code"]) if changed and model != relapse.get("original_label") else "-")
            lines.append(f"| {model} | {precision} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Relapse: rise of the forget metric after quantization over full precision (higher = knowledge returns).",
    ]
    if has_changed:
        lines.append("Weights in another bucket: share of quantized-layer weights that round to another quantization "
                     "level in the unlearned model than in the original.")
        for precision, fractions in relapse.get("recovered", {}).items():
            shown = ", ".join(f"{m} {format_number(v)}" for m, v in fractions.items())
            lines.append(f"- {precision}: share of the forgotten knowledge recovered: {shown}")
    return "\n".join(lines) + "\n"


def relapse_figure(relapse: dict, title: str = "Quantization relapse"):
    """Bars of forget ROUGE-L recall, forget probability and model utility per precision, one group per model."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4), layout="constrained")
    axes = figure.subplots(1, 3)
    precisions = relapse["precisions"]
    models = list(relapse["evaluations"])
    width = 0.8 / max(1, len(models))
    for ax, metric in zip(axes, ("forget_rougeL_recall", "forget_prob", "model_utility")):
        for index, model in enumerate(models):
            values = [relapse["evaluations"][model].get(p, {}).get(metric) for p in precisions]
            positions = [i + (index - (len(models) - 1) / 2) * width for i in range(len(precisions))]
            ax.bar(positions, [v if v is not None and not math.isnan(v) else 0 for v in values], width=width, label=model)
        ax.set_xticks(range(len(precisions)))
        ax.set_xticklabels(precisions)
        ax.set_ylim(0, 1.05)
        ax.set_title(metric)
        ax.legend(fontsize=8)
    figure.suptitle(title)
    return figure


def write_relapse_report(relapse: dict, output_dir: str | os.PathLike, title: str = "Quantization relapse") -> dict[str, Path]:
    """Write `relapse.json`, `relapse.md` and `relapse.png` (or `relapse-N.*` when taken; never overwrites)."""
    import json

    from .report import publish_report

    output_dir = Path(output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    json_text = json.dumps({"title": title, **relapse}, indent=2, allow_nan=True)
    return publish_report(output_dir, "relapse", json_text, relapse_markdown(relapse, title),
                          relapse_figure(relapse, title))
