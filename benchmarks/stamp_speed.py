"""STAMP edit time, measured side by side: (1) against GradDiff trained until the same single item is forgotten, on
the embedded benchmark's memorising model; (2) the full against the low-rank solve as a function of d_in and r.

    OMP_NUM_THREADS=1 python benchmarks/stamp_speed.py                 # both parts
    OMP_NUM_THREADS=1 python benchmarks/stamp_speed.py --part single_item --model smollm2 --lr 1e-5 1e-4 --repeats 1
    OMP_NUM_THREADS=1 python benchmarks/stamp_speed.py --part solve --dims 1024 4096 --models embedded:0 smollm2:10

Part 1. One forget10 item, a buffer of 32 retain90 pairs for both methods, and one criterion of "forgotten": the
item's answer probability below 10% of the unedited model's and the ROUGE-L recall of the gold answer in its greedy
answer below 0.3 (`--model smollm2`: a world fact SmolLM2-135M-Instruct knows, see `single_item_setup`).
STAMP (`stamp.forget`, default config) is timed whole: tokenizing, reading the activations, solving, editing.
GradDiff (batch 1: the item plus one retain pair per step, at each `--lr`) is stopped by a callback at the first
step after which the criterion holds; its time counts the training steps only, and "incl. set-up" adds building
the trainer (the per-step checks are left out of both). Times are wall-clock and process CPU time (the machine may
be shared: CPU time is the steadier measure, and the ratio uses it); both methods are warmed up first. Both report
the item's answer probability and, on the held-out retain items (32; 8 for smollm2), the mean ROUGE-L recall and
answer probability, before and after. Repeated on `--items` items; the median ratio per learning rate is printed.

Part 2. `ridge_edit` (solves the smaller of the n x n and d_in x d_in systems) against `low_rank_ridge_edit` at each
rank r, CPU time (median of `--repeats`), with the low-rank edit's relative distance to the full one and how much
more it changes the retain outputs. On random float32 keys (`--forget_tokens` forget and `--retain_tokens` retain
columns with a decaying spectrum, d_out = d_in / 2, for each of `--dims`), and on real keys (`--models`, e.g.
`embedded:0 smollm2:10`: one forget item's answer tokens and `--num_retain` retain pairs read at that layer).
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch


def forgotten(scores: dict, before: dict, gold: str) -> bool:
    """The item's (first row's) answer probability fell below 10% of `before`'s and the ROUGE-L recall of the gold
    answer in its greedy answer is below 0.3."""
    from hf_unlearn.eval.rouge import rouge_l_recall

    recall = rouge_l_recall([scores["answer"][0]], [gold])[0]
    return scores["probability"][0] < 0.1 * before["probability"][0] and recall < 0.3


def clocks() -> tuple[float, float]:
    """(wall, process CPU) seconds; CPU time is what the run itself used, whatever else the machine runs."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


def timed_stamp(model, tokenizer, item, buffer, repeats: int) -> dict:
    """Median wall and CPU time of `repeats` STAMP edits of fresh copies of the model, and the last edited model."""
    from hf_unlearn.editing import stamp

    walls, cpus = [], []
    for _ in range(repeats):
        fresh = copy.deepcopy(model)
        start = clocks()
        result = stamp.forget(fresh, tokenizer, prompt=item["question"], answer=item["answer"], retain=buffer)
        wall, cpu = since(start)
        walls.append(wall)
        cpus.append(cpu)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "model": result.model}


def grad_diff_until_forgotten(model, tokenizer, item, gold, buffer, before, lr: float, max_steps: int) -> dict:
    """Train GradDiff on the item until it is forgotten; the wall and CPU time of the training steps only and of
    everything but the per-step checks (building the trainer included)."""
    import tempfile

    from transformers import TrainerCallback

    from hf_unlearn.editing import stamp
    from hf_unlearn.trainers import GradDiffConfig, GradDiffTrainer

    class StopWhenForgotten(TrainerCallback):
        def __init__(self):
            self.step_start = clocks()
            self.train = [0.0, 0.0]
            self.checks = [0.0, 0.0]
            self.steps = 0
            self.done = False

        def on_step_begin(self, *_, **__):
            self.step_start = clocks()

        def on_step_end(self, state_args, state, control, model=None, **_):
            for i, spent in enumerate(since(self.step_start)):
                self.train[i] += spent
            check_start = clocks()
            self.steps = state.global_step
            if forgotten(stamp.answer_scores(model, tokenizer, [item], max_new_tokens=32), before, gold):
                self.done = True
                control.should_training_stop = True
            for i, spent in enumerate(since(check_start)):
                self.checks[i] += spent

    stopper = StopWhenForgotten()
    start = clocks()
    with tempfile.TemporaryDirectory() as output_dir:
        config = GradDiffConfig(
            output_dir=output_dir, report_to="none", per_device_train_batch_size=1, learning_rate=lr,
            max_steps=max_steps, save_strategy="no", logging_strategy="no", bf16=False, use_cpu=True,
            seed=0, disable_tqdm=True,
        )
        trainer = GradDiffTrainer(
            model=model, args=config, forget_dataset=[item], retain_dataset=buffer, processing_class=tokenizer,
            callbacks=[stopper],
        )
        trainer.train()
    total = [spent - check for spent, check in zip(since(start), stopper.checks)]
    model.eval()
    return {"wall_s": stopper.train[0], "cpu_s": stopper.train[1], "total_wall_s": total[0], "total_cpu_s": total[1],
            "steps": stopper.steps, "forgotten": stopper.done, "model": model}


def single_item_setup(args) -> dict:
    """The model, the forget items as (label, item, gold answer), the retain buffer and held-out retain rows.

    embedded: forget10 items `--items`, 32 retain90 pairs as buffer, 32 other retain90 pairs held out.
    smollm2: SmolLM2-135M-Instruct forgets the embedded benchmark's first world fact ("What is the capital of
    France?"; the pair is its own greedy answer, the gold answer "Paris"); 15 more world facts with its own answers are
    the buffer, the last 8 held out (so retain ROUGE-L measures how much its own answers change)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_unlearn.benchmarks.embedded import build_embedded_benchmark
    from hf_unlearn.data import load_tofu_split
    from hf_unlearn.eval.generation import generate_answers

    benchmark = build_embedded_benchmark()
    if args.model == "smollm2":
        from hf_unlearn.benchmarks.models import load_smollm2

        model, tokenizer = load_smollm2()
        facts = load_tofu_split(benchmark.data_dir, "world_facts").to_list()
        answers = generate_answers(model.eval(), tokenizer, [f["question"] for f in facts], 32)
        own = [{"question": f["question"], "answer": a} for f, a in zip(facts, answers)]
        return {"model": model, "tokenizer": tokenizer, "items": [("world_facts 0", own[0], facts[0]["answer"])],
                "buffer": own[1:16], "held_out": own[16:24]}
    model = AutoModelForCausalLM.from_pretrained(benchmark.finetuned_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(benchmark.finetuned_dir)
    forget = load_tofu_split(benchmark.data_dir, "forget10").to_list()
    retain = load_tofu_split(benchmark.data_dir, "retain90").to_list()
    buffer = random.Random(0).sample(retain, 32)
    return {"model": model, "tokenizer": tokenizer,
            "items": [(f"forget10 {i}", forget[i], forget[i]["answer"]) for i in args.items],
            "buffer": buffer, "held_out": [r for r in retain if r not in buffer][:32]}


def single_item(args) -> None:
    from hf_unlearn.editing import stamp

    setup = single_item_setup(args)
    model, tokenizer, buffer, held_out = setup["model"], setup["tokenizer"], setup["buffer"], setup["held_out"]

    def scores(edited, item):
        return stamp.answer_scores(edited, tokenizer, [item, *held_out], max_new_tokens=32)

    def retain(result):
        """Held-out retain: mean ROUGE-L recall of the greedy answers and mean answer probability."""
        return f"{statistics.mean(result['rouge_l_recall'][1:]):.3f}, {statistics.mean(result['probability'][1:]):.3f}"

    # Warm-up (imports, first-call allocations) for both methods, not timed.
    _, warm_item, warm_gold = setup["items"][0]
    timed_stamp(model, tokenizer, warm_item, buffer, 1)
    grad_diff_until_forgotten(copy.deepcopy(model), tokenizer, warm_item, warm_gold, buffer, scores(model, warm_item),
                              args.lr[0], 1)

    print(f"Part 1 ({args.model}): one forget item, STAMP (median of {args.repeats}) vs GradDiff until forgotten; "
          f"torch threads {torch.get_num_threads()}")
    print("| item | method | steps | wall s | CPU s | CPU s incl. set-up | forgotten | CPU time / STAMP's | item "
          "probability | retain ROUGE-L, probability: before -> after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ratios = {lr: [] for lr in args.lr}
    for label, item, gold in setup["items"]:
        before = scores(model, item)
        edit = timed_stamp(model, tokenizer, item, buffer, args.repeats)
        after = scores(edit["model"], item)
        print(f"| {label} | STAMP | - | {edit['wall_s']:.3f} | {edit['cpu_s']:.3f} | {edit['cpu_s']:.3f} | "
              f"{forgotten(after, before, gold)} | 1 | {before['probability'][0]:.3f} -> "
              f"{after['probability'][0]:.3f} | {retain(before)} -> {retain(after)} |")
        for lr in args.lr:
            run = grad_diff_until_forgotten(copy.deepcopy(model), tokenizer, item, gold, buffer, before, lr,
                                            args.max_steps)
            ratios[lr].append(run["cpu_s"] / edit["cpu_s"])
            trained = scores(run["model"], item)
            print(f"| {label} | GradDiff lr {lr:g} | {run['steps']} | {run['wall_s']:.3f} | {run['cpu_s']:.3f} | "
                  f"{run['total_cpu_s']:.3f} | {run['forgotten']} | {ratios[lr][-1]:.1f} | "
                  f"{before['probability'][0]:.3f} -> {trained['probability'][0]:.3f} | {retain(before)} -> "
                  f"{retain(trained)} |")
    for lr, values in ratios.items():
        median = statistics.median(values)
        print(f"GradDiff lr {lr:g}: median CPU time / STAMP's = {median:.2f} over {len(values)} items")
    print()


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median process CPU time of `repeats` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.process_time()
        out = fn()
        times.append(time.process_time() - start)
    return statistics.median(times), out


def compare_solves(label, forget_keys, residuals, retain_keys, ranks, repeats) -> None:
    """One table block: the full solve against the low-rank one at each rank, with the low-rank edit's distance to
    the full edit and its change of the retain outputs relative to the full edit's, ||dW_r K_r|| / ||dW K_r||."""
    from hf_unlearn.editing.stamp import low_rank_ridge_edit, ridge_edit

    ridge = 0.01 * float(torch.cat([forget_keys, retain_keys], 1).pow(2).sum(0).mean())
    full_s, (b, a) = timed(lambda: ridge_edit(forget_keys, residuals, retain_keys, ridge), repeats)
    full = b @ a
    full_retain_change = (full @ retain_keys).norm()
    for rank in ranks:
        low_s, (b, a) = timed(lambda: low_rank_ridge_edit(forget_keys, residuals, retain_keys, ridge, rank), repeats)
        low = b @ a
        distance = float((low - full).norm() / full.norm())
        retain_change = float((low @ retain_keys).norm() / full_retain_change)
        print(f"| {label} | {tuple(retain_keys.shape)} | {full_s:.4f} | {rank} | {low_s:.4f} | {full_s / low_s:.1f} | "
              f"{distance:.3f} | {retain_change:.2f} |")


def model_keys(name: str, layer: int, num_retain: int):
    """Down-projection keys at `layer` of a real model: the answer tokens of forget10 item 0 and every token of
    `num_retain` retain90 pairs of the embedded benchmark, and the forget values' distance to the refusal mean as
    residuals (what `stamp_edit` solves for)."""
    from hf_unlearn.benchmarks.embedded import build_embedded_benchmark
    from hf_unlearn.data import load_tofu_split, tokenize_qa
    from hf_unlearn.data.tofu import load_refusal_templates
    from hf_unlearn.editing.stamp import collect_activations, refusal_targets

    benchmark = build_embedded_benchmark()
    if name == "smollm2":
        from hf_unlearn.benchmarks.models import load_smollm2

        model, tokenizer = load_smollm2()
    else:
        from hf_unlearn.modeling import load_causal_lm

        model, tokenizer = load_causal_lm(str(benchmark.finetuned_dir))
    item = load_tofu_split(benchmark.data_dir, "forget10")[0]
    retain = random.Random(0).sample(load_tofu_split(benchmark.data_dir, "retain90").to_list(), num_retain)

    def read(rows, positions):
        examples = [tokenize_qa(tokenizer, q, a, 256) for q, a in rows]
        return collect_activations(model, examples, tokenizer.pad_token_id, [layer], positions)[layer]

    forget = read([(item["question"], item["answer"])], "answer")
    refusal = read([(item["question"], answer) for answer in load_refusal_templates(None)], "answer_only")
    retain_keys = read([(r["question"], r["answer"]) for r in retain], "all").keys
    return forget.keys, refusal_targets(forget.values, refusal.values) - forget.values, retain_keys


def solve_scaling(args) -> None:
    print(f"Part 2: full vs low-rank solve, float32, CPU s = median process CPU time of {args.repeats}, torch threads "
          f"{torch.get_num_threads()}")
    print("| keys | K_r shape | full CPU s | r | low-rank CPU s | full / low-rank | distance to full | retain change "
          "vs full |")
    print("|---|---|---|---|---|---|---|---|")
    for d_in in args.dims:
        g = torch.Generator().manual_seed(d_in)
        forget_keys = torch.randn(d_in, args.forget_tokens, generator=g)
        residuals = torch.randn(d_in // 2, args.forget_tokens, generator=g)
        scales = torch.arange(1, args.retain_tokens + 1, dtype=torch.float32) ** -0.5  # a decaying spectrum
        retain_keys = torch.randn(d_in, args.retain_tokens, generator=g) * scales
        compare_solves("random", forget_keys, residuals, retain_keys, args.ranks, args.repeats)
    for name in args.models:
        name, layer = name.split(":")
        keys = model_keys(name, int(layer), args.num_retain)
        compare_solves(f"{name} layer {layer}", *keys, args.model_ranks, args.repeats)
    print()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "single_item", "solve"], default="all")
    parser.add_argument("--model", choices=["embedded", "smollm2"], default="embedded", help="model of part 1")
    parser.add_argument("--items", type=int, nargs="+", default=[0, 9, 20], help="forget10 indices (embedded)")
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-4, 1e-3], help="GradDiff learning rates")
    parser.add_argument("--max_steps", type=int, default=200, help="GradDiff gives up after this many steps")
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--forget_tokens", type=int, default=16)
    parser.add_argument("--retain_tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each timed STAMP edit and solve")
    parser.add_argument("--models", nargs="*", default=["embedded:0"],
                        help="real keys as MODEL:LAYER, MODEL = embedded or smollm2 (SmolLM2-135M-Instruct)")
    parser.add_argument("--model_ranks", type=int, nargs="+", default=[16, 64, 128, 256, 512])
    parser.add_argument("--num_retain", type=int, default=128, help="retain pairs whose keys the real-key solve uses")
    args = parser.parse_args(argv)
    if args.part in ("all", "single_item"):
        single_item(args)
    if args.part in ("all", "solve"):
        solve_scaling(args)


if __name__ == "__main__":
    main()
