"""End-to-end unlearning runs: resolve model and data (the embedded benchmark by default), evaluate the model
before, unlearn, evaluate after, write the report. Recipes and the CLI are thin layers over `run_unlearning`."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object

from .data.tofu import load_tofu_split, retain_split_for
from .eval.distributed import destroy_process_group_at_exit
from .files import atomic_write, claim_fresh_path, fresh_output_dir


@dataclass
class UnlearnRunArguments:
    r"""
    What to unlearn and how to judge it.

    Parameters:
        method (`str`, defaults to `"flat"`): one of `hf_unlearn.trainers.METHODS`.
        model_name_or_path (`str`, *optional*): the model to unlearn (Hub name, local folder or `.gguf` file);
            the embedded benchmark's finetuned model when unset.
        dataset (`str`, *optional*): TOFU-schema data (Hub name such as `locuslab/TOFU`, or a local folder); the
            embedded benchmark's data when unset.
        forget_split (`str`, defaults to `"forget10"`) and retain_split (`str`, *optional*, the complement of the
            forget split by default).
        retain_model_name_or_path (`str`, *optional*): the retain model, evaluated as the reference for forget
            quality; the embedded retain model when the benchmark is embedded.
        reference_eval (`str`, *optional*): a saved evaluation JSON of the retain model, instead of evaluating it.
        holdout_split (`str`, *optional*): never-trained examples for MIA (`holdout10` on the embedded benchmark).
        lora_r (`int`, defaults to `0`): train a LoRA adapter of this rank instead of the full model (0: full).
        relapse (`bool`, defaults to `True`): add the quantization-relapse check to the report (`--no_relapse`: skip):
            the unlearned and the original model evaluated quantized, relapse and weights moved to another bucket.
        relapse_precisions (`list[str]`, defaults to `["nf4"]`): its precisions (`nf4`, `fp4`, `int8`, `fake-nf4`,
            `rtn<bits>[g<group>]`; see `hf_unlearn.eval.quantization.parse_precision`).
        trust_remote_code (`bool`, defaults to `False`).
    """

    method: str = field(default="flat", metadata={"help": "Unlearning method."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Model to unlearn (default: embedded)."})
    dataset: str | None = field(default=None, metadata={"help": "TOFU-schema data (default: embedded)."})
    forget_split: str = field(default="forget10", metadata={"help": "Forget split."})
    retain_split: str | None = field(default=None, metadata={"help": "Retain split (default: complement)."})
    retain_model_name_or_path: str | None = field(default=None, metadata={"help": "Retain (reference) model."})
    reference_eval: str | None = field(default=None, metadata={"help": "Saved evaluation JSON of the retain model."})
    holdout_split: str | None = field(default=None, metadata={"help": "Holdout split for MIA."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (0: train the full model)."})
    relapse: bool = field(default=True, metadata={"help": "Add the quantization-relapse check to the report."})
    relapse_precisions: list[str] = field(
        default_factory=lambda: ["nf4"], metadata={"help": "Precisions of the relapse check (nf4, fp4, int8, rtn4g64...)."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})

    def __post_init__(self):
        from .eval.quantization import parse_precision
        from .trainers import METHODS

        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; choose one of {sorted(METHODS)}.")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be 0 (train the full model) or a LoRA rank >= 1, got {self.lora_r}; e.g. 16.")
        if self.relapse:
            for precision in self.relapse_precisions:
                parse_precision(precision)  # an unknown precision fails now, not after training


def default_output_dir(name: str, config) -> str:
    """A fresh `outputs/<name>[-N]` folder, created by the main process (atomically: two runs started together get
    two folders) and the same on every process."""
    state = distributed_state(config)
    chosen = [None]
    if state.is_main_process:
        chosen = [str(claim_fresh_path(Path("outputs") / name))]
    if state.num_processes > 1:
        broadcast_object_list(chosen)
    return chosen[0]


def distributed_state(config) -> PartialState:
    """The process layout, set up by the training config first (so a CPU-only multi-process launch uses gloo)."""
    config.device  # noqa: B018 - initialises the distributed state the way the Trainer will use it
    destroy_process_group_at_exit()
    return PartialState()


RESUME_LAST = ("true", "last", "yes", "1")


def resolve_resume_checkpoint(config) -> None:
    """`--resume_from_checkpoint true` (or `last`) becomes the last complete checkpoint of `--output_dir`; a named
    checkpoint must be complete. Checked before anything loads: an incomplete checkpoint (a run killed while
    saving) would otherwise fail after the evaluations."""
    from .files import is_complete_checkpoint, last_complete_checkpoint

    value = config.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "no", "0", ""):
        config.resume_from_checkpoint = None
        return
    if str(value).lower() in RESUME_LAST:
        last = last_complete_checkpoint(config.output_dir)
        if last is None:
            raise FileNotFoundError(f"--resume_from_checkpoint {value}: {config.output_dir} holds no complete "
                                    "checkpoint-N folder (one with trainer_state.json); start a new run instead.")
        config.resume_from_checkpoint = str(last)
        return
    if not is_complete_checkpoint(value):
        last = last_complete_checkpoint(Path(value).parent) if Path(value).parent.is_dir() else None
        hint = f"resume from {last} (the last complete one)" if last else "start a new run"
        raise FileNotFoundError(f"--resume_from_checkpoint {value} is not a complete checkpoint (no readable "
                                f"trainer_state.json: the run stopped while saving it); {hint}.")


def resolve_benchmark(run: UnlearnRunArguments) -> UnlearnRunArguments:
    """Fill in the embedded benchmark where no model or data set is named."""
    if run.model_name_or_path is not None and run.dataset is not None:
        return run
    if (run.model_name_or_path is None) != (run.dataset is None):
        raise ValueError(
            "Name both --model_name_or_path and --dataset (a real run), or neither (the embedded benchmark)."
        )
    from .benchmarks.embedded import build_embedded_benchmark

    benchmark = build_embedded_benchmark()
    run.model_name_or_path = str(benchmark.finetuned_dir)
    run.dataset = str(benchmark.data_dir)
    run.retain_model_name_or_path = run.retain_model_name_or_path or str(benchmark.retain_dir)
    run.holdout_split = run.holdout_split or "holdout10"
    return run


def reference_evaluation(run: UnlearnRunArguments, config, accelerator=None) -> dict | None:
    """The retain model's evaluation (for forget quality), read from `reference_eval` (checked to be on the run's
    forget split) or computed from the retain model."""
    from .eval.tofu import check_same_forget_split, evaluate_tofu, load_reference
    from .modeling import load_causal_lm

    if run.reference_eval is not None:
        reference = load_reference(run.reference_eval)
        check_same_forget_split(reference, run.forget_split)
        return reference
    if run.retain_model_name_or_path is None:
        return None

    model, tokenizer = load_causal_lm(run.retain_model_name_or_path, trust_remote_code=run.trust_remote_code)
    model.to(config.device)
    return evaluate_tofu(model, tokenizer, run.dataset, **evaluation_settings(run, config, accelerator))


def evaluation_settings(run: UnlearnRunArguments, config, accelerator) -> dict:
    """The `evaluate_tofu` arguments every evaluation of a run shares (before, after and quantized)."""
    return {
        "forget_split": run.forget_split,
        "holdout_split": run.holdout_split,
        "max_length": config.max_length,
        "max_new_tokens": config.eval_max_new_tokens,
        "max_items": config.eval_max_items,
        "accelerator": accelerator,
    }


def run_unlearning(run: UnlearnRunArguments, config) -> dict:
    """Unlearn `run.forget_split` from the model with `run.method`, evaluate before and after, write the report.

    Returns `{"output_dir", "report", "results"}`; the report folder holds JSON, markdown and plots.
    """
    from peft import LoraConfig, PeftModel
    from transformers import PreTrainedModel

    from .eval.report import write_report
    from .eval.tofu import evaluate_tofu
    from .modeling import load_causal_lm
    from .trainers import METHODS

    if run.method not in METHODS:
        raise ValueError(f"Unknown method {run.method!r}; choose one of {sorted(METHODS)}.")
    config_class, trainer_class = METHODS[run.method]
    if not isinstance(config, config_class):
        raise TypeError(f"Method {run.method!r} needs a {config_class.__name__}, got {type(config).__name__}.")
    resolve_resume_checkpoint(config)
    fresh_output_dir(config.output_dir, resumable=True, resuming=config.resume_from_checkpoint is not None)
    push_to_hub, config.push_to_hub = config.push_to_hub, False  # pushed once at the end, with the model card
    if push_to_hub and not config.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id user-or-org/name (the repository to create or update).")
    if push_to_hub:
        from .hub import HUB_ID

        if not HUB_ID.match(config.hub_model_id):
            raise ValueError(f"--hub_model_id {config.hub_model_id!r} is not of the form user-or-org/name.")
    run = resolve_benchmark(run)
    retain_split = run.retain_split or retain_split_for(run.forget_split)
    forget = load_tofu_split(run.dataset, run.forget_split)
    retain = load_tofu_split(run.dataset, retain_split)
    from .trainers.base import check_forget_retain_overlap, question_answer_rows

    check_forget_retain_overlap(question_answer_rows(forget, run.forget_split),  # bad rows fail now, not after
                                question_answer_rows(retain, retain_split))     # the reference evaluation
    load_tofu_split(run.dataset, f"{run.forget_split}_perturbed")  # fail now, not after training
    if run.holdout_split is not None:
        load_tofu_split(run.dataset, run.holdout_split)
    config.eval_data = config.eval_data or run.dataset
    config.eval_forget_split = run.forget_split
    config.eval_holdout_split = config.eval_holdout_split or run.holdout_split

    state = distributed_state(config)
    reference = reference_evaluation(run, config, state)  # a bad --reference_eval fails before the model loads
    model, tokenizer = load_causal_lm(run.model_name_or_path, trust_remote_code=run.trust_remote_code)
    results = {"retain": reference} if reference is not None else {}
    if reference is not None and state.is_main_process:
        os.makedirs(config.output_dir, exist_ok=True)
        atomic_write(Path(config.output_dir, "reference_eval.json"), json.dumps(reference))
    model.to(config.device)
    results["finetuned"] = evaluate_tofu(model, tokenizer, run.dataset, reference=reference,
                                         **evaluation_settings(run, config, state))
    peft_config = (
        LoraConfig(r=run.lora_r, lora_alpha=2 * run.lora_r, target_modules="all-linear", task_type="CAUSAL_LM")
        if run.lora_r
        else None
    )
    if reference is not None:
        config.eval_reference = str(Path(config.output_dir, "reference_eval.json"))
    trainer = trainer_class(
        model=model,
        args=config,
        forget_dataset=forget,
        retain_dataset=retain,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    run_info = {"world_size": state.num_processes, "ranks": gather_object([_retain_draws(trainer, state)])}
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(str(Path(config.output_dir, "model")))
    trainer.evaluate()
    results[run.method] = trainer.last_evaluation
    relapse = None
    if run.relapse and isinstance(trainer.evaluation_model(), (PreTrainedModel, PeftModel)):  # not ULD's logit difference
        relapse = relapse_check(run, config, trainer, tokenizer, results, reference, state)
    report = None
    if state.is_main_process:
        settings = {"run": vars(run), "training": config.to_dict(),
                    "stopped_when_forgotten": trainer.stopped_when_forgotten}
        report = write_report(results, Path(config.output_dir) / "report", title=f"{run.method} on {run.dataset}",
                              settings=settings)
        if relapse is not None:
            from .eval.relapse import write_relapse_report

            paths = write_relapse_report(relapse, Path(config.output_dir) / "report", title=f"Quantization relapse of {run.method}")
            report.update({f"relapse_{kind}": path for kind, path in paths.items()})
        atomic_write(Path(config.output_dir, "run_info.json"), json.dumps(run_info, indent=2))
    hub_url = None
    if push_to_hub and state.is_main_process:
        hub_url = _push(config)
    state.wait_for_everyone()
    return {"output_dir": config.output_dir, "report": report, "results": results, "hub_url": hub_url}


def _push(config) -> str | None:
    """Push the finished run; a failed upload is reported, not raised: the local run stays the result."""
    from .hub import PushError, push_unlearned

    private = True if config.hub_private_repo is None else config.hub_private_repo
    try:
        url = push_unlearned(config.output_dir, config.hub_model_id, private=private, token=config.hub_token)
    except PushError as error:
        print(f"\n{error}", file=sys.stderr)
        return None
    print(f"\nPushed to {url}")
    return url


# Training settings for the embedded benchmark's 1M-parameter model, used when a recipe runs it without the flag.
# The method configs' own defaults are the papers' settings for 7B models (e.g. FLAT: lr 1e-5), under which the tiny
# model barely moves. Chosen by a sweep on the embedded benchmark (forget ROUGE-L vs model utility; see README).
# FLAT trains until forgotten (`stop_at_forget_prob`): any fixed budget sat on a cliff whose place differs between
# builds (lr 1e-4 x 10 epochs: forget ROUGE-L 0.70 on build seed 0, utility 0.33 on build seed 1; lr 8e-5: 0.81 /
# 0.47). Stopping at forget probability 0.35 gave ROUGE-L 0.37-0.59 at utility 0.78-0.89 x finetuned (retain ROUGE-L
# 0.55-0.88) on both builds x 3 seeds with the issue-19 metric definitions (0.40-0.56 at 0.81-0.95 x before them)
# (`python benchmarks/sweep.py --method flat --grid learning_rate=1e-4 num_train_epochs=20
# stop_at_forget_prob=0.35,0.4 --build_seeds 0 1 --seeds 0 1 2`).
EMBEDDED_DEFAULTS: dict[str, dict] = {
    "flat": {"learning_rate": 1e-4, "num_train_epochs": 20, "per_device_train_batch_size": 4,
             "stop_at_forget_prob": 0.35},
    "grad_ascent": {"learning_rate": 1e-4, "num_train_epochs": 5, "per_device_train_batch_size": 4},
    "grad_diff": {"learning_rate": 5e-4, "num_train_epochs": 10, "per_device_train_batch_size": 4},
    "npo": {"learning_rate": 5e-4, "num_train_epochs": 10, "per_device_train_batch_size": 4},
    "simnpo": {"learning_rate": 5e-4, "num_train_epochs": 10, "per_device_train_batch_size": 4},
    "idk_dpo": {"learning_rate": 5e-4, "num_train_epochs": 10, "per_device_train_batch_size": 4},
    # RMU: the WMDP release's retain weight (alpha 100) holds the 4-layer model in place (forget ROUGE-L stays 1.0);
    # alpha 1 lets the steering act (steering_coeff 20 kept)
    "rmu": {"learning_rate": 1e-3, "num_train_epochs": 10, "per_device_train_batch_size": 4, "alpha": 1.0},
    # ULD: lr 3e-3 kept model utility at 0.85-0.95 x on build seed 0 (0.99 x on seed 1); 2e-3 at 0.93-0.99 x on both
    "uld": {"learning_rate": 2e-3, "num_train_epochs": 10, "per_device_train_batch_size": 4, "assistant_layers": 0.5,
            "assistant_lora_r": 32, "assistant_lora_alpha": 64, "assistant_weight": 1.0},
    # layer-constrained: until forgotten (forget prob <= 0.02, at most 60 epochs) with the retain weight clipped to
    # [16, 24]: the tiny model's retain CE (~0.003) keeps the paper's alpha at its floor 1.2, where the retain answers
    # went as fast as the forget ones (stopped at forget prob 0.2: forget ROUGE-L 0.45-0.64 x at retain 0.83-0.92 x).
    # Forget / retain ROUGE-L x before (tests/test_layer_constrained.py's setting), build seeds 0 | 1 x seeds 0-2:
    # [8, 12]: 0.37 0.40 0.44 / 0.98 0.98 0.98 | 0.17 0.23 0.12 / 0.86 0.96 0.78;
    # [16, 24]: 0.38 0.44 0.41 / 0.98 0.97 0.98 | 0.17 0.22 0.08 / 0.99 0.97 0.89.
    "layer_constrained": {"learning_rate": 5e-4, "lr_scheduler_type": "constant", "num_train_epochs": 60,
                          "per_device_train_batch_size": 8, "stop_at_forget_prob": 0.02, "alpha_min": 16.0,
                          "alpha_max": 24.0},
    "stamp": {"num_auto_layers": 4, "forget_weight": 1.0},  # every forget10 fact at once (benchmarks/run.py)
}

UNLEARN_EXAMPLES = """examples:
  accelerate launch recipes/tofu_unlearn.py --method npo          # the embedded benchmark, defaults
  hf-unlearn unlearn --method flat --divergence js --learning_rate 2e-4
  hf-unlearn unlearn --method grad_diff --model_name_or_path locuslab/tofu_ft_llama2-7b \\
      --dataset locuslab/TOFU --forget_split forget10 --lora_r 16 --push_to_hub --hub_model_id me/llama-forget10

Every TrainingArguments flag applies, plus the method's own flags (e.g. --beta for NPO); `--method M --help` lists
them."""


def given_flags(argv: list[str]) -> set[str]:
    """Names of the flags on a command line, in both spellings argparse accepts (`--lr 1e-4` and `--lr=1e-4`):
    `["--learning_rate=3e-4", "--seed", "1"]` -> `{"learning_rate", "seed"}`."""
    return {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--") and len(arg) > 2}


def parse_unlearn_args(argv: list[str], method: str | None = None, prog: str | None = None):
    """`(UnlearnRunArguments, <Method>Config)` from command-line flags; `method` fixes the method (recipes)."""
    from transformers import HfArgumentParser

    from .trainers import METHODS

    first_pass = [a for a in argv if a not in ("-h", "--help")]  # the full parser below shows the help
    run, _ = HfArgumentParser(UnlearnRunArguments).parse_args_into_dataclasses(first_pass, return_remaining_strings=True)
    run.method = method or run.method
    if run.method not in METHODS:
        raise SystemExit(f"Unknown method {run.method!r}; choose one of {sorted(METHODS)}.")
    import argparse

    parser = HfArgumentParser(
        (UnlearnRunArguments, METHODS[run.method][0]),
        prog=prog,
        epilog=UNLEARN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run, config = parser.parse_args_into_dataclasses(argv)
    run.method = method or run.method
    given = given_flags(argv)
    if run.model_name_or_path is None and run.dataset is None:
        for name, value in EMBEDDED_DEFAULTS.get(run.method, {}).items():
            if name not in given:
                setattr(config, name, value)
    if "output_dir" not in given:
        config.output_dir = default_output_dir(f"tofu_{run.method}_{run.forget_split}", config)
    return run, config


def unlearn_main(argv: list[str], method: str | None = None, prog: str | None = None) -> dict:
    """Parse flags, run `run_unlearning`, and say where the model and the report are."""
    run, config = parse_unlearn_args(argv, method=method, prog=prog)
    result = run_unlearning(run, config)
    if result["report"]:
        from .eval.report import markdown_table

        keys = ("forget_quality", "model_utility", "forget_rougeL_recall", "forget_prob", "mia_auc_min_k", "privleak")
        summary = {label: {k: r.get(k) for k in keys} for label, r in result["results"].items()}
        print(f"\n{markdown_table(summary)}\n\nUnlearned model: {result['output_dir']}/model\n"
              f"Report: {result['report']['markdown']} (JSON and plot beside it)")
        if run.reference_eval is None and "retain" in result["results"]:
            print(f"Next run on this forget split: --reference_eval {result['output_dir']}/reference_eval.json "
                  "skips evaluating the retain model again.")
    return result


def relapse_check(run: UnlearnRunArguments, config, trainer, tokenizer, results: dict, reference, state) -> dict:
    """The quantization-relapse check of the unlearned model against the original (`run.model_name_or_path`) at
    `run.relapse_precisions`; adds the quantized evaluations to `results` as `<label> @ <precision>` columns."""
    from .eval.quantization import FULL_PRECISION
    from .eval.relapse import evaluate_relapse, quantized_results
    from .modeling import load_causal_lm

    original, _ = load_causal_lm(run.model_name_or_path, trust_remote_code=run.trust_remote_code)
    relapse = evaluate_relapse(
        trainer.evaluation_model(),
        tokenizer,
        run.dataset,
        precisions=run.relapse_precisions,
        original=original.to(config.device),
        label=run.method,
        original_label="finetuned",
        full_precision=results[run.method],
        original_evaluations={FULL_PRECISION: results["finetuned"]},
        reference=reference,
        **evaluation_settings(run, config, state),
    )
    results.update(quantized_results(relapse))
    return relapse


def _retain_draws(trainer, state: PartialState, count: int = 16) -> dict:
    """This process's first retain partners, recorded so a run shows that every rank drew its own."""
    dataset = trainer.train_dataset
    draws = [dataset.retain_index(i) for i in range(min(count, len(dataset)))] if dataset.retain is not None else []
    return {"rank": state.process_index, "retain_draws": draws}
