"""ULD training wall time against NPO and GradDiff: same model, forget/retain data, epochs, batch size and
hardware, one after another in one process. Prints a markdown table with each method's time relative to ULD's
(the ULD paper reports training more than 3x faster than NPO).

    python benchmarks/uld_speed.py                                   # the embedded benchmark, 10 epochs
    python benchmarks/uld_speed.py --baseline_lora_r 16              # baselines train LoRA adapters too
    python benchmarks/uld_speed.py --model_name_or_path smollm2 --dataset ../shared/data/tofu \
        --forget_split forget01 --max_steps 8                        # SmolLM2-135M (30 layers) on real TOFU

Reported: wall time of `trainer.train()` (with the trainer's set-up) and the process's CPU time, the fastest of
`--repeats` runs, run round-robin (uld, npo, grad_diff, uld, ...) so that load from other processes hits all alike.
On a tiny model the per-step overhead (optimizer, data loading, Python) dominates; the paper's gap comes from
compute, so measure on a real model as well.

ULD trains only its assistant (the target's first quarter of layers + LoRA); NPO trains the whole model (or a
LoRA adapter) and runs the frozen reference too; GradDiff trains the whole model (or a LoRA adapter).
"""

from __future__ import annotations

import argparse
import time

import torch


def _train_seconds(method: str, model, tokenizer, forget, retain, common: dict, lora_r: int,
                   assistant_layers: float) -> dict:
    from peft import LoraConfig

    from hf_unlearn.trainers import GradDiffConfig, GradDiffTrainer, NPOConfig, NPOTrainer
    from hf_unlearn.trainers.uld import ULDConfig, ULDTrainer

    classes = {"uld": (ULDConfig, ULDTrainer), "npo": (NPOConfig, NPOTrainer),
               "grad_diff": (GradDiffConfig, GradDiffTrainer)}
    config_class, trainer_class = classes[method]
    peft_config = (
        LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear", task_type="CAUSAL_LM")
        if lora_r and method != "uld"
        else None
    )
    config = config_class(**common, **({"assistant_layers": assistant_layers} if method == "uld" else {}))
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer = trainer_class(model=model, args=config, forget_dataset=forget, retain_dataset=retain,
                            processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "steps": trainer.state.global_step, "trainable": trainable}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path",
                        help="target model, or `smollm2` (default: the embedded benchmark's finetuned model)")
    parser.add_argument("--dataset", help="TOFU-schema data (default: the embedded benchmark's)")
    parser.add_argument("--forget_split", default="forget10")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--max_steps", type=int, default=-1, help="stop after this many steps (all methods)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--baseline_lora_r", type=int, default=0, help="train NPO/GradDiff as LoRA adapters (0: full)")
    parser.add_argument("--assistant_layers", type=float, default=0.25, help="ULD assistant depth (fraction or count)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per method; the fastest is reported")
    args = parser.parse_args()

    from hf_unlearn.benchmarks.models import smollm2_gguf_path
    from hf_unlearn.data import load_tofu_split
    from hf_unlearn.data.tofu import retain_split_for
    from hf_unlearn.modeling import load_causal_lm

    if (args.model_name_or_path is None) != (args.dataset is None):
        parser.error("name both --model_name_or_path and --dataset, or neither (the embedded benchmark)")
    if args.model_name_or_path is None:
        from hf_unlearn.benchmarks.embedded import build_embedded_benchmark

        benchmark = build_embedded_benchmark()
        args.model_name_or_path, args.dataset = str(benchmark.finetuned_dir), str(benchmark.data_dir)
    if args.model_name_or_path == "smollm2":
        args.model_name_or_path = str(smollm2_gguf_path())
    forget = load_tofu_split(args.dataset, args.forget_split)
    retain = load_tofu_split(args.dataset, retain_split_for(args.forget_split))
    cuda = torch.cuda.is_available()
    common = {"output_dir": "/tmp/uld_speed", "report_to": [], "save_strategy": "no", "disable_tqdm": True, "seed": 0,
              "bf16": cuda, "logging_steps": 10_000, "num_train_epochs": args.epochs, "max_steps": args.max_steps,
              "per_device_train_batch_size": args.batch_size, "learning_rate": 1e-4}
    methods = ("uld", "npo", "grad_diff")
    runs = {method: [] for method in methods}
    for _ in range(args.repeats):
        for method in methods:
            model, tokenizer = load_causal_lm(args.model_name_or_path, dtype=torch.bfloat16 if cuda else None)
            model.to("cuda" if cuda else "cpu")
            runs[method].append(_train_seconds(method, model, tokenizer, forget, retain, common, args.baseline_lora_r,
                                                  args.assistant_layers))
            print(f"{method}: {runs[method][-1]['seconds']:.1f} s", flush=True)
            del model
    rows = {method: min(r, key=lambda run: run["seconds"]) for method, r in runs.items()}

    device = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    baseline = "LoRA r=%d" % args.baseline_lora_r if args.baseline_lora_r else "full model"
    print(f"\n{args.model_name_or_path}, {args.forget_split}: {len(forget)} forget rows, epochs {args.epochs}, "
          f"max_steps {args.max_steps}, batch {args.batch_size}, ULD assistant layers {args.assistant_layers}, "
          f"baselines: {baseline}, device: {device}\n")
    print("| method | trainable params | steps | wall time (s) | wall / ULD wall | CPU time (s) | CPU / ULD CPU |")
    print("|---|---|---|---|---|---|---|")
    uld = rows["uld"]
    for method, row in rows.items():
        print(f"| {method} | {row['trainable']:,} | {row['steps']} | {row['seconds']:.1f} | "
              f"{row['seconds'] / uld['seconds']:.2f} | {row['cpu_seconds']:.1f} | "
              f"{row['cpu_seconds'] / uld['cpu_seconds']:.2f} |")


if __name__ == "__main__":
    main()
