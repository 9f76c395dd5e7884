"""Per-token time of CleanGen relative to plain greedy `generate()` of the target, measured side by side.

    python benchmarks/cleangen_speed.py                      # the backdoor benchmark's tiny models (CPU)
    python benchmarks/cleangen_speed.py --model smollm2      # SmolLM2-135M-Instruct (GGUF) as target and reference
    python benchmarks/cleangen_speed.py --model synthetic --device cuda   # SmolLM2-135M-sized random Llama

Every run generates exactly `--max_new_tokens` tokens per prompt (EOS ignored by both) so that the two decoders do
the same amount of work per token; runs alternate (plain, CleanGen cached, CleanGen uncached, ...) for `--repeats`
rounds and the median per-token time of each is reported, with the forward passes per generated token. The tiny
models are the badnet target and its clean reference on triggered and clean prompts (so replacements and cache
crops happen). For `smollm2` and `synthetic` the reference is a copy of the target with every weight perturbed by
relative noise `--noise` (so it disagrees now and then); `synthetic` needs no files (random weights, random
prompts: a timing of the same shapes as SmolLM2-135M, on any device).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from hf_unlearn.benchmarks.backdoor import (
    BackdoorBenchmarkConfig,
    build_backdoor_benchmark,
    default_data_dir,
    load_backdoor_rows,
)
from hf_unlearn.data.formatting import encode_prompt, left_padded_prompts
from hf_unlearn.decoding import CleanGenConfig, CleanGenGenerator


def perturbed_copy(model, noise: float):
    reference = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn(p.shape, generator=generator).to(p.device, p.dtype) * noise * p.float().std())
    return reference


def load_models(args):
    """(target, reference, tokenizer or None, prompts as lists of token ids)."""
    if args.model == "synthetic":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                             max_position_embeddings=2048, pad_token_id=0)
        target = LlamaForCausalLM(config)
        ids = torch.randint(3, 49152, (args.num_prompts, 48), generator=torch.Generator().manual_seed(0))
        prompt_ids = [row[: 24 + 3 * (i % 8)].tolist() for i, row in enumerate(ids)]
        return target, perturbed_copy(target, args.noise), None, prompt_ids
    if args.model == "smollm2":
        from hf_unlearn.benchmarks.models import load_smollm2

        target, tokenizer = load_smollm2()
        reference = perturbed_copy(target, args.noise)
    else:
        benchmark = build_backdoor_benchmark(BackdoorBenchmarkConfig(), args.data_dir)
        target, reference, tokenizer = benchmark.load("badnet")
    return target, reference, tokenizer, [encode_prompt(tokenizer, q) for q in prompts(args)]


def prompts(args) -> list[str]:
    data_dir = args.data_dir or default_data_dir()
    triggered = load_backdoor_rows(data_dir, "negsentiment", "badnet", "test_trigger")
    clean = load_backdoor_rows(data_dir, "negsentiment", "badnet", "test_no_trigger")
    short = [r["question"] for pair in zip(triggered, clean) for r in pair if len(r["question"]) < 160]
    return short[: args.num_prompts]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("backdoor", "smollm2", "synthetic"), default="backdoor")
    parser.add_argument("--noise", type=float, default=0.02, help="relative weight noise of the copied reference")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--num_prompts", type=int, default=8)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--proposal_lengths", type=int, nargs="+", default=[4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    target, reference, tokenizer, prompt_ids = load_models(args)
    dtype = getattr(torch, args.dtype)
    target, reference = (m.to(device=args.device, dtype=dtype).eval() for m in (target, reference))
    pad_id = tokenizer.pad_token_id if tokenizer is not None else 0
    no_eos = {"eos_token_id": [], "pad_token_id": pad_id}

    def sync():
        if torch.cuda.is_available() and args.device.startswith("cuda"):
            torch.cuda.synchronize()

    # A dedicated generation config without EOS: generate() then runs the full max_new_tokens (built once, outside
    # the timed calls).
    plain_config = copy.deepcopy(target.generation_config)
    plain_config.eos_token_id, plain_config.pad_token_id = None, pad_id
    plain_config.do_sample, plain_config.max_new_tokens = False, args.max_new_tokens

    def plain(batch):
        out = target.generate(**batch, generation_config=plain_config)
        return out.shape[1] - batch["input_ids"].shape[1], {"target": args.max_new_tokens, "reference": 0}

    def guarded(k, use_cache):
        generator = CleanGenGenerator(target, reference, CleanGenConfig(proposal_length=k, use_cache=use_cache))

        def run(batch):
            out = generator.generate(**batch, max_new_tokens=args.max_new_tokens, return_dict_in_generate=True,
                                     **no_eos)
            run.replaced += sum(out.num_replaced_tokens)
            run.generated += sum(out.num_generated_tokens)
            return max(out.num_generated_tokens), {"target": out.target_forward_passes,
                                                   "reference": out.reference_forward_passes}

        run.replaced, run.generated = 0, 0
        return run

    decoders = {"generate() greedy": plain}
    for k in args.proposal_lengths:
        decoders[f"CleanGen k={k} (KV caches)"] = guarded(k, True)
    decoders[f"CleanGen k={args.proposal_lengths[0]} (no cache)"] = guarded(args.proposal_lengths[0], False)

    print(f"{args.model}: target {type(target).__name__} ({sum(p.numel() for p in target.parameters()) / 1e6:.1f}M "
          f"params, {args.dtype}) on {args.device}, {len(prompt_ids)} prompts, {args.max_new_tokens} new tokens "
          f"each, {torch.get_num_threads()} CPU threads")
    rows = []
    for batch_size in args.batch_sizes:
        batches = []
        for start in range(0, len(prompt_ids), batch_size):
            batch = left_padded_prompts(prompt_ids[start: start + batch_size], pad_id)
            batches.append({k: v.to(args.device) for k, v in batch.items()})
        times = {name: [] for name in decoders}
        passes = {}
        with torch.no_grad():
            for name, decode in decoders.items():  # warm-up
                decode(batches[0])
                if hasattr(decode, "replaced"):
                    decode.replaced, decode.generated = 0, 0
            for _ in range(args.repeats):
                for name, decode in decoders.items():
                    tokens, elapsed, calls = 0, 0.0, {"target": 0, "reference": 0}
                    for batch in batches:
                        sync()
                        start = time.perf_counter()
                        n, forward = decode(batch)
                        sync()
                        elapsed += time.perf_counter() - start
                        tokens += n
                        calls = {m: calls[m] + forward[m] for m in calls}
                    times[name].append(elapsed / tokens)
                    passes[name] = {m: calls[m] / tokens for m in calls}
        base = statistics.median(times["generate() greedy"])
        for name, decode in decoders.items():
            per_token = statistics.median(times[name])
            replaced = f"{decode.replaced / max(1, decode.generated):.1%}" if hasattr(decode, "replaced") else ""
            rows.append((batch_size, name, per_token * 1e3, per_token / base, passes[name]["target"],
                         passes[name]["reference"], replaced))

    print("\n| batch | decoder | ms / token step | relative to generate() | target passes / step "
          "| reference passes / step | tokens replaced |")
    print("|---|---|---|---|---|---|---|")
    for batch_size, name, ms, ratio, target_passes, reference_passes, replaced in rows:
        print(f"| {batch_size} | {name} | {ms:.2f} | {ratio:.2f}x | {target_passes:.2f} | {reference_passes:.2f} "
              f"| {replaced or '-'} |")


if __name__ == "__main__":
    main()
