"""Quantization relapse of small-learning-rate unlearning, and SURE: prints the method x precision table.

    python benchmarks/relapse_sure.py                       # embedded benchmark (tiny Llama), ~3 min on 2 cores
    python benchmarks/relapse_sure.py --model smollm2       # SmolLM2-135M-Instruct fine-tuned on real TOFU forget01

For SmolLM2 the model first learns TOFU's forget01 (and some retain rows) with TRL's SFTTrainer, as TOFU's
"finetuned" model; then both methods unlearn it and every model is evaluated at full precision and quantized.
Quantization is `fake-nf4` by default: bitsandbytes' NF4 weights exactly (tests/test_quantization.py) at float32
speed; pass `--precisions nf4 int8` for the real bitsandbytes layers.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from hf_unlearn.data import load_tofu_split
from hf_unlearn.eval.quantization import evaluate_relapse, relapse_markdown
from hf_unlearn.trainers import GradDiffConfig, GradDiffTrainer


def unlearn(model, tokenizer, forget, retain, learning_rate, steps, sure_percentile=None, batch_size=8, retain_loss="kl"):
    """GradDiff with a KL retain term (the utility-constrained setting of the relapse paper) or the retain NLL,
    optionally with SURE."""
    config_class, trainer_class = (GradDiffConfig, GradDiffTrainer)
    extra = {}
    if sure_percentile is not None:
        extra["sure_percentile"] = sure_percentile
    args = config_class(
        output_dir="/tmp/relapse_benchmark", report_to="none", per_device_train_batch_size=batch_size, bf16=False,
        save_strategy="no", logging_steps=10_000, disable_tqdm=True, seed=0, learning_rate=learning_rate,
        max_steps=steps, lr_scheduler_type="constant", retain_loss_type=retain_loss, use_cpu=not torch.cuda.is_available(),
        **extra,
    )
    trainer = trainer_class(model=model, args=args, forget_dataset=forget, retain_dataset=retain, processing_class=tokenizer)
    trainer.train()
    return trainer.model, getattr(trainer, "saliency_map", None)


def embedded_setup(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_unlearn.embedded_benchmark import build_embedded_benchmark

    benchmark = build_embedded_benchmark()
    model = AutoModelForCausalLM.from_pretrained(benchmark.finetuned_dir)
    tokenizer = AutoTokenizer.from_pretrained(benchmark.finetuned_dir)
    data = str(benchmark.data_dir)
    return model, tokenizer, data, "forget10", load_tofu_split(data, "forget10"), load_tofu_split(data, "retain90")


def smollm2_setup(args):
    from trl import SFTConfig

    from hf_unlearn.finetune import sft_finetune
    from hf_unlearn.modeling import load_smollm2

    data = str(args.tofu)
    forget = load_tofu_split(data, "forget01")
    retain = load_tofu_split(data, "retain_perturbed").select(range(args.smollm2_retain))
    model, tokenizer = load_smollm2(dtype=torch.float32)
    start = time.perf_counter()
    rows = forget.to_list() + retain.to_list()
    sft = SFTConfig(output_dir="/tmp/relapse_benchmark_sft", report_to="none", bf16=False, learning_rate=args.smollm2_lr,
                    num_train_epochs=args.smollm2_epochs, per_device_train_batch_size=8, save_strategy="no",
                    logging_steps=10_000, disable_tqdm=True, seed=0, max_length=160,
                    use_cpu=not torch.cuda.is_available())
    model = sft_finetune(model, tokenizer, rows, sft)
    print(f"fine-tuned SmolLM2 on {len(rows)} TOFU rows in {time.perf_counter() - start:.0f} s")
    return model, tokenizer, data, "forget01", forget, retain


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("embedded", "smollm2"), default="embedded")
    parser.add_argument("--precisions", nargs="+", default=["fake-nf4"])
    parser.add_argument("--lr", type=float, default=1e-4, help="GradDiff learning rate (small: updates below a 4-bit step)")
    parser.add_argument("--sure_lr", type=float, default=2e-4, help="SURE learning rate (larger)")
    parser.add_argument("--sure_percentile", type=float, default=90.0)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--retain_loss", choices=("kl", "nll"), default="kl", help="GradDiff's retain term.")
    parser.add_argument("--max_items", type=int, default=None, help="Evaluate the first N items of every set.")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="Generation length for ROUGE.")
    parser.add_argument("--tofu", default="/work/shared/data/tofu", help="Local TOFU folder (SmolLM2 run).")
    parser.add_argument("--smollm2_retain", type=int, default=16, help="Retain rows SmolLM2 also learns.")
    parser.add_argument("--smollm2_lr", type=float, default=1e-4)
    parser.add_argument("--smollm2_epochs", type=float, default=2)
    parser.add_argument("--json", help="Write all numbers to this JSON file.")
    args = parser.parse_args()

    torch.manual_seed(0)
    original, tokenizer, data, forget_split, forget, retain = (embedded_setup if args.model == "embedded" else smollm2_setup)(args)
    original.eval()
    eval_kwargs = {"forget_split": forget_split, "max_items": args.max_items, "max_new_tokens": args.max_new_tokens}
    runs = {"grad_diff": (args.lr, None), "sure_grad_diff": (args.sure_lr, args.sure_percentile)}
    results, original_full = {}, None
    for label, (learning_rate, percentile) in runs.items():
        start = time.perf_counter()
        model, saliency = unlearn(copy.deepcopy(original), tokenizer, forget, retain, learning_rate, args.steps, percentile,
                                  retain_loss=args.retain_loss)
        model.eval()
        relapse = evaluate_relapse(model, tokenizer, data, precisions=args.precisions, original=original, label=label,
                                   original_full_precision=original_full, **eval_kwargs)
        original_full = original_full or relapse["evaluations"]["original"]["full"]
        if saliency is not None:
            relapse["sure"] = {"selected": saliency.selected, "trained_fraction": saliency.trained_fraction,
                               "threshold": saliency.threshold}
        relapse["seconds"] = round(time.perf_counter() - start, 1)
        results[label] = relapse
        print(relapse_markdown(relapse, title=f"{label} (lr {learning_rate}, {args.steps} steps)"))
        if saliency is not None:
            print(f"SURE trained {saliency.selected} ({saliency.trained_fraction:.1%} of the weights)\n")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
