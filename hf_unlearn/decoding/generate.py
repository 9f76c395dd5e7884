"""`hf-unlearn generate --cleangen` and `recipes/cleangen_generate.py`: CleanGen over a prompt file or the backdoor
benchmark's triggered prompts, across processes."""

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import HfArgumentParser

from ..eval.distributed import destroy_process_group_at_exit
from ..files import atomic_write, next_free_path
from ..modeling import load_causal_lm
from .backdoor_benchmark import (
    BackdoorBenchmarkConfig,
    attack_succeeded,
    attacker_output,
    build_backdoor_benchmark,
    cleangen_answers,
    default_data_dir,
    load_backdoor_rows,
)
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
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    if path.endswith((".jsonl", ".json")):
        rows = [json.loads(line) for line in lines]
        return [r.get("question") or r["instruction"] for r in rows]
    return lines


def generate_main(argv: list[str] | None = None, prog: str | None = None) -> list[dict]:
    """Parse `GenerateArguments` and `CleanGenConfig` flags, decode the prompts with CleanGen (each process its
    share), write the answers as JSON lines (a new file; earlier ones are kept) and print a summary."""
    parser = HfArgumentParser((GenerateArguments, CleanGenConfig), prog=prog, epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    args, config = parser.parse_args_into_dataclasses(argv)
    output_file = Path(args.output_file) if args.output_file else next_free_path(Path("outputs") / "cleangen", ".jsonl")
    if output_file.exists():
        raise FileExistsError(f"{output_file} exists; pick a new --output_file (earlier results are kept).")
    state = PartialState()
    destroy_process_group_at_exit()
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    attacker_text = None
    if args.target_name_or_path is None:
        benchmark = build_backdoor_benchmark(BackdoorBenchmarkConfig(task=args.task), data_dir)
        target, reference, tokenizer = benchmark.load(args.attack)
        attacker_text = attacker_output(data_dir, args.task, args.attack)
    else:
        if args.reference_name_or_path is None:
            raise ValueError("--target_name_or_path needs --reference_name_or_path (a model with the same tokenizer).")
        target, tokenizer = load_causal_lm(args.target_name_or_path)
        reference, _ = load_causal_lm(args.reference_name_or_path)
        tokenizer.padding_side = "left"
    if args.prompts_file:
        prompts = read_prompts(args.prompts_file)[: args.num_prompts]
    else:
        rows = load_backdoor_rows(data_dir, args.task, args.attack, "test_trigger")
        prompts = [r["question"] for r in rows[: args.num_prompts]]

    generator = CleanGenGenerator(target.to(state.device).eval(), reference.to(state.device).eval(), config,
                                  tokenizer)
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

