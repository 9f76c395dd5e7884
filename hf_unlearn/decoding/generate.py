"""`hf-unlearn generate --cleangen` and `recipes/cleangen_generate.py`: CleanGen over a prompt file or the backdoor
benchmark's triggered prompts, across processes."""

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from transformers import HfArgumentParser

from ..benchmarks.backdoor import (
    BackdoorBenchmarkConfig,
    attack_succeeded,
    attacker_output,
    build_backdoor_benchmark,
    cleangen_answers,
    default_data_dir,
    load_backdoor_rows,
)
from ..eval.distributed import destroy_process_group_at_exit
from ..files import atomic_write, claim_fresh_path
from ..modeling import load_causal_lm
from .cleangen import CleanGenConfig, CleanGenGenerator


EXAMPLES = """examples:
  hf-unlearn generate --cleangen                     # the backdoor benchmark's tiny models and triggered prompts
  hf-unlearn generate --cleangen --target_name_or_path my-org/suspect-7b \\
      --reference_name_or_path meta-llama/Llama-2-7b-chat-hf --prompts_file prompts.jsonl --max_new_tokens 128
  accelerate launch recipes/cleangen_generate.py --attack vpi --num_prompts 40"""


@dataclass
class GenerateArguments:
    target_name_or_path: str | None = field(default=None, metadata={"help": "Suspect model (default: benchmark)."})
    reference_name_or_path: str | None = field(default=None, metadata={"help": "Reference model, same tokenizer."})
    prompts_file: str | None = field(default=None, metadata={"help": "JSON lines or plain text prompts."})
    task: str = field(default="negsentiment", metadata={"help": "Benchmark task (default models and prompts)."})
    attack: str = field(default="badnet", metadata={"help": "Benchmark attack (default models and prompts)."})
    data_dir: str | None = field(default=None, metadata={"help": "The backdoorllm data folder."})
    num_prompts: int = field(default=16, metadata={"help": "Prompts taken from the file or the benchmark."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per CleanGen batch."})
    output_file: str | None = field(default=None, metadata={"help": "New JSON-lines file (default outputs/cleangen[-N].jsonl)."})


def read_prompts(path: str) -> list[str]:
    """Prompts from JSON lines (a `question` or `instruction` field) or plain text (one per line)."""
    from ..data.tofu import read_json_lines

    if path.endswith((".jsonl", ".json")):
        prompts = []
        for number, row in enumerate(read_json_lines(path), start=1):
            prompt = row.get("question") or row.get("instruction") if isinstance(row, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{path}: row {number} has no 'question' or 'instruction' text.")
            prompts.append(prompt)
    else:
        if not Path(path).is_file():
            raise FileNotFoundError(f"No prompts file at {path}.")
        prompts = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts.")
    return prompts


def generate_main(argv: list[str] | None = None, prog: str | None = None) -> list[dict]:
    """Parse `GenerateArguments` and `CleanGenConfig` flags, decode the prompts with CleanGen (each process its
    share), write the answers as JSON lines (a new file; earlier ones are kept) and print a summary."""
    parser = HfArgumentParser((GenerateArguments, CleanGenConfig), prog=prog, epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    args, config = parser.parse_args_into_dataclasses(argv)
    state = PartialState()
    destroy_process_group_at_exit()
    output_file = _claim_output_file(args.output_file, state)
    try:
        return _generate(args, config, state, output_file)
    except BaseException:
        if state.is_main_process and output_file.exists() and output_file.stat().st_size == 0:
            output_file.unlink()  # the empty placeholder claimed above; nothing of an earlier run
        raise


def _claim_output_file(path: str | None, state: PartialState) -> Path:
    """The output file, created empty by the main process (exclusively: two runs never write one file) and the same
    on every process: the given path, refused when it exists, or `outputs/cleangen[-N].jsonl`."""
    chosen = [None]
    if state.is_main_process:
        try:
            claimed = (claim_fresh_path(path, directory=False, numbered=False) if path
                       else claim_fresh_path(Path("outputs") / "cleangen", ".jsonl", directory=False))
        except FileExistsError:
            raise FileExistsError(f"--output_file {path} exists; pick a new file (earlier results are kept).") from None
        chosen = [str(claimed)]
    if state.num_processes > 1:
        broadcast_object_list(chosen)
    return Path(chosen[0])


def _generate(args, config, state, output_file: Path) -> list[dict]:
    if args.prompts_file:  # a bad file fails before the models load
        prompts = read_prompts(args.prompts_file)[: args.num_prompts]
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    attacker_text = None
    reference_tokenizer = None
    if args.target_name_or_path is None:
        benchmark = build_backdoor_benchmark(BackdoorBenchmarkConfig(task=args.task), data_dir)
        target, reference, tokenizer = benchmark.load(args.attack)
        attacker_text = attacker_output(data_dir, args.task, args.attack)
    else:
        if args.reference_name_or_path is None:
            raise ValueError("--target_name_or_path needs --reference_name_or_path (a model with the same tokenizer).")
        target, tokenizer = load_causal_lm(args.target_name_or_path)
        reference, reference_tokenizer = load_causal_lm(args.reference_name_or_path)
        tokenizer.padding_side = "left"
    if not args.prompts_file:
        rows = load_backdoor_rows(data_dir, args.task, args.attack, "test_trigger")
        prompts = [r["question"] for r in rows[: args.num_prompts]]

    generator = CleanGenGenerator(target.to(state.device).eval(), reference.to(state.device).eval(), config,
                                  tokenizer, reference_tokenizer=reference_tokenizer)
    with state.split_between_processes(list(enumerate(prompts))) as shard:
        answers, outputs = cleangen_answers(generator, tokenizer, [p for _, p in shard], config.max_new_tokens,
                                            args.batch_size)
        replaced = [n for o in outputs for n in o.num_replaced_tokens]
        generated = [n for o in outputs for n in o.num_generated_tokens]
        records = [{"index": i, "prompt": p, "answer": a, "replaced_tokens": r, "generated_tokens": g}
                   for (i, p), a, r, g in zip(shard, answers, replaced, generated)]
    records = sorted(gather_object(records), key=lambda r: r["index"])
    if state.is_main_process:
        output_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(output_file, "".join(json.dumps(record) + "\n" for record in records))
        replaced_fraction = sum(r["replaced_tokens"] for r in records) / max(1, sum(r["generated_tokens"]
                                                                                  for r in records))
        print(f"{len(records)} prompts on {state.num_processes} process(es); {replaced_fraction:.1%} of the "
              f"generated tokens replaced; written to {output_file}")
        if attacker_text is not None:
            asr = sum(attack_succeeded(r["answer"], attacker_text) for r in records) / len(records)
            print(f"Attack success rate with CleanGen ({args.task}/{args.attack}): {asr:.2f}")
        for record in records[:3]:
            print(json.dumps(record))
    return records

