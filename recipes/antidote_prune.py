"""Antidote against harmful fine-tuning, end to end: align a model to refuse AdvBench requests, fine-tune a LoRA
adapter on a benign task mixed with harmful examples, prune the adapter with Antidote and the magnitude and random
baselines at several dense ratios, and report harmful score and benign accuracy of every model.

    python recipes/antidote_prune.py                                  # the embedded tiny model (a few minutes on CPU)
    python recipes/antidote_prune.py --dense_ratios 0.1 0.2 0.3 --harmful_fraction 0.2
    python recipes/antidote_prune.py --model_name_or_path smollm2 --alignment_lora_r 16 \\
        --finetune_learning_rate 1e-3 --finetune_epochs 5 --harmful_max_new_tokens 24

`--model_name_or_path` takes `smollm2` (SmolLM2-135M-Instruct from the PyPI GGUF), a local folder, a Hub name or a
`.gguf` file; the default is the embedded benchmark's finetuned model. Every `HarmfulFinetuningConfig` field is a
flag. The benign task is the embedded benchmark's question-topic classification whatever the model. One process.
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from hf_unlearn.benchmarks.embedded import build_embedded_benchmark
from hf_unlearn.benchmarks.harmful_finetuning import (
    HarmfulFinetuningConfig,
    antidote_table,
    build_harmful_finetuning_benchmark,
    embedded_benign_task,
    embedded_replay_rows,
    format_table,
)
from hf_unlearn.benchmarks.models import load_smollm2
from hf_unlearn.errors import run_command
from hf_unlearn.files import atomic_write, claim_fresh_path, fresh_output_dir
from hf_unlearn.modeling import load_causal_lm
from hf_unlearn.pruning.antidote import AntidoteConfig


@dataclass
class AntidoteRecipeArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Base model (default: embedded model)."})
    advbench_path: str | None = field(default=None, metadata={"help": "AdvBench harmful_behaviors.csv."})
    dense_ratios: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3],
                                      metadata={"help": "Fractions of each adapter row to prune."})
    scores: list[str] = field(default_factory=lambda: ["wanda", "magnitude", "random"],
                              metadata={"help": "wanda (Antidote) and the baselines magnitude, random."})
    prune_count: str = field(default="floor", metadata={"help": "Weights per row: floor, or release (the authors' "
                                                                "count; see AntidoteConfig)."})
    sequential: bool = field(default=True, metadata={"help": "Calibrate layer by layer on the pruned earlier layers "
                                                             "(false: every mask on the unpruned model, as the release)."})
    num_benign_train: int = field(default=160, metadata={"help": "Benign task rows to fine-tune on."})
    num_benign_eval: int = field(default=64, metadata={"help": "Held-out benign rows for benign accuracy."})
    output_dir: str | None = field(default=None, metadata={"help": "New folder for the table (default outputs/antidote[-N])."})
    cache_models: bool = field(default=True, metadata={"help": "Keep the aligned and harmfully fine-tuned models in "
                                                               "$HF_UNLEARN_CACHE/harmful_finetuning and reuse them "
                                                               "when the same model, data and settings come again."})


def main(argv: list[str] | None = None) -> list[dict]:
    parser = HfArgumentParser((AntidoteRecipeArguments, HarmfulFinetuningConfig))
    args, config = parser.parse_args_into_dataclasses(argv)
    AntidoteConfig(prune_count=args.prune_count)  # a bad value fails here, before any model is loaded
    output_dir = fresh_output_dir(args.output_dir) if args.output_dir else claim_fresh_path(Path("outputs") / "antidote")
    embedded = build_embedded_benchmark()
    if args.model_name_or_path is None:
        model, tokenizer = load_causal_lm(embedded.finetuned_dir)
    elif args.model_name_or_path == "smollm2":
        model, tokenizer = load_smollm2()
    else:
        model, tokenizer = load_causal_lm(args.model_name_or_path)
    train, evaluation = embedded_benign_task(embedded.data_dir, args.num_benign_train, args.num_benign_eval,
                                             config.seed)
    benchmark = build_harmful_finetuning_benchmark(model, tokenizer, train, evaluation,
                                                   embedded_replay_rows(embedded.data_dir, config.seed), config,
                                                   args.advbench_path, cache=args.cache_models)
    rows = antidote_table(benchmark, args.dense_ratios, args.scores, progress=True, prune_count=args.prune_count,
                          sequential=args.sequential)
    table = format_table(rows)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(output_dir / "antidote_table.json", json.dumps({"config": config.to_dict(), "rows": rows}, indent=2))
    atomic_write(output_dir / "antidote_table.md", table + "\n")
    print(f"Harmful score on {config.num_test} held-out AdvBench prompts (keyword refusal classifier), benign "
          f"accuracy on {len(evaluation)} held-out topic questions:\n{table}\nWritten to {output_dir}")
    return rows


if __name__ == "__main__":
    sys.exit(run_command(main))
