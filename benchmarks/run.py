"""Quality and cost of every unlearning method on the same data, seed and budget, in one table.

    python benchmarks/run.py                          # embedded tier: the tiny benchmark, every method
    python benchmarks/run.py --tier real              # SmolLM2-135M-Instruct fine-tuned on 10 real TOFU authors
    python benchmarks/run.py --methods flat npo --sections --output_dir benchmarks/results/mine   # table only

Every method runs once per training seed (`--seeds`, default 0 1 2), each run in its own process (its own peak
memory; a crash costs one run); the table gives each number's mean and standard deviation over the seeds. Finished
runs are kept in `<output_dir>/rows/<method>-seed<k>.json` and skipped on the next call, so an interrupted run resumes; the real tier's
fine-tuned and retain models are cached under `$HF_UNLEARN_CACHE/real_tofu10`. On CUDA everything runs in bf16.

Columns: forget quality, model utility, forget ROUGE-L, MIA AUC (Min-K%), 4-bit relapse (forget ROUGE-L after
NF4 quantization, bitsandbytes' weights reproduced exactly by `fake-nf4`, minus full precision), unlearning wall time, peak memory, and the cost of one
training step relative to one plain `transformers.Trainer` fine-tuning step on the same model and batch, measured
side by side in the same process (the floor is the extra forward passes the method's loss needs).
Writes results.json, results.md and results.png (forget quality vs model utility) into --output_dir.

After the table come the sections (`SECTIONS`, all by default; `--sections` picks some, `--sections` alone none):
each runs one of the other benchmark scripts or recipes with fixed arguments in its own process, and its report is
kept in `<output_dir>/sections/<name>.md` (skipped on the next call, like the rows) and appended to results.md.
Embedded tier: the README's main command (`accelerate launch recipes/tofu_flat.py`), ULD vs NPO/GradDiff training
time, STAMP edit vs GradDiff training time, CleanGen attack success and per-token time vs `generate()`, Antidote vs
magnitude/random pruning, and quantization relapse with SURE; real tier: quantization relapse with SURE on SmolLM2.
The evaluation throughput of `evaluate_tofu` is measured on the reference models.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parent.parent
METHODS = ("flat", "grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu", "uld", "layer_constrained", "stamp")
COLUMNS = (
    ("forget_quality", "forget quality"),
    ("model_utility", "model utility"),
    ("forget_rougeL_recall", "forget ROUGE-L"),
    ("forget_prob", "forget prob"),
    ("mia_auc_min_k", "MIA AUC (Min-K%)"),
    ("relapse_4bit", "4-bit relapse"),
    ("unlearn_s", "unlearn time (s)"),
    ("peak_memory_mb", "peak memory (MB)"),
    ("step_cost_vs_sft", "step time / SFT step"),
)
REAL_TIER_AUTHORS = 10  # the first 8 TOFU authors are retained, forget01 (the last 2 of 200) is forgotten
REAL_TIER_EVAL_ITEMS = 40  # items per evaluation set on the real tier (forget01 and the holdout have 40)


# ----------------------------------------------------------------------------------------------------------------
# tiers: model, data, reference evaluation


def embedded_tier() -> dict:
    from hf_unlearn.benchmarks.embedded import build_embedded_benchmark

    benchmark = build_embedded_benchmark()
    return {"model": str(benchmark.finetuned_dir), "retain_model": str(benchmark.retain_dir),
            "data": str(benchmark.data_dir), "forget_split": "forget10", "holdout_split": "holdout10",
            "max_items": None}


def real_tier_data(source: Path, target: Path) -> Path:
    """Write the real tier's TOFU-schema folder: the first 8 authors retained (TOFU ships their perturbed answers
    in `retain_perturbed`), the 2 of `forget01` forgotten, authors 9-10 as the never-trained MIA holdout."""
    from hf_unlearn.data import load_tofu_split

    if (target / "full.json").is_file():
        return target
    full = [dict(r) for r in load_tofu_split(source, "full")]
    per_author = len(full) // 200
    kept = (REAL_TIER_AUTHORS - 2) * per_author
    splits = {
        "full": full[:kept] + full[-2 * per_author :],
        "retain99": full[:kept],
        "holdout01": full[kept : REAL_TIER_AUTHORS * per_author],
        "retain_perturbed": [dict(r) for r in load_tofu_split(source, "retain_perturbed")][:kept],
    }
    for name in ("forget01", "forget01_perturbed", "real_authors", "real_authors_perturbed", "world_facts",
                 "world_facts_perturbed"):
        splits[name] = [dict(r) for r in load_tofu_split(source, name)]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent))
    for name, rows in splits.items():
        (tmp / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, target)
    return target


def real_tier() -> dict:
    """SmolLM2-135M-Instruct fine-tuned on the 10 authors of `real_tier_data` (the model to unlearn) and on the 8
    retained ones (the retain model), both cached."""
    from trl import SFTConfig

    from hf_unlearn.benchmarks import shared_data_dir
    from hf_unlearn.benchmarks.models import load_smollm2
    from hf_unlearn.cache import cache_root
    from hf_unlearn.data import load_tofu_split
    from hf_unlearn.finetune import sft_finetune

    source = shared_data_dir() / "tofu"
    root = cache_root() / f"real_tofu{REAL_TIER_AUTHORS}"
    data = real_tier_data(source, root / "data")
    for name, split in (("finetuned", "full"), ("retain", "retain99")):
        target = root / name
        if (target / "model.safetensors").is_file():
            continue
        print(f"Fine-tuning SmolLM2-135M-Instruct on {split} ({target}); cached afterwards.", flush=True)
        model, tokenizer = load_smollm2(dtype=torch.bfloat16 if torch.cuda.is_available() else None)
        rows = [dict(r) for r in load_tofu_split(data, split)]
        args = SFTConfig(output_dir=str(root / f"{name}-sft"), learning_rate=2e-4, num_train_epochs=5,
                         per_device_train_batch_size=8, lr_scheduler_type="cosine", warmup_steps=0.05,
                         bf16=torch.cuda.is_available(), save_strategy="no", report_to=[], logging_steps=10, seed=0)
        model = sft_finetune(model, tokenizer, rows, args)
        tmp = Path(tempfile.mkdtemp(dir=root))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
        del model
    return {"model": str(root / "finetuned"), "retain_model": str(root / "retain"), "data": str(data),
            "forget_split": "forget01", "holdout_split": "holdout01", "max_items": REAL_TIER_EVAL_ITEMS}


TIERS = {"embedded": embedded_tier, "real": real_tier}

# name -> (title, command after `python`, extra environment); "{out}" is the output folder.
SECTIONS = {
    "embedded": {
        "demo": ("The README's main command", ["-m", "accelerate.commands.launch", "recipes/tofu_flat.py",
                                              "--output_dir", "{out}/demo"], {}),
        "uld_speed": ("ULD vs NPO and GradDiff training time", ["benchmarks/uld_speed.py"], {}),
        "stamp_speed": ("STAMP edit vs GradDiff trained until the same fact is forgotten",
                        ["benchmarks/stamp_speed.py", "--part", "single_item"], {"OMP_NUM_THREADS": "1"}),
        "cleangen_asr": ("CleanGen against BackdoorLLM backdoors",
                         ["-m", "hf_unlearn.benchmarks.backdoor", "--num_trigger_eval", "40",
                          "--num_clean_eval", "24", "--max_new_tokens", "16", "--json", "{out}/cleangen_asr.json"], {}),
        "cleangen_speed": ("CleanGen per-token time vs plain generate()", ["benchmarks/cleangen_speed.py"], {}),
        "antidote": ("Antidote after harmful fine-tuning",
                     ["recipes/antidote_prune.py", "--dense_ratios", "0.05", "0.1", "0.2", "0.3", "0.5",
                      "--output_dir", "{out}/antidote"], {}),
        "relapse_sure": ("Quantization relapse and SURE", ["benchmarks/relapse_sure.py", "--json",
                                                            "{out}/relapse_sure.json"], {}),
    },
    "real": {
        "relapse_sure": ("Quantization relapse and SURE, SmolLM2-135M on real TOFU",
                         ["benchmarks/relapse_sure.py", "--model", "real", "--max_items", "20",
                          "--json", "{out}/relapse_sure.json"], {}),
        "antidote": ("Antidote after harmful fine-tuning, SmolLM2-135M",
                     ["recipes/antidote_prune.py", "--model_name_or_path", "smollm2", "--alignment_lora_r", "16",
                      "--finetune_learning_rate", "1e-3", "--finetune_epochs", "5", "--harmful_max_new_tokens", "24",
                      "--dense_ratios", "0.05", "0.1", "0.2", "0.3", "--output_dir", "{out}/antidote"], {}),
    },
}


def method_settings(tier: str, method: str) -> dict:
    """Training settings per tier. Embedded: the tuned defaults the recipes use (`pipeline.EMBEDDED_DEFAULTS`)."""
    from hf_unlearn.pipeline import EMBEDDED_DEFAULTS

    settings = dict(EMBEDDED_DEFAULTS.get(method, {}))
    if tier == "real" and method != "stamp":
        # A pretrained model moves further per step than the tiny one: a tenth of the embedded learning rate but at
        # least 5e-5 (at 1e-5 FLAT did not move forget ROUGE-L in 15 steps), and a CPU budget of 3 epochs of
        # forget01 (15 steps of 8 examples).
        learning_rate = max(5e-5, float(f"{settings['learning_rate'] / 10:.3g}"))
        settings.update(learning_rate=learning_rate, num_train_epochs=3, per_device_train_batch_size=8)
        settings.pop("stop_at_forget_prob", None)  # the real tier gives every method the same fixed budget
        if method == "layer_constrained":  # tracing 30 layers: 8 facts x 3 noise draws instead of 32 x 5
            settings.update(trace_num_facts=8, trace_num_samples=3)
            # the paper's alpha clip [1.2, 2.8]: the raised floor is for the tiny model's near-zero retain loss
            settings.pop("alpha_min", None), settings.pop("alpha_max", None)
    return settings


# ----------------------------------------------------------------------------------------------------------------
# one method, in its own process


def run_method(tier: str, method: str, row_path: Path, seed: int = 0, measure_step_cost: bool = True) -> None:
    from hf_unlearn.data import load_tofu_split
    from hf_unlearn.data.tofu import retain_split_for
    from hf_unlearn.eval.quantization import fake_quantize_model
    from hf_unlearn.eval.tofu import evaluate_tofu
    from hf_unlearn.modeling import load_causal_lm

    torch.manual_seed(seed)
    setup = TIERS[tier]()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    reference = json.loads(Path(row_path.parent.parent, "reference_eval.json").read_text())
    model, tokenizer = load_causal_lm(setup["model"], dtype=torch.bfloat16 if cuda else None)
    forget = load_tofu_split(setup["data"], setup["forget_split"])
    retain = load_tofu_split(setup["data"], retain_split_for(setup["forget_split"]))
    settings = method_settings(tier, method)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if method == "stamp":
        unlearned, unlearn_s, step_cost = _stamp(model.to(device), tokenizer, forget, retain, settings)
    else:  # the step-cost ratio costs ~10 extra steps: left out of the real tier on CPU
        unlearned, unlearn_s, step_cost = _train(method, model.to(device), tokenizer, forget, retain, settings,
                                                 measure_step_cost=measure_step_cost and (cuda or tier == "embedded"),
                                                 seed=seed)
    unlearned.eval().to(device)
    evaluation = {"forget_split": setup["forget_split"], "holdout_split": setup["holdout_split"],
                  "max_items": setup["max_items"], "reference": reference, "progress": False}
    start = time.perf_counter()
    result = evaluate_tofu(unlearned, tokenizer, setup["data"], **evaluation)
    result["evaluation_s"] = time.perf_counter() - start
    result_4bit = evaluate_tofu(fake_quantize_model(unlearned, "fake-nf4"), tokenizer, setup["data"], **evaluation)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {key: result.get(key) for key, _ in COLUMNS if key in result}
    row.update({"relapse_4bit": result_4bit["forget_rougeL_recall"] - result["forget_rougeL_recall"],
                "unlearn_s": unlearn_s, "peak_memory_mb": peak, "step_cost_vs_sft": step_cost,
                "settings": settings, "seed": seed, "device": device, "result": result})
    _write_json(row_path, row)


def _train(method, model, tokenizer, forget, retain, settings, measure_step_cost=True, seed=0):
    """Unlearn with the method's trainer; returns (evaluated model, seconds, step time / plain Trainer step)."""
    from hf_unlearn.trainers import METHODS

    config_class, trainer_class = METHODS[method]
    with tempfile.TemporaryDirectory() as scratch:
        common = {"report_to": [], "save_strategy": "no", "disable_tqdm": True, "seed": seed,
                  "bf16": torch.cuda.is_available(), "logging_steps": 10_000}
        step_cost = None
        if measure_step_cost:
            step_cost = _step_cost_vs_sft(model, tokenizer, forget, retain, config_class, trainer_class,
                                          {**common, **settings}, scratch)
        start = time.perf_counter()
        trainer = trainer_class(model=model, args=config_class(output_dir=scratch, **common, **settings),
                                forget_dataset=forget, retain_dataset=retain, processing_class=tokenizer)
        trainer.train()
        return trainer.evaluation_model(), time.perf_counter() - start, step_cost


def _stamp(model, tokenizer, forget, retain, settings):
    """STAMP's closed-form edit of every forget fact (no training steps, so no step-cost ratio)."""
    from hf_unlearn.editing import StampConfig, stamp_edit

    start = time.perf_counter()
    result = stamp_edit(model, tokenizer, forget=list(forget), retain=list(retain), config=StampConfig(**settings))
    return result.model, time.perf_counter() - start, None


def _step_cost_vs_sft(model, tokenizer, forget, retain, config_class, trainer_class, settings, scratch, steps=4):
    """Seconds per step of the method's trainer / seconds per step of a plain `Trainer` on the forget answers
    (same model copy, batch size and sequence lengths), after one warm-up step each, timed back to back."""
    import copy

    from transformers import Trainer, TrainingArguments

    from hf_unlearn.data import pad_examples, tokenize_qa

    batch = settings.get("per_device_train_batch_size", 8)
    examples = [tokenize_qa(tokenizer, r["question"], r["answer"], 256) for r in forget]

    def collate(rows):
        return pad_examples(rows, tokenizer.pad_token_id, "right")

    timed = {}
    for name in ("sft", "method"):
        clone = copy.deepcopy(model)
        common = {"output_dir": scratch, "max_steps": steps + 1, "per_device_train_batch_size": batch,
                  "report_to": [], "save_strategy": "no", "disable_tqdm": True, "logging_steps": 10_000,
                  "bf16": settings.get("bf16", False)}
        if name == "sft":
            trainer = Trainer(model=clone, args=TrainingArguments(**common, remove_unused_columns=False),
                              train_dataset=examples, data_collator=collate)
        else:
            config = config_class(**{**settings, **common})
            trainer = trainer_class(model=clone, args=config, forget_dataset=forget, retain_dataset=retain,
                                    processing_class=tokenizer)
        timer = _StepTimer()
        trainer.add_callback(timer)
        trainer.train()
        timed[name] = timer.seconds_per_step()
        del trainer, clone
    return timed["method"] / timed["sft"]


class _StepTimer:
    """A TrainerCallback that times steps after the first (warm-up)."""

    def __init__(self):
        self.starts, self.durations = [], []

    def __getattr__(self, name):  # the callback events this timer ignores
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.durations.append(time.perf_counter() - self.starts[-1])

    def seconds_per_step(self) -> float:
        timed = self.durations[1:]
        return sum(timed) / len(timed)


# ----------------------------------------------------------------------------------------------------------------
# the table


def reference_rows(tier: str, output_dir: Path) -> dict[str, dict]:
    """Evaluations of the model before unlearning and of the retain model (the reference), cached in output_dir."""
    from hf_unlearn.eval.tofu import evaluate_tofu
    from hf_unlearn.modeling import load_causal_lm

    setup = TIERS[tier]()
    reference_path = output_dir / "reference_eval.json"
    rows = {}
    for name, path in (("retain", setup["retain_model"]), ("finetuned", setup["model"])):
        cached = output_dir / f"{name}_eval.json"
        if not cached.is_file():
            model, tokenizer = load_causal_lm(path, dtype=torch.bfloat16 if torch.cuda.is_available() else None)
            model.to("cuda" if torch.cuda.is_available() else "cpu")
            reference = json.loads(reference_path.read_text()) if reference_path.is_file() else None
            start = time.perf_counter()
            result = evaluate_tofu(model, tokenizer, setup["data"], forget_split=setup["forget_split"],
                                   holdout_split=setup["holdout_split"], max_items=setup["max_items"],
                                   reference=reference)
            result["evaluation_s"] = time.perf_counter() - start
            _write_json(cached, result)
            if name == "retain":
                _write_json(reference_path, result)
        result = json.loads(cached.read_text())
        rows[name] = {key: result.get(key) for key, _ in COLUMNS if key in result} | {"result": result}
    return rows


def aggregate_seeds(runs: list[dict]) -> dict:
    """One table row from a method's runs over seeds: each column's mean over the runs that have it, its sample
    standard deviation under `<column>_std` (with two runs or more), the seeds, and the first run's details."""
    import numpy as np

    row = {key: value for key, value in runs[0].items() if key not in dict(COLUMNS) and key != "seed"}
    row["seeds"] = [run.get("seed", 0) for run in runs]
    for key, _ in COLUMNS:
        values = [run[key] for run in runs if run.get(key) is not None]
        row[key] = float(np.mean(values)) if values else None
        if len(values) > 1:
            row[f"{key}_std"] = float(np.std(values, ddof=1))
    row["runs"] = [{key: run.get(key) for key, _ in COLUMNS} for run in runs]
    return row


def render(rows: dict[str, dict], tier: str, output_dir: Path) -> str:
    from hf_unlearn.eval.report import format_number

    lines = [f"## {tier} tier", "", "| method | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    def number(key, value):
        if key in ("unlearn_s", "peak_memory_mb"):
            return f"{value:.1f}"
        if key == "step_cost_vs_sft":
            return f"{value:.2f}x"
        return format_number(value)

    def cell(row, key):
        value = row.get(key)
        if value is None:
            return format_number(None)
        std = row.get(f"{key}_std")
        return number(key, value) if std is None else f"{number(key, value)} ± {number(key, std)}"

    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(row, key) for key, _ in COLUMNS) + " |")
    device = next((row["device"] for row in rows.values() if "device" in row), "cpu")
    seeds = sorted({seed for row in rows.values() for seed in row.get("seeds", [])})
    lines += ["", f"Device: {device}; torch {torch.__version__}; each method: mean ± sample standard deviation over "
              f"training seeds {seeds} (the step-time ratio from seed {seeds[0] if seeds else 0} only), with the "
              "settings in results.json. retain and finetuned are single models (no training seed)."]
    seconds = [row["result"]["evaluation_s"] for row in rows.values() if "evaluation_s" in row.get("result", {})]
    if seconds:
        lines.append(f"One `evaluate_tofu` of a model (every metric and MIA above): {min(seconds):.1f} s.")
    markdown = "\n".join(lines) + "\n"
    _write_json(output_dir / "results.json", {"tier": tier, "rows": rows})
    _plot(rows, output_dir / "results.png", tier)
    return markdown


def run_sections(tier: str, names: list[str], output_dir: Path, shown_dir: str | None = None) -> str:
    """Run each section's command (unless its report is kept from an earlier call) and return the reports; the
    commands are shown with `shown_dir` (default: output_dir) for the output folder."""
    reports = []
    for name in names:
        title, command, env = SECTIONS[tier][name]
        report_path = output_dir / "sections" / f"{name}.md"
        shown = " ".join(["python", *command]).replace("{out}", shown_dir or str(output_dir))
        if not report_path.is_file():
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {shown}", flush=True)
            start = time.perf_counter()
            completed = subprocess.run([sys.executable, *(part.replace("{out}", str(output_dir)) for part in command)],
                                       cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
            if completed.returncode != 0:
                print(f"{name} failed (exit {completed.returncode}); the other sections go on.", file=sys.stderr)
                continue
            report_path.parent.mkdir(exist_ok=True)
            prefix = "".join(f"{key}={value} " for key, value in env.items())
            _write_text(report_path, f"## {title}\n\n`{prefix}{shown}` ({time.perf_counter() - start:.0f} s)\n\n"
                                     f"{without_trainer_logs(completed.stdout).strip()}\n")
        reports.append(report_path.read_text())
    return "\n".join(reports)


def without_trainer_logs(text: str) -> str:
    """`text` without the `{'loss': ...}` / `{'train_runtime': ...}` log lines a `Trainer` prints to stdout."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("{'"))


def _plot(rows: dict[str, dict], path: Path, tier: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5))
    ax = figure.subplots()
    for name, row in rows.items():
        if row.get("forget_quality") is None:
            continue
        ax.errorbar(row["model_utility"], row["forget_quality"], xerr=row.get("model_utility_std"), fmt="o", ms=5,
                    capsize=2)
        ax.annotate(name, (row["model_utility"], row["forget_quality"]), fontsize=8, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("model utility")
    ax.set_ylabel("forget quality (KS p-value vs retain model)")
    ax.set_title(f"Unlearning methods, {tier} tier")
    figure.savefig(path, dpi=120, bbox_inches="tight")


def _write_json(path: Path, payload) -> None:
    _write_text(path, json.dumps(payload, indent=2, default=str))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--tier", choices=sorted(TIERS), default="embedded")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--output_dir", help="Results folder (default benchmarks/results/<tier>); resumes.")
    parser.add_argument("--sections", nargs="*", help="Sections after the table (default: all of the tier's).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="Training seeds (default 0 1 2).")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method in this process
    args = parser.parse_args(argv)
    sections = SECTIONS[args.tier]
    names = list(sections) if args.sections is None else args.sections
    unknown = sorted(set(names) - set(sections))
    if unknown:
        parser.error(f"unknown sections {unknown} for the {args.tier} tier; choose from {sorted(sections)}.")
    shown_dir = args.output_dir or f"benchmarks/results/{args.tier}"
    output_dir = Path(args.output_dir).resolve() if args.output_dir else ROOT / shown_dir
    (output_dir / "rows").mkdir(parents=True, exist_ok=True)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds repeats a seed: {args.seeds}; give each seed once.")
    if args.one:
        seed = args.seeds[0]
        run_method(args.tier, args.one, output_dir / "rows" / f"{args.one}-seed{seed}.json", seed=seed,
                   measure_step_cost=seed == 0)
        return 0
    rows = reference_rows(args.tier, output_dir)
    for method in args.methods:
        runs = []
        for seed in args.seeds:
            row_path = output_dir / "rows" / f"{method}-seed{seed}.json"
            if not row_path.is_file():
                print(f"[{time.strftime('%H:%M:%S')}] {method} seed {seed} ...", flush=True)
                command = [sys.executable, __file__, "--tier", args.tier, "--output_dir", str(output_dir),
                           "--one", method, "--seeds", str(seed)]
                completed = subprocess.run(command)
                if completed.returncode != 0:
                    print(f"{method} seed {seed} failed (exit {completed.returncode}); the others go on.",
                          file=sys.stderr)
                    continue
            runs.append(json.loads(row_path.read_text()))
        if runs:
            rows[method] = aggregate_seeds(runs)
    markdown = render(rows, args.tier, output_dir)
    if names:
        markdown += "\n" + run_sections(args.tier, names, output_dir, shown_dir)
    _write_text(output_dir / "results.md", markdown)
    print(markdown)
    print(f"Results: {output_dir}/results.md, results.json, results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
