"""Evaluation reports: one JSON with every number and the settings behind it, a markdown table and a plot.

Files are written atomically (a temporary file, then a hard link that fails if the name is taken) and never
replace an earlier report: when `evaluation.json` exists the report becomes `evaluation-2.*`, and so on.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import tempfile
from pathlib import Path

from matplotlib.figure import Figure


REPORT_STEM = "evaluation"
TOFU_SETS = ("forget", "retain", "real_authors", "world_facts")
TOFU_METRICS = {"prob": "probability", "rougeL_recall": "ROUGE-L recall", "truth_ratio": "truth-ratio statistic"}
MUSE_METRICS = ("verbmem_f", "knowmem_f", "knowmem_r", "mia_auc_min_k")
UNITS = {"privleak": "%"}  # headline numbers that are not fractions: tables show the unit beside the name


def headline(result: dict) -> dict[str, float | int | None]:
    """The flat numeric headline numbers of an evaluation result (no per-item lists or settings)."""
    return {k: v for k, v in result.items() if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}


def read_evaluation(evaluation: dict | str | os.PathLike, label: str = "retain") -> dict:
    """An evaluation result from a dict, a saved result JSON, or a `write_report` JSON (its only result, or the
    one labelled `label`)."""
    if isinstance(evaluation, dict):
        loaded, source = evaluation, "the evaluation dict"
    else:
        path = Path(evaluation).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"No evaluation JSON at {path}: pass a saved evaluation or a report JSON.")
        try:
            loaded, source = json.loads(path.read_text(encoding="utf-8")), str(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not an evaluation JSON ({error}); pass the file a run or `hf-unlearn eval` "
                             "wrote (reference_eval.json, evaluation.json).") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} holds a JSON {type(loaded).__name__}, not an evaluation (a JSON object).")
    if "per_item" not in loaded and isinstance(loaded.get("results"), dict):
        results = loaded["results"]
        if label in results:
            return results[label]
        if len(results) == 1:
            return next(iter(results.values()))
        raise ValueError(
            f"{source} is a report of several models {sorted(results)} and none is labelled '{label}'. Pass that "
            "model's own evaluation instead."
        )
    return loaded


def write_report(
    results: dict[str, dict],
    output_dir: str | os.PathLike,
    title: str = "Unlearning evaluation",
    settings: dict | None = None,
) -> dict[str, Path]:
    """Write `results` (model label -> `evaluate_tofu` / `evaluate_muse` result) to `output_dir` as
    `evaluation.json`, `evaluation.md` and `evaluation.png` (or `evaluation-N.*` when taken). Returns the paths.

    Call it from one process only (e.g. `if accelerator.is_main_process:`).
    """
    if not results:
        raise ValueError("No results to report: pass {label: evaluation result}.")
    output_dir = Path(output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "title": title,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": settings or {},
        "headline": {label: headline(result) for label, result in results.items()},
        "results": results,
    }
    json_text = json.dumps(payload, indent=2, allow_nan=True)
    return publish_report(output_dir, REPORT_STEM, json_text, render_markdown(results, title, settings or {}),
                          render_figure(results, title))


def publish_report(output_dir: Path, stem: str, json_text: str, markdown: str, figure: Figure) -> dict[str, Path]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>.png` to `output_dir`, or `<stem>-N.*` with the first N whose
    three names are all free: never overwrites, and two processes publishing at once get different names."""
    for number in range(1, 10_000):
        name = stem if number == 1 else f"{stem}-{number}"
        paths = {kind: output_dir / f"{name}.{ext}" for kind, ext in (("json", "json"), ("markdown", "md"), ("plot", "png"))}
        if any(p.exists() for p in paths.values()):
            continue
        try:
            _publish(paths["json"], lambda f: f.write(json_text.encode()))  # claims the name
        except FileExistsError:
            continue
        _publish(paths["markdown"], lambda f: f.write(markdown.encode()))
        _publish(paths["plot"], lambda f: figure.savefig(f, format="png", dpi=120, bbox_inches="tight"))
        return paths
    raise RuntimeError(f"{output_dir} holds 9999 {stem} reports already; choose another output folder.")


def _publish(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then link it to `path` (atomic; fails if it exists)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: check, then rename
            if path.exists():
                raise FileExistsError(path) from None
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def format_number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4f}"


def markdown_table(results: dict[str, dict]) -> str:
    """The headline numbers as a markdown table: one row per number, one column per model."""
    labels = list(results)
    keys = list(dict.fromkeys(k for r in results.values() for k in headline(r)))
    lines = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for key in keys:
        name = f"{key} ({UNITS[key]})" if key in UNITS else key
        lines.append(f"| {name} | " + " | ".join(format_number(headline(results[label]).get(key)) for label in labels) + " |")
    return "\n".join(lines)


def render_markdown(results: dict[str, dict], title: str, settings: dict) -> str:
    """A markdown table: one row per headline number, one column per model; then the settings."""
    lines = [f"# {title}", "", markdown_table(results), "", "## Settings", ""]
    lines += [f"- {key}: `{json.dumps(value)}`" for key, value in settings.items()]
    for label, result in results.items():
        model_settings = result.get("settings", {})
        shown = {k: model_settings[k] for k in ("model", "data", "splits", "holdout_split", "num_items", "num_processes") if k in model_settings}
        lines.append(f"- {label}: `{json.dumps(shown)}`")
    return "\n".join(lines) + "\n"


def render_figure(results: dict[str, dict], title: str) -> Figure:
    """TOFU: forget quality vs model utility scatter and per-set bars; MUSE: bars of its headline numbers."""
    labels = list(results)
    if any("model_utility" in r for r in results.values()):
        figure = Figure(figsize=(13, 9), layout="constrained")
        axes = figure.subplots(2, 2)
        _scatter(axes[0][0], results)
        for ax, (metric, name) in zip([axes[0][1], axes[1][0], axes[1][1]], TOFU_METRICS.items()):
            _bars(ax, labels, list(TOFU_SETS), lambda r, s, m=metric: r.get(f"{s}_{m}"), results)
            ax.set_title(f"{name} per set")
            if metric == "truth_ratio":
                ax.set_xlabel("forget: mean min(TR, 1/TR); others: mean max(0, 1 - TR)")
    else:
        figure = Figure(figsize=(8, 5), layout="constrained")
        ax = figure.subplots()
        _bars(ax, labels, list(MUSE_METRICS), lambda r, m: r.get(m), results)
        ax.set_title("MUSE metrics")
    figure.suptitle(title)
    return figure


def _scatter(ax, results: dict[str, dict]) -> None:
    ax.set_xlabel("model utility")
    ax.set_ylabel("forget quality (KS p-value, log scale)")
    ax.set_yscale("log")
    ax.set_xlim(0, 1.05)
    ax.set_title("forget quality vs model utility")
    plotted = False
    for label, result in results.items():
        fq, mu = result.get("forget_quality"), result.get("model_utility")
        if fq is None or mu is None:
            continue
        ax.scatter([mu], [max(fq, 1e-300)], s=60)
        ax.annotate(label, (mu, max(fq, 1e-300)), textcoords="offset points", xytext=(6, 4))
        plotted = True
    ax.axhline(0.05, color="grey", linestyle="--", linewidth=1)
    if not plotted:
        ax.text(0.5, 0.5, "no forget quality (no reference evaluation)", transform=ax.transAxes, ha="center")


def _bars(ax, labels: list[str], groups: list[str], value, results: dict[str, dict]) -> None:
    width = 0.8 / max(1, len(labels))
    for index, label in enumerate(labels):
        heights = [value(results[label], g) for g in groups]
        positions = [g + (index - (len(labels) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(positions, [h if h is not None else 0 for h in heights], width=width, label=label)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
