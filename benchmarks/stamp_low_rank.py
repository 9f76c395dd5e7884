"""Which low-rank STAMP edit still forgets: truncating the retain keys K_r (`low_rank_ridge_edit`, what STAMP uses)
against truncating the whole key matrix K = [K_f, K_r] (the rank-r truncated-SVD ridge solution
dW = R V_r diag(s / (s^2 + lambda)) U_r^T), on the embedded benchmark's memorising model.

    OMP_NUM_THREADS=1 python benchmarks/stamp_low_rank.py --item 0 --ranks 16 64 128

Both edits are solved at the layer `stamp.forget` picks, from the same keys, targets, forget weight and ridge as
`stamp.forget` with its default config and 32 retain90 pairs, and added in place. Printed: the item's answer
probability and the ROUGE-L recall of its greedy answer, and the mean ROUGE-L recall on 32 held-out retain items.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics

import torch


def main(argv=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_unlearn.benchmarks.embedded import build_embedded_benchmark
    from hf_unlearn.data import load_tofu_split, tokenize_qa
    from hf_unlearn.data.tofu import load_refusal_templates
    from hf_unlearn.editing import StampConfig, stamp
    from hf_unlearn.editing.stamp import collect_activations, low_rank_ridge_edit, refusal_targets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--item", type=int, default=0, help="forget10 index")
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64, 128])
    args = parser.parse_args(argv)

    benchmark = build_embedded_benchmark()
    model = AutoModelForCausalLM.from_pretrained(benchmark.finetuned_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(benchmark.finetuned_dir)
    item = load_tofu_split(benchmark.data_dir, "forget10")[args.item]
    retain = load_tofu_split(benchmark.data_dir, "retain90").to_list()
    buffer = random.Random(0).sample(retain, 32)
    held_out = [r for r in retain if r not in buffer][:32]
    config = StampConfig()
    layer = stamp.forget(copy.deepcopy(model), tokenizer, item["question"], item["answer"], retain=buffer).layers[0]

    def read(pairs, positions):
        examples = [tokenize_qa(tokenizer, q, a, config.max_length) for q, a in pairs]
        return collect_activations(model, examples, tokenizer.pad_token_id, [layer], positions)[layer]

    forget = read([(item["question"], item["answer"])], config.forget_positions)
    refusal = read([(item["question"], a) for a in load_refusal_templates(None)], "answer_only")
    retain_keys = read([(r["question"], r["answer"]) for r in buffer], "all").keys
    forget_keys = forget.keys * config.forget_weight
    residuals = (refusal_targets(forget.values, refusal.values) - forget.values) * config.forget_weight
    ridge = config.ridge * float(torch.cat([forget.keys, retain_keys], 1).pow(2).sum(0).mean())
    keys = torch.cat([forget_keys, retain_keys], 1)
    all_residuals = torch.cat([residuals, residuals.new_zeros(residuals.shape[0], retain_keys.shape[1])], 1)
    u, s, vh = torch.linalg.svd(keys, full_matrices=False)

    def report(name, delta):
        edited = copy.deepcopy(model)
        with torch.no_grad():
            edited.get_submodule(f"model.layers.{layer}.mlp.down_proj").weight += delta
        scores = stamp.answer_scores(edited, tokenizer, [item, *held_out], max_new_tokens=32)
        print(f"| {name} | {scores['probability'][0]:.3f} | {scores['rouge_l_recall'][0]:.3f} | "
              f"{statistics.mean(scores['rouge_l_recall'][1:]):.3f} |")

    print(f"forget10 item {args.item}, layer {layer}, K_f {tuple(forget.keys.shape)}, K_r {tuple(retain_keys.shape)}")
    print("| edit | item probability | item ROUGE-L | held-out retain ROUGE-L |")
    print("|---|---|---|---|")
    report("none", torch.zeros_like(model.get_submodule(f"model.layers.{layer}.mlp.down_proj").weight))
    for rank in args.ranks:
        report(f"truncated K, r={rank}", all_residuals @ vh[:rank].T @ torch.diag(s[:rank] / (s[:rank] ** 2 + ridge))
               @ u[:, :rank].T)
        b, a = low_rank_ridge_edit(forget_keys, residuals, retain_keys, ridge, rank)
        report(f"truncated K_r (STAMP), r={rank}", b @ a)


if __name__ == "__main__":
    main()
