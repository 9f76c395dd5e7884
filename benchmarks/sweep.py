"""Sweep one method's settings on the embedded benchmark over build seeds and training seeds, and pick its preset.

    python benchmarks/sweep.py --method flat --grid learning_rate=1e-4,2e-4 num_train_epochs=5,10 \\
        --build_seeds 0 1 --seeds 0 1 2 --output_dir benchmarks/sweeps/embedded/flat

Every (setting, build seed, training seed) is one `hf-unlearn unlearn` run on the embedded benchmark (in this
process, no relapse check, nothing saved but the numbers). Finished runs are appended to `<output_dir>/runs.jsonl`
and skipped on the next call, so an interrupted sweep resumes. The summary (`summary.json`, `summary.md`,
`pareto.png`: forget quality against model utility) gives each setting's mean and spread over every build and seed.

Selection rule (fixed before looking at any result): among the settings whose *worst* run keeps model utility at
or above `--min_utility_ratio` (0.95) x its build's finetuned model and brings forget ROUGE-L to at most
`--max_forget_rouge` (0.5), the highest mean forget quality; ties go to the lower mean forget ROUGE-L. When none
qualifies, the summary says so and names none.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path


KEYS = ("forget_quality", "model_utility", "utility_ratio", "forget_rougeL_recall", "forget_prob", "retain_rougeL_recall")


def parse_grid(items: list[str]) -> list[dict]:
    """`["learning_rate=1e-4,2e-4", "num_train_epochs=5"]` -> every combination as a dict of flag strings."""
    axes = []
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"--grid {item!r}: write it as name=value1,value2 (e.g. learning_rate=1e-4,2e-4).")
        axes.append([(name, value) for value in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def setting_key(setting: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(setting.items()))


def run_once(method: str, setting: dict, build_seed: int, seed: int) -> dict:
    from hf_unlearn.pipeline import unlearn_main

    os.environ["HF_UNLEARN_BUILD_SEED"] = str(build_seed)
    flags = [item for name, value in setting.items() for item in (f"--{name}", value)]
    out = Path(tempfile.mkdtemp(prefix="sweep-"))
    try:
        result = unlearn_main([*flags, "--seed", str(seed), "--output_dir", str(out / "run"), "--no_relapse",
                               "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"], method=method)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    before, after = result["results"]["finetuned"], result["results"][method]
    row = {k: after.get(k) for k in KEYS if k != "utility_ratio"}
    row["utility_ratio"] = after["model_utility"] / before["model_utility"]
    row["finetuned"] = {k: before.get(k) for k in ("model_utility", "forget_rougeL_recall", "forget_prob")}
    return row


def summarise(runs: list[dict], min_utility_ratio: float, max_forget_rouge: float) -> dict:
    by_setting: dict[str, list[dict]] = {}
    for run in runs:
        by_setting.setdefault(run["setting_key"], []).append(run)
    settings = {}
    for key, rows in by_setting.items():
        stats = {}
        for name in KEYS:
            values = [r["metrics"][name] for r in rows if r["metrics"].get(name) is not None]
            stats[name] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                           "min": min(values), "max": max(values)} if values else None
        qualifies = (stats["utility_ratio"]["min"] >= min_utility_ratio
                     and stats["forget_rougeL_recall"]["max"] <= max_forget_rouge)
        settings[key] = {"setting": rows[0]["setting"], "runs": len(rows), "stats": stats, "qualifies": qualifies}
    qualified = [s for s in settings.values() if s["qualifies"]]
    chosen = max(qualified, key=lambda s: (s["stats"]["forget_quality"]["mean"],
                                           -s["stats"]["forget_rougeL_recall"]["mean"]), default=None)
    return {"rule": {"min_utility_ratio": min_utility_ratio, "max_forget_rouge": max_forget_rouge},
            "settings": settings, "chosen": setting_key(chosen["setting"]) if chosen else None}


def markdown(summary: dict, method: str, command: str) -> str:
    rule = summary["rule"]
    lines = [f"# Sweep of {method} on the embedded benchmark", "", f"`{command}`", "",
             f"Selection: worst run utility >= {rule['min_utility_ratio']} x finetuned and worst forget ROUGE-L <= "
             f"{rule['max_forget_rouge']}; then the highest mean forget quality. Chosen: "
             f"{summary['chosen'] or 'none qualifies'}.", "",
             "| setting | runs | forget quality | utility / finetuned (min) | forget ROUGE-L (max) | forget prob | "
             "retain ROUGE-L | qualifies |", "|---|---:|---:|---:|---:|---:|---:|---|"]

    def cell(stat, extreme=None):
        if stat is None:
            return "-"
        text = f"{stat['mean']:.3g} ± {stat['std']:.2g}"
        return f"{text} ({stat[extreme]:.3g})" if extreme else text

    for key, s in sorted(summary["settings"].items()):
        st = s["stats"]
        lines.append(f"| {key} | {s['runs']} | {cell(st['forget_quality'])} | {cell(st['utility_ratio'], 'min')} | "
                     f"{cell(st['forget_rougeL_recall'], 'max')} | {cell(st['forget_prob'])} | "
                     f"{cell(st['retain_rougeL_recall'])} | {'yes' if s['qualifies'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path, method: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for key, s in summary["settings"].items():
        st = s["stats"]
        ax.errorbar(st["utility_ratio"]["mean"], max(st["forget_quality"]["mean"], 1e-20),
                    xerr=st["utility_ratio"]["std"], fmt="o", color="C2" if s["qualifies"] else "C0")
        ax.annotate(key, (st["utility_ratio"]["mean"], max(st["forget_quality"]["mean"], 1e-20)), fontsize=6)
    ax.set_yscale("log")
    ax.set_xlabel("model utility / finetuned (mean)")
    ax.set_ylabel("forget quality (mean)")
    ax.set_title(f"{method}: settings (green: meets the selection rule)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--grid", nargs="+", required=True, help="name=v1,v2 ... (flags of `hf-unlearn unlearn`)")
    parser.add_argument("--build_seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--min_utility_ratio", type=float, default=0.95)
    parser.add_argument("--max_forget_rouge", type=float, default=0.5)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    from tqdm import tqdm

    from hf_unlearn.files import atomic_write

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = {(r["setting_key"], r["build_seed"], r["seed"]) for r in runs}
    jobs = [(s, b, seed) for s in parse_grid(args.grid) for b in args.build_seeds for seed in args.seeds]
    todo = [job for job in jobs if (setting_key(job[0]), job[1], job[2]) not in done]
    for setting, build_seed, seed in tqdm(todo, desc=f"sweep {args.method}", file=sys.stderr):
        metrics = run_once(args.method, setting, build_seed, seed)
        record = {"setting": setting, "setting_key": setting_key(setting), "build_seed": build_seed, "seed": seed,
                  "metrics": metrics}
        with log.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        runs.append(record)
    wanted = {setting_key(s) for s in parse_grid(args.grid)}
    summary = summarise([r for r in runs if r["setting_key"] in wanted and r["build_seed"] in args.build_seeds
                         and r["seed"] in args.seeds], args.min_utility_ratio, args.max_forget_rouge)
    command = "python benchmarks/sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary["command"] = command
    atomic_write(out / "summary.json", json.dumps(summary, indent=2))
    text = markdown(summary, args.method, command)
    atomic_write(out / "summary.md", text)
    plot(summary, out / "pareto.png", args.method)
    print(text)
    return summary


if __name__ == "__main__":
    main()
