"""The `hf-unlearn` command line.

Each subcommand is a pair: `_add_<name>_parser(subparsers)` declares its arguments and sets `handler`, and
`_run_<name>(args) -> int` does the work through the Python API. Every subcommand works under `accelerate launch`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import run_command
from .eval.muse import MUSE_MAX_LENGTH
from .eval.semeval import SEMEVAL_MAX_NEW_TOKENS
from .eval.tofu import TOFU_MAX_LENGTH, TOFU_MAX_NEW_TOKENS


DEFAULT_DATA = {
    "tofu": "locuslab/TOFU",
    "muse": "muse-bench/MUSE-News",
    "semeval": "llmunlearningsemeval2025organization/semeval25-unlearning-dataset-public",
}
DEFAULT_MAX_LENGTH = {"tofu": TOFU_MAX_LENGTH, "embedded": TOFU_MAX_LENGTH, "muse": MUSE_MAX_LENGTH, "semeval": 2048}
# TOFU: open-unlearning's generation length; SemEval: the official scorer's
DEFAULT_MAX_NEW_TOKENS = {"tofu": TOFU_MAX_NEW_TOKENS, "embedded": TOFU_MAX_NEW_TOKENS, "semeval": SEMEVAL_MAX_NEW_TOKENS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-unlearn", description="Make a Hugging Face causal LM forget something, and prove that it did."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers.add_parser(
        "unlearn",
        help="Unlearn a forget split with any method, evaluate, report (`hf-unlearn unlearn --help` for flags).",
        add_help=False,
    )
    subparsers.add_parser(
        "generate",
        help="Generate with CleanGen in front of a suspect model (`hf-unlearn generate --cleangen --help`).",
        add_help=False,
    )
    _add_eval_parser(subparsers)
    _add_card_parser(subparsers)
    _add_push_parser(subparsers)
    _add_antidote_parser(subparsers)
    _add_stamp_parser(subparsers)
    _add_relapse_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hf-unlearn` console script: a failure is one line on stderr and exit status 1
    (`--traceback` or `HF_UNLEARN_DEBUG=1` shows the traceback; `hf_unlearn.errors`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    return run_command(_dispatch, argv, prog=f"hf-unlearn {command}" if command else "hf-unlearn")


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["unlearn"]:  # TrainingArguments-style flags: parsed by HfArgumentParser, as in the recipes
        from .pipeline import unlearn_main

        unlearn_main(argv[1:], prog="hf-unlearn unlearn")
        return 0
    if argv[:1] == ["generate"]:  # dataclass flags (CleanGenConfig), parsed by HfArgumentParser
        if "--cleangen" not in argv and not {"-h", "--help"} & set(argv):
            raise SystemExit("hf-unlearn generate: only --cleangen decoding is offered; plain decoding is "
                             "`model.generate()` in transformers.")
        from .decoding.generate import generate_main

        generate_main([a for a in argv[1:] if a != "--cleangen"], prog="hf-unlearn generate --cleangen")
        return 0
    args = build_parser().parse_args(argv)
    return args.handler(args)


def _examples(*lines: str) -> dict:
    return {"epilog": "examples:\n" + "\n".join(f"  {line}" for line in lines),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


# ----------------------------------------------------------------------------------------------------------------
# hf-unlearn card / push


def _add_card_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "card",
        help="Write the model card of a finished run into <run_dir>/model/README.md.",
        **_examples("hf-unlearn card --run_dir outputs/tofu_flat_forget10 --hub_model_id me/model-forget10"),
    )
    _add_card_arguments(parser)
    parser.set_defaults(handler=_run_card)


def _add_card_arguments(parser) -> None:
    parser.add_argument("--run_dir", required=True, help="A run folder: model/ and report/ as the recipes write them.")
    parser.add_argument("--hub_model_id", help="Repository the card is for (names the model in the card).")
    parser.add_argument("--license", default="other", help="License in the card's metadata (default: other).")
    parser.add_argument("--base_model", help="Hub name of the base model, if the run used a local copy of it.")


def _run_card(args) -> int:
    from .hub import write_model_card

    path = write_model_card(args.run_dir, repo_id=args.hub_model_id, license=args.license, base_model=args.base_model)
    print(f"Model card: {path}")
    return 0


def _add_push_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="Push a finished run's model to the Hub with its model card (private by default).",
        **_examples(
            "hf-unlearn push --run_dir outputs/tofu_flat_forget10 --hub_model_id me/model-forget10",
            "HF_TOKEN=... hf-unlearn push --run_dir outputs/run --hub_model_id org/model --public --license mit",
        ),
    )
    _add_card_arguments(parser)
    parser.add_argument("--public", action="store_true", help="Create a public repository (private by default).")
    parser.set_defaults(handler=_run_push)


def _run_push(args) -> int:
    from .hub import PushError, push_unlearned

    if args.hub_model_id is None:
        raise SystemExit("hf-unlearn push: --hub_model_id user-or-org/name is required.")
    try:
        url = push_unlearned(args.run_dir, args.hub_model_id, private=not args.public, license=args.license,
                             base_model=args.base_model)
    except PushError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"Pushed to {url}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# hf-unlearn eval


def _add_eval_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="Evaluate a model: TOFU (forget quality, model utility, MIA) or MUSE metrics, written as a report.",
        description=(
            "Evaluate a model and write evaluation.json / .md / .png into --output_dir. With --benchmark embedded "
            "and no --model, the embedded benchmark's finetuned and retain models are evaluated."
        ),
        **_examples(
            "hf-unlearn eval --benchmark embedded --output_dir eval-embedded",
            "hf-unlearn eval --benchmark tofu --model outputs/tofu_flat_forget10/model --data locuslab/TOFU \\",
            "    --forget_split forget10 --reference retain_eval.json --output_dir eval-flat",
            "accelerate launch -m hf_unlearn.cli eval --benchmark muse --model my-model --output_dir eval-muse",
        ),
    )
    parser.add_argument("--model", help="Model to evaluate: Hub name, local folder or .gguf file.")
    parser.add_argument("--benchmark", choices=("tofu", "muse", "semeval", "embedded"), default="embedded")
    parser.add_argument("--data", help="Data: local folder or Hub name (default: locuslab/TOFU, "
                        "muse-bench/MUSE-News, or the embedded benchmark's data).")
    parser.add_argument("--forget_split", default="forget10", help="TOFU forget split (its _perturbed split is used).")
    parser.add_argument("--retain_split", default="retain_perturbed", help="TOFU retain evaluation split.")
    parser.add_argument("--holdout_split", help="TOFU holdout split for the MIA AUCs (default: holdoutNN if present).")
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument("--reference", help="The retain model's saved evaluation JSON (forget quality, PrivLeak).")
    reference.add_argument("--retain_model", help="The retain model: it is evaluated first and used as reference.")
    parser.add_argument("--semeval_split", default="validation", help="SemEval-2025 Task 4 split: train or validation.")
    parser.add_argument("--mmlu_data", help="MMLU CSV folder or Hub name, for the SemEval final score.")
    parser.add_argument("--output_dir", required=True, help="Folder for the report (an earlier report is kept).")
    parser.add_argument("--label", help="The model's name in the report (default: the model's folder name).")
    parser.add_argument("--title", default=None, help="Report title.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, help="TOFU / SemEval generation length (default: 200 TOFU, 256 SemEval).")
    parser.add_argument("--verbmem_max_new_tokens", type=int, default=128, help="MUSE VerbMem generation length.")
    parser.add_argument("--knowmem_max_new_tokens", type=int, default=32, help="MUSE KnowMem generation length.")
    parser.add_argument("--max_length", type=int, help="Token limit per example (default: 256 TOFU, 2048 MUSE).")
    parser.add_argument("--max_items", type=int, help="Evaluate only the first N items of every set.")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--trust_remote_code", action="store_true", help="Allow model code from the Hub (off by default).")
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bars.")
    parser.set_defaults(handler=_run_eval)


def _run_eval(args) -> int:
    from .eval.report import markdown_table, write_report

    if args.model is None and args.benchmark != "embedded":
        raise SystemExit(f"hf-unlearn eval: --model is required with --benchmark {args.benchmark}.")
    state = _distributed_state()
    data = args.data
    retain_model = args.retain_model
    models: dict[str, str] = {}
    if args.benchmark == "embedded":
        from .benchmarks.embedded import build_embedded_benchmark

        benchmark = build_embedded_benchmark()
        data = data or str(benchmark.data_dir)
        if args.reference is None and retain_model is None:
            retain_model = str(benchmark.retain_dir)
        if args.model is None:
            models["finetuned"] = str(benchmark.finetuned_dir)
    data = data or DEFAULT_DATA[args.benchmark]
    if args.reference is not None:  # a bad file fails now, not after a model has loaded
        from .eval.tofu import load_reference

        load_reference(args.reference)
    if args.benchmark == "muse":  # a wrong folder fails now, not after a model has loaded
        from .eval.muse import check_muse_data

        check_muse_data(data)
    if args.model is not None:
        models[args.label or Path(args.model.rstrip("/")).name or args.model] = args.model

    results: dict[str, dict] = {}
    reference = args.reference
    if retain_model is not None:
        results["retain"] = _evaluate_model(retain_model, data, args, reference=None, state=state)
        reference = results["retain"]
    for label, name in models.items():
        results[label] = _evaluate_model(name, data, args, reference=reference, state=state)

    if state is None or state.is_main_process:
        settings = {"command": "hf-unlearn " + " ".join(sys.argv[1:]), "benchmark": args.benchmark, "data": str(data),
                    "reference": args.reference or retain_model}
        paths = write_report(results, args.output_dir, title=args.title or f"{args.benchmark} evaluation", settings=settings)
        print(markdown_table(results))
        for kind, path in paths.items():
            print(f"{kind}: {path}")
    return 0


def _evaluate_model(name_or_path: str, data, args, reference, state) -> dict:
    from .eval.muse import evaluate_muse
    from .eval.tofu import evaluate_tofu
    from .modeling import load_causal_lm

    dtype = None if args.dtype in (None, "auto") else getattr(__import__("torch"), args.dtype)
    model, tokenizer = load_causal_lm(name_or_path, trust_remote_code=args.trust_remote_code, dtype=dtype)
    model.to(_device(state))
    max_length = args.max_length or DEFAULT_MAX_LENGTH[args.benchmark]
    max_new_tokens = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(args.benchmark)
    if args.benchmark == "semeval":
        from .eval.mmlu import evaluate_mmlu
        from .eval.semeval import evaluate_semeval

        mmlu = evaluate_mmlu(model, tokenizer, args.mmlu_data, max_items=args.max_items)["accuracy"] if args.mmlu_data else None
        return evaluate_semeval(model, tokenizer, data, split=args.semeval_split, mia_data=data, mmlu_accuracy=mmlu,
                                max_new_tokens=max_new_tokens, max_length=max_length, batch_size=args.batch_size,
                                max_items_per_group=args.max_items, progress=not args.no_progress, accelerator=state)
    common = {"batch_size": args.batch_size, "max_length": max_length, "progress": not args.no_progress,
              "accelerator": state, "max_items": args.max_items, "reference": reference}
    if args.benchmark == "muse":
        return evaluate_muse(model, tokenizer, data, verbmem_max_new_tokens=args.verbmem_max_new_tokens,
                             knowmem_max_new_tokens=args.knowmem_max_new_tokens, **common)
    return evaluate_tofu(model, tokenizer, data, forget_split=args.forget_split, retain_split=args.retain_split,
                         holdout_split=args.holdout_split, max_new_tokens=max_new_tokens, **common)


def _distributed_state():
    """accelerate's `PartialState` when launched on several processes (`accelerate launch`), else None.

    Without a GPU it is asked for CPU processes (gloo): a plain `PartialState()` there sees no distributed setup
    and every process would evaluate everything alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    from .eval.distributed import destroy_process_group_at_exit

    state = PartialState(cpu=not torch.cuda.is_available())
    destroy_process_group_at_exit()
    return state


def _device(state):
    import torch

    if state is not None:
        return state.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------------------------
# hf-unlearn stamp


def _add_stamp_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "stamp",
        help="Forget one fact without training (STAMP, a closed-form edit of an MLP down-projection).",
        **_examples(
            'hf-unlearn stamp --model_name_or_path my-model --prompt "Where was Jo Ito born?" \\',
            '    --answer "Jo Ito was born in Osaka." --retain_questions questions.txt --output_dir jo-forgotten',
            "hf-unlearn stamp ... --delivery adapter --rank 16      # a reversible LoRA on down_proj instead",
            "python recipes/stamp_forget.py                         # several facts of a TOFU split, with a report",
        ),
    )
    parser.add_argument("--model_name_or_path", required=True, help="Model: Hub name, local folder or .gguf file.")
    parser.add_argument("--prompt", required=True, help="The question whose answer is to be forgotten.")
    parser.add_argument("--answer", required=True, help="The answer to forget.")
    parser.add_argument("--retain_questions", help="A file of unrelated questions, one per line: the edit keeps the "
                        "model's own answers to them (strongly advised).")
    parser.add_argument("--delivery", choices=("inplace", "adapter"), default="inplace")
    parser.add_argument("--layers", default="auto", help="'auto' or comma-separated layer indices.")
    parser.add_argument("--rank", type=int, help="Rank of a low-rank edit (default: the full edit).")
    parser.add_argument("--output_dir", required=True, help="New folder for the edited model (or adapter).")
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.set_defaults(handler=_run_stamp)


def _run_stamp(args) -> int:
    import json

    from .editing import stamp
    from .editing.stamp import StampConfig, answer_scores
    from .files import atomic_write, fresh_output_dir
    from .modeling import load_causal_lm

    for flag in ("prompt", "answer"):
        if not getattr(args, flag).strip():
            raise ValueError(f"--{flag} is empty; STAMP needs the question and the answer to forget (an empty answer "
                             "would teach the model to answer nothing).")
    if args.rank is not None and args.rank < 1:
        raise ValueError(f"--rank must be at least 1, got {args.rank}; leave it out for the full edit.")
    StampConfig(delivery=args.delivery, layers=args.layers, rank=args.rank)  # bad --layers fail before the model loads
    from .editing.stamp import find_down_projections
    from .modeling import weightless_model

    skeleton = weightless_model(args.model_name_or_path, args.trust_remote_code)
    if skeleton is not None:
        find_down_projections(skeleton)  # a model without `layers.<i>.mlp.down_proj` fails before its weights load
    output_dir = fresh_output_dir(args.output_dir)
    retain = None
    if args.retain_questions:
        retain = [line.strip() for line in Path(args.retain_questions).read_text().splitlines() if line.strip()]
    model, tokenizer = load_causal_lm(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    model.to(_device(None)).eval()
    fact = [{"question": args.prompt, "answer": args.answer}]
    before = answer_scores(model, tokenizer, fact)
    result = stamp.forget(model, tokenizer, prompt=args.prompt, answer=args.answer, retain=retain,
                          delivery=args.delivery, layers=args.layers, rank=args.rank)
    after = answer_scores(result.model, tokenizer, fact)
    result.model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    summary = {**result.summary(), "before": before, "after": after}
    atomic_write(output_dir / "stamp_summary.json", json.dumps(summary, indent=2, default=str))
    print(f"answer probability {before['probability'][0]:.3f} -> {after['probability'][0]:.3f}\n"
          f"before: {before['answer'][0]!r}\nafter:  {after['answer'][0]!r}\n"
          f"edit took {result.time_s:.2f} s; saved to {output_dir}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# hf-unlearn relapse


def _add_relapse_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "relapse",
        help="Quantization relapse: does 4-/8-bit quantization bring forgotten knowledge back?",
        description=(
            "Evaluate --model (and --original, the model before unlearning) on TOFU-schema data at full precision and "
            "at each of --precisions; write relapse.json / .md / .png into --output_dir. With --benchmark embedded, "
            "--original defaults to the embedded finetuned model."
        ),
        **_examples(
            "hf-unlearn relapse --model outputs/tofu_flat_forget10/model --output_dir relapse-flat",
            "hf-unlearn relapse --benchmark tofu --model me/unlearned --original locuslab/tofu_ft_llama2-7b \\",
            "    --precisions nf4 fp4 int8 rtn3g64 --reference retain_eval.json --output_dir relapse",
        ),
    )
    parser.add_argument("--model", required=True, help="The unlearned model (full precision): Hub name, folder or .gguf.")
    parser.add_argument("--original", help="The model before unlearning: evaluated too, and compared weight by weight.")
    parser.add_argument("--benchmark", choices=("tofu", "embedded"), default="embedded")
    parser.add_argument("--data", help="TOFU-schema data: local folder or Hub name (default: locuslab/TOFU, or the "
                        "embedded benchmark's data).")
    parser.add_argument("--precisions", nargs="+", default=["nf4", "int8"],
                        help="nf4, fp4, int8 (bitsandbytes); fake-nf4, fake-fp4, fake-int8, rtn<bits>[g<group>] (pure torch).")
    parser.add_argument("--forget_split", default="forget10", help="TOFU forget split (its _perturbed split is used).")
    parser.add_argument("--holdout_split", help="TOFU holdout split for the MIA AUCs (default: holdoutNN if present).")
    parser.add_argument("--reference", help="The retain model's saved evaluation JSON (for forget quality).")
    parser.add_argument("--output_dir", required=True, help="Folder for the report (an earlier report is kept).")
    parser.add_argument("--label", help="The model's name in the report (default: the model's folder name).")
    parser.add_argument("--title", default="Quantization relapse", help="Report title.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=TOFU_MAX_NEW_TOKENS, help="TOFU generation length.")
    parser.add_argument("--max_items", type=int, help="Evaluate only the first N items of every set.")
    parser.add_argument("--trust_remote_code", action="store_true", help="Allow model code from the Hub (off by default).")
    parser.set_defaults(handler=_run_relapse)


def _run_relapse(args) -> int:
    from .eval.quantization import parse_precision
    from .eval.relapse import evaluate_relapse, relapse_markdown, write_relapse_report
    from .modeling import load_causal_lm

    for precision in args.precisions:
        parse_precision(precision)  # an unknown precision fails before any model loads
    state = _distributed_state()
    data, original = args.data, args.original
    if args.benchmark == "embedded":
        from .benchmarks.embedded import build_embedded_benchmark

        benchmark = build_embedded_benchmark()
        data = data or str(benchmark.data_dir)
        original = original or str(benchmark.finetuned_dir)
    data = data or DEFAULT_DATA["tofu"]
    if original is not None:
        from .modeling import check_same_architecture

        check_same_architecture(args.model, original)
    model, tokenizer = load_causal_lm(args.model, trust_remote_code=args.trust_remote_code)
    model.to(_device(state))
    if original is not None:
        original, _ = load_causal_lm(original, trust_remote_code=args.trust_remote_code)
        original.to(_device(state))
    relapse = evaluate_relapse(
        model, tokenizer, data, precisions=args.precisions, original=original,
        label=args.label or Path(args.model.rstrip("/")).name or args.model, forget_split=args.forget_split,
        holdout_split=args.holdout_split, reference=args.reference, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, max_items=args.max_items, accelerator=state,
    )
    if state is None or state.is_main_process:
        paths = write_relapse_report(relapse, args.output_dir, title=args.title)
        print(relapse_markdown(relapse, args.title))
        for kind, path in paths.items():
            print(f"{kind}: {path}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# hf-unlearn antidote


def _add_antidote_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "antidote",
        help="Prune the weights harmful fine-tuning added (Antidote), from harmful prompt + answer rows.",
        **_examples(
            "hf-unlearn antidote --model_name_or_path my-lora-adapter --dense_ratio 0.2 --output_dir pruned",
            "hf-unlearn antidote --model_name_or_path my-model --realignment_data harmful.jsonl \\",
            "    --target_modules q_proj k_proj v_proj o_proj --score magnitude --output_dir pruned-magnitude",
        ),
    )
    parser.add_argument("--model_name_or_path", required=True,
                        help="A model, or a PEFT adapter folder (its LoRA weights are pruned).")
    parser.add_argument("--realignment_data", help="Harmful rows: AdvBench's harmful_behaviors.csv (goal,target) or "
                        "JSON lines with question/answer (default: AdvBench from the shared data).")
    parser.add_argument("--dense_ratio", type=float, default=0.1, help="Fraction of each row to zero (default 0.1).")
    parser.add_argument("--score", choices=("wanda", "magnitude", "random"), default="wanda")
    parser.add_argument("--target_modules", nargs="+", default=["q_proj", "k_proj", "v_proj"])
    parser.add_argument("--max_rows", type=int, default=128, help="Re-alignment rows to calibrate on.")
    parser.add_argument("--output_dir", required=True, help="New folder for the pruned model and its summary.")
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.set_defaults(handler=_run_antidote)


def _run_antidote(args) -> int:
    import json
    from dataclasses import asdict

    from .files import atomic_write, fresh_output_dir
    from .pruning import AntidoteConfig, antidote_prune

    config = AntidoteConfig(dense_ratio=args.dense_ratio, score=args.score, target_modules=args.target_modules)
    rows = _realignment_rows(args.realignment_data)[: args.max_rows] if args.score == "wanda" else None
    _check_prunable_before_loading(args.model_name_or_path, config, args.trust_remote_code)
    output_dir = fresh_output_dir(args.output_dir)
    model, tokenizer = _load_model_or_adapter(args.model_name_or_path, args.trust_remote_code)
    model, summary = antidote_prune(model, tokenizer, rows, config)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    atomic_write(output_dir / "antidote_summary.json", json.dumps(asdict(summary), indent=2))
    print(f"Pruned {sum(summary.pruned.values())} of {sum(summary.total.values())} weights in "
          f"{len(summary.pruned)} modules ({args.score}, dense_ratio {args.dense_ratio}); saved to {output_dir}")
    return 0


def _realignment_rows(path: str | None) -> list[dict]:
    from .benchmarks.harmful_finetuning import compliance_rows, load_advbench

    if path is None or path.endswith(".csv"):
        return compliance_rows(load_advbench(path))
    from .data.tofu import read_json_lines

    rows = read_json_lines(path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not {"question", "answer"} <= set(row):
            raise ValueError(f"{path}: row {number} lacks 'question' or 'answer'; --realignment_data needs JSON lines "
                             "with both (or AdvBench's harmful_behaviors.csv).")
    if not rows:
        raise ValueError(f"{path} holds no rows; --realignment_data needs JSON lines with 'question' and 'answer'.")
    return rows


def _check_prunable_before_loading(name_or_path: str, config, trust_remote_code: bool) -> None:
    """Refuse `--target_modules` that name no linear layer of the model (or no module of the adapter), from the
    configs alone: the model is built on the meta device, without its weights."""
    import json

    from .modeling import check_model_folder, looks_local, weightless_model

    folder = Path(name_or_path)
    if (folder / "adapter_config.json").is_file():
        check_model_folder(folder, adapter=True)
        adapter_config = json.loads((folder / "adapter_config.json").read_text())
        base = adapter_config.get("base_model_name_or_path")
        if base and looks_local(base) and not Path(base).expanduser().exists():
            raise FileNotFoundError(f"The adapter in {folder} was trained on {base} (its adapter_config.json's "
                                    "base_model_name_or_path), which does not exist here; set base_model_name_or_path "
                                    "to where that model is.")
        adapted = adapter_config.get("target_modules")
        if isinstance(adapted, list) and not set(config.target_modules) & set(adapted):
            raise ValueError(f"The adapter in {folder} adapts {sorted(adapted)}, none of --target_modules "
                             f"{config.target_modules}; name some of its modules.")
        return
    skeleton = weightless_model(name_or_path, trust_remote_code)
    if skeleton is not None:  # a Hub name or GGUF file is checked once loaded
        from .pruning.antidote import find_prunable_linears

        find_prunable_linears(skeleton, config)


def _load_model_or_adapter(name_or_path: str, trust_remote_code: bool):
    """A PEFT adapter folder loads with its base model (as a PeftModel); anything else through `load_causal_lm`."""
    from .modeling import check_model_folder, load_causal_lm

    if Path(name_or_path, "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM
        from transformers import AutoTokenizer

        check_model_folder(name_or_path, adapter=True)  # safetensors only, as for models
        model = AutoPeftModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                                         use_safetensors=True)
        return model, AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return load_causal_lm(name_or_path, trust_remote_code=trust_remote_code)


if __name__ == "__main__":
    sys.exit(main())
