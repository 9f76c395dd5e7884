"""Quantization relapse of small-learning-rate unlearning, and SURE: prints the method x precision table.

    python benchmarks/relapse_sure.py                       # embedded benchmark (tiny Llama), ~3 min on 2 cores
    python benchmarks/relapse_sure.py --model real          # SmolLM2-135M-Instruct fine-tuned on 10 real TOFU authors

`--model real` unlearns forget01 from the real tier of `benchmarks/run.py` (SmolLM2-135M-Instruct fine-tuned on 10
TOFU authors with TRL's SFTTrainer, cached; built on first use). Both methods unlearn the same model, and every
model is evaluated at full precision and quantized. Quantization is `fake-nf4` by default: bitsandbytes' NF4
weights exactly (tests/test_quantization.py) at float32 speed; pass `--precisions nf4 int8` for the real
bitsandbytes layers.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from hf_unlearn.data import load_tofu_split
from hf_unlearn.eval.relapse import evaluate_relapse, relapse_markdown
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

    from hf_unlearn.benchmarks.embedded import build_embedded_benchmark

    benchmark = build_embedded_benchmark()
    model = AutoModelForCausalLM.from_pretrained(benchmark.finetuned_dir)
    tokenizer = AutoTokenizer.from_pretrained(benchmark.finetuned_dir)
    data = str(benchmark.data_dir)
    return model, tokenizer, data, "forget10", load_tofu_split(data, "forget10"), load_tofu_split(data, "retain90")


def real_setup(args):
    from run import real_tier  # benchmarks/run.py, next to this script

    from hf_unlearn.modeling import load_causal_lm

    setup = real_tier()
    model, tokenizer = load_causal_lm(setup["model"])
    data = setup["data"]
    return model, tokenizer, data, "forget01", load_tofu_split(data, "forget01"), load_tofu_split(data, "retain99")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("embedded", "real"), default="embedded")
    parser.add_argument("--precisions", nargs="+", default=["fake-nf4"])
    parser.add_argument("--lr", type=float, help="GradDiff learning rate, small: updates below a 4-bit step "
                        "(default 1e-4 embedded, 1e-5 real)")
    parser.add_argument("--sure_lr", type=float, help="SURE learning rate, larger (default 2e-4 embedded, 5e-5 real)")
    parser.add_argument("--sure_percentile", type=float, default=90.0)
    parser.add_argument("--steps", type=int, help="training steps of 8 examples (default 40 embedded, 15 real)")
    parser.add_argument("--retain_loss", choices=("kl", "nll"), default="kl", help="GradDiff's retain term.")
    parser.add_argument("--max_items", type=int, default=None, help="Evaluate the first N items of every set.")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="Generation length for ROUGE.")
    parser.add_argument("--json", help="Write all numbers to this JSON file.")
    args = parser.parse_args()
    defaults = {"embedded": {"lr": 1e-4, "sure_lr": 2e-4, "steps": 40}, "real": {"lr": 1e-5, "sure_lr": 5e-5, "steps": 15}}
    for name, value in defaults[args.model].items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    torch.manual_seed(0)
    original, tokenizer, data, forget_split, forget, retain = (embedded_setup if args.model == "embedded" else real_setup)(args)
    original.eval()
    eval_kwargs = {"forget_split": forget_split, "max_items": args.max_items, "max_new_tokens": args.max_new_tokens}
    runs = {"grad_diff": (args.lr, None), "sure_grad_diff": (args.sure_lr, args.sure_percentile)}
    results, original_evaluations = {}, None
    for label, (learning_rate, percentile) in runs.items():
        start = time.perf_counter()
        model, saliency = unlearn(copy.deepcopy(original), tokenizer, forget, retain, learning_rate, args.steps, percentile,
                                  retain_loss=args.retain_loss)
        model.eval()
        relapse = evaluate_relapse(model, tokenizer, data, precisions=args.precisions, original=original, label=label,
                                   original_evaluations=original_evaluations, **eval_kwargs)
        original_evaluations = relapse["evaluations"]["original"]
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
