"""SHA256 (layer-constrained unlearning): trace where the facts live, unlearn only those layers' MLPs, evaluate
before and after, write the report.

    python recipes/semeval_sha256.py                              # the embedded benchmark (offline, ~1 min on CPU)
    python recipes/semeval_sha256.py --model_name_or_path smollm2 \
        --semeval_data ../shared/data/semeval25_task4 --mmlu_data ../shared/data/mmlu \
        --max_items_per_group 2 --max_mia_items 20 --mmlu_max_items 10 \
        --finetune_epochs 8                                      # SemEval-2025 Task 4, a small sample

On the embedded benchmark the report holds the TOFU metrics of the retain model, the finetuned model and the
unlearned one. On SemEval data it holds the task aggregate, the MIA score and MMLU accuracy before and after;
`--finetune_epochs N` first fine-tunes a model that never saw the task's data (such as SmolLM2) on the sampled
forget and retain rows, so that there is something to forget. Every `LayerConstrainedConfig` flag applies
(`--layers 0 1` skips the automatic choice, `--trace_num_facts 32`, `--alpha_max 2.3`, ...).

SemEval evaluation defaults follow the task's official scorer: 256 generated tokens, every item, all 150 + 150 MIA
documents scored whole, MMLU 5-shot over every test question of the subjects in `--mmlu_data` (the official score
needs all 57; the report says when it is not that score: `mmlu_official`, `mmlu_note`). One deliberate difference:
prompts use the package's QA format (`--eval_prompt_format qa`, what `--finetune_epochs` and the unlearning train
on); `--eval_prompt_format raw` gives the raw input as the official script does, right for a model that memorised
the raw documents (the task's OLMo models).
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from hf_unlearn.editing.causal_tracing import CausalTraceConfig, causal_trace, embedded_facts, qa_fact
from hf_unlearn.errors import run_command
from hf_unlearn.eval.report import write_report
from hf_unlearn.eval.semeval import SEMEVAL_MAX_NEW_TOKENS
from hf_unlearn.pipeline import EMBEDDED_DEFAULTS as PIPELINE_DEFAULTS
from hf_unlearn.pipeline import (
    UnlearnRunArguments,
    default_output_dir,
    given_flags,
    reference_evaluation,
    resolve_benchmark,
)
from hf_unlearn.trainers.layer_constrained import LayerConstrainedConfig, LayerConstrainedTrainer


# Settings measured to work on the embedded benchmark (forget ROUGE far down, retain ROUGE kept); flags override.
# Gradient ascent trains until forgotten (forget answer probability <= 0.02, at most 60 epochs) with the retain weight
# clipped to [16, 24] (`hf_unlearn.pipeline.EMBEDDED_DEFAULTS["layer_constrained"]`, where the measurements are):
# the tiny model's retain loss keeps the paper's alpha at its floor 1.2, which let the retain answers go with the
# forget ones (stopping at 0.12 with alpha 1.2 left forget ROUGE-L at 0.59 x on build seed 0). Measured with these
# settings on build seed 0, seeds 0 and 2: forget ROUGE-L 0.38 / 0.40 x and model utility 0.95 / 0.90 x finetuned
# (with [8, 12]: seeds 0-2 0.37/0.41/0.43 x at 0.93/0.94/0.92 x; build seed 1, seed 0: 0.17 x at 0.93 x).
EMBEDDED_DEFAULTS = [*(arg for key, value in PIPELINE_DEFAULTS["layer_constrained"].items()
                       for arg in (f"--{key}", str(value))),
                     "--eval_strategy", "epoch", "--save_strategy", "epoch",
                     "--load_best_model_at_end", "true", "--save_total_limit", "1", "--report_to", "none"]
# Evaluation as the official scorer: SEMEVAL_MAX_NEW_TOKENS (256, its --max_new_tokens default).
SEMEVAL_DEFAULTS = ["--learning_rate", "2e-5", "--lr_scheduler_type", "constant", "--num_train_epochs", "3",
                    "--per_device_train_batch_size", "4", "--max_length", "512",
                    "--eval_max_new_tokens", str(SEMEVAL_MAX_NEW_TOKENS),
                    "--report_to", "none"]


@dataclass
class SHA256RunArguments:
    r"""
    What to unlearn and how to judge it.

    Parameters:
        model_name_or_path (`str`, *optional*): the model (Hub name, folder, `.gguf` file, or `smollm2` for the
            PyPI SmolLM2-135M-Instruct); the embedded benchmark's finetuned model when unset.
        semeval_data (`str`, *optional*): a SemEval-2025 Task 4 folder (or Hub name); the embedded benchmark
            (TOFU schema, forget10) when unset.
        mmlu_data (`str`, *optional*): folder of MMLU CSVs (or `cais/mmlu`) for MMLU accuracy on SemEval runs.
        max_items_per_group (`int`, *optional*): SemEval: use the first N forget and retain training items of each
            (task, kind) group, for unlearning and evaluation.
        max_mia_items (`int`, *optional*): SemEval: score only the first N member and N non-member documents for
            the MIA score (all, as the official scorer, when unset).
        mmlu_max_items (`int`, *optional*): MMLU questions per subject, sampled as open-instruct's `--n_instances`
            (all, as the official scorer, when unset).
        mmlu_num_shots (`int`, defaults to `5`): solved dev examples before each MMLU question (5, the official).
        finetune_epochs (`int`, defaults to `0`): SemEval: fine-tune on the sampled rows first (for a model that
            never saw the task's data), with `finetune_learning_rate` (`float`, defaults to `1e-4`).
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "Model (default: embedded)."})
    semeval_data: str | None = field(default=None, metadata={"help": "SemEval-2025 Task 4 data (default: embedded)."})
    mmlu_data: str | None = field(default=None, metadata={"help": "MMLU CSV folder or Hub name."})
    max_items_per_group: int | None = field(default=None, metadata={"help": "SemEval items per (task, kind)."})
    max_mia_items: int | None = field(default=None, metadata={"help": "MIA documents of each kind (default: all)."})
    mmlu_max_items: int | None = field(default=None, metadata={"help": "MMLU questions per subject (default: all)."})
    mmlu_num_shots: int = field(default=5, metadata={"help": "MMLU shots (5: the official setting)."})
    finetune_epochs: int = field(default=0, metadata={"help": "Fine-tune on the sampled rows first (SemEval)."})
    finetune_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of that fine-tuning."})


def load_model(name: str):
    from hf_unlearn.benchmarks.models import load_smollm2
    from hf_unlearn.modeling import load_causal_lm

    return load_smollm2() if name == "smollm2" else load_causal_lm(name)


def trace_layers(model, tokenizer, facts, config: LayerConstrainedConfig) -> dict:
    """Causal tracing; sets `config.layers` to the suggested layers unless they were given."""
    trace = causal_trace(model.to(config.device), tokenizer, facts[: config.trace_num_facts],
                         CausalTraceConfig(num_samples=config.trace_num_samples, seed=config.seed))
    paths = trace.save(Path(config.output_dir) / "trace")
    config.layers = config.layers or trace.suggested_layers
    print(f"Causal trace: suggested layers {trace.suggested_layers}, training {config.layers} ({paths['plot']})")
    return trace.to_dict()


def run_embedded(run: SHA256RunArguments, config: LayerConstrainedConfig) -> dict:
    from hf_unlearn.data.tofu import load_tofu_split
    from hf_unlearn.eval.tofu import evaluate_tofu

    benchmark = resolve_benchmark(UnlearnRunArguments(model_name_or_path=run.model_name_or_path))
    model, tokenizer = load_model(benchmark.model_name_or_path)
    forget, retain = load_tofu_split(benchmark.dataset, "forget10"), load_tofu_split(benchmark.dataset, "retain90")
    config.eval_data, config.eval_holdout_split = str(benchmark.dataset), benchmark.holdout_split
    reference = reference_evaluation(benchmark, config)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    config.eval_reference = str(Path(config.output_dir) / "reference_eval.json")
    Path(config.eval_reference).write_text(json.dumps(reference))

    def evaluate(m):
        return evaluate_tofu(m, tokenizer, benchmark.dataset, holdout_split=benchmark.holdout_split, reference=reference,
                             max_length=config.max_length, max_new_tokens=config.eval_max_new_tokens, progress=False)

    results = {"retain": reference, "finetuned": evaluate(model)}
    trace = trace_layers(model, tokenizer, embedded_facts(tokenizer, forget.to_list()), config)
    trainer = LayerConstrainedTrainer(model, config, forget_dataset=forget, retain_dataset=retain, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(Path(config.output_dir) / "model"))
    results["sha256"] = evaluate(trainer.model)
    return {"results": results, "trace": trace, "title": f"SHA256 (layers {config.layers}) on the embedded benchmark"}


def run_semeval(run: SHA256RunArguments, config: LayerConstrainedConfig) -> dict:
    from trl import SFTConfig

    from hf_unlearn.eval.mmlu import evaluate_mmlu
    from hf_unlearn.eval.semeval import evaluate_semeval, load_semeval_split, sample_per_group
    from hf_unlearn.finetune import sft_finetune

    model, tokenizer = load_model(run.model_name_or_path)
    split_rows = {name: sample_per_group(load_semeval_split(run.semeval_data, f"{name}_train"), run.max_items_per_group)
                  for name in ("forget", "retain")}
    forget, retain = ([{"question": r["input"], "answer": r["output"]} for r in split_rows[name]] for name in ("forget", "retain"))
    if run.finetune_epochs:
        sft = SFTConfig(output_dir=str(Path(config.output_dir) / "finetune"), num_train_epochs=run.finetune_epochs,
                        per_device_train_batch_size=config.per_device_train_batch_size,
                        learning_rate=run.finetune_learning_rate, disable_tqdm=config.disable_tqdm,
                        lr_scheduler_type="constant", max_length=config.max_length, save_strategy="no",
                        report_to="none", bf16=False, gradient_checkpointing=False, use_cpu=config.use_cpu,
                        seed=config.seed, logging_steps=10)
        model = sft_finetune(model, tokenizer, forget + retain, sft)

    def evaluate(m):
        mmlu = (evaluate_mmlu(m, tokenizer, run.mmlu_data, num_shots=run.mmlu_num_shots, max_items=run.mmlu_max_items)
                if run.mmlu_data else None)
        result = evaluate_semeval(m, tokenizer, run.semeval_data, split="train", mia_data=run.semeval_data,
                                  mmlu_accuracy=mmlu, prompt_format=config.eval_prompt_format,
                                  max_new_tokens=config.eval_max_new_tokens, max_length=config.max_length,
                                  max_items_per_group=run.max_items_per_group, max_mia_items=run.max_mia_items)
        return result | ({"mmlu": mmlu} if mmlu else {})

    results = {"before": evaluate(model)}
    qa = [r for r in split_rows["forget"] if r["kind"] == "qa"]
    trace = trace_layers(model, tokenizer, [qa_fact(tokenizer, r["input"], r["output"], r["input"]) for r in qa], config)
    trainer = LayerConstrainedTrainer(model, config, forget_dataset=forget, retain_dataset=retain, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(Path(config.output_dir) / "model"))
    results["sha256"] = evaluate(trainer.model)
    return {"results": results, "trace": trace, "title": f"SHA256 (layers {config.layers}) on SemEval-2025 Task 4"}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    run, _ = HfArgumentParser(SHA256RunArguments).parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if (run.semeval_data is None) != (run.model_name_or_path is None):
        raise ValueError("Name both --model_name_or_path and --semeval_data (a SemEval run), or neither (embedded).")
    defaults = EMBEDDED_DEFAULTS if run.semeval_data is None else SEMEVAL_DEFAULTS
    output_dir_given = "output_dir" in given_flags(argv)
    if not output_dir_given:
        defaults = [*defaults, "--output_dir", "outputs/sha256"]
    run, config = HfArgumentParser((SHA256RunArguments, LayerConstrainedConfig)).parse_args_into_dataclasses(defaults + argv)
    if not output_dir_given:
        config.output_dir = default_output_dir("sha256_embedded" if run.semeval_data is None else "sha256_semeval", config)
    outcome = run_embedded(run, config) if run.semeval_data is None else run_semeval(run, config)
    trace = outcome["trace"]
    summary = {k: trace[k] for k in ("kinds", "effects", "suggested_layers", "window")} | {
        "mean_clean_prob": sum(trace["clean_prob"]) / len(trace["clean_prob"]),
        "mean_corrupted_prob": sum(trace["corrupted_prob"]) / len(trace["corrupted_prob"]),
    }
    settings = {"run": vars(run), "training": config.to_dict(), "trace": summary}
    report = write_report(outcome["results"], Path(config.output_dir) / "report", title=outcome["title"], settings=settings)
    print(f"\nUnlearned model: {config.output_dir}/model\nReport: {report['markdown']}")
    return {"output_dir": config.output_dir, "report": report, "results": outcome["results"], "trace": outcome["trace"]}


if __name__ == "__main__":
    sys.exit(run_command(main))
