"""The embedded benchmark: a generated TOFU-schema world, a tokenizer trained on it, and two small Llama models
trained from scratch - the finetuned model (all authors) and the retain model (all but the forget10 authors).

Everything is cached under `$HF_UNLEARN_CACHE` (default `~/.cache/hf_unlearn`) in a folder keyed by the config,
built atomically (into a temporary folder, then renamed) under a file lock, so only the first run pays and
concurrent processes never see a half-built benchmark.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..cache import build_once, cache_root, environment_outside_launch, in_distributed_launch, staging_folder
from ..data.tofu import REFUSAL_TEMPLATES
from ..finetune import keep_freed_memory, reproducible_kernels, sft_finetune
from .embedded_world import EmbeddedWorldConfig, generate_embedded_world, write_world


BUILD_VERSION = 3
BUILD_SEED_ENV = "HF_UNLEARN_BUILD_SEED"


def default_build_seed() -> int:
    """The models' seed (initialisation and data order) of a default build: `$HF_UNLEARN_BUILD_SEED`, else 0.

    The generated world does not depend on it, so a second build seed gives an independently trained pair of
    models on the same data: what a fresh machine's build differs by, made reproducible."""
    value = os.environ.get(BUILD_SEED_ENV, "0")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{BUILD_SEED_ENV}={value!r} is not an integer; set it to a build seed such as 1.") from None


@dataclass(frozen=True)
class EmbeddedBenchmarkConfig:
    """Sizes of the embedded benchmark's world, tokenizer, models and training (widths are multiples of 64 so
    the bitsandbytes 4-bit CPU path applies)."""

    world: EmbeddedWorldConfig = field(default_factory=EmbeddedWorldConfig)
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 128
    epochs: int = 15
    learning_rate: float = 3e-3
    batch_size: int = 32
    seed: int = field(default_factory=default_build_seed)

    def key(self) -> str:
        payload = json.dumps({"config": asdict(self), "version": BUILD_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EmbeddedBenchmark:
    """Paths of a built embedded benchmark."""

    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def finetuned_dir(self) -> Path:
        return self.root / "finetuned"

    @property
    def retain_dir(self) -> Path:
        return self.root / "retain"

    @property
    def report(self) -> dict:
        return json.loads((self.root / "build_report.json").read_text())


def build_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`, with `<s>` prepended to every encoded text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=128
    )


@reproducible_kernels()
def _train_model(config: EmbeddedBenchmarkConfig, tokenizer_dir: Path, rows: list[dict], output_dir: Path) -> float:
    """Train one of the two models from scratch on `rows` and save it; returns the seconds it took. Runs in a
    worker process of its own, on one thread (see `reproducible_kernels`)."""
    from transformers import AutoTokenizer
    from trl import SFTConfig

    from ..modeling import save_with_tokenizer
    from .models import tiny_llama

    start = time.perf_counter()
    keep_freed_memory()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    model = tiny_llama(tokenizer, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                       num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
                       max_position_embeddings=config.max_position_embeddings, seed=config.seed)
    args = SFTConfig(
        output_dir=str(output_dir / "trainer"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=20,
        weight_decay=0.0,
        max_length=config.max_position_embeddings,
        logging_steps=100,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        dataloader_drop_last=False,
        bf16=False,
        gradient_checkpointing=False,  # TRL's default recomputes the forward pass: a third more time, same result
    )
    model = sft_finetune(model, tokenizer, rows, args)
    shutil.rmtree(output_dir / "trainer", ignore_errors=True)
    save_with_tokenizer(model, tokenizer, output_dir)
    return time.perf_counter() - start


def _memorisation(model_dir: Path, splits: dict[str, list[dict]], names: list[str]) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..eval.generation import generate_answers
    from ..eval.rouge import rouge_l_recall

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    result = {}
    for name in names:
        rows = splits[name]
        answers = generate_answers(model, tokenizer, [r["question"] for r in rows], batch_size=64)
        recalls = rouge_l_recall(answers, [r["answer"] for r in rows])
        exact = [a.strip() == r["answer"].strip() for a, r in zip(answers, rows)]
        result[name] = {"rougeL_recall": sum(recalls) / len(recalls), "exact_match": sum(exact) / len(exact)}
    return result


def tokenizer_corpus(splits: dict[str, list[dict]]) -> list[str]:
    """Texts the tokenizer is trained on, with forget and holdout authors equally often: each appears in one QA
    split and one perturbed split. (Training it on the finetuning corpus would give forget authors' names shorter
    tokenizations than holdout authors' and bias every membership-inference attack, even on the retain model.)"""
    names = ["train_retain", "full", "holdout10", "real_authors", "world_facts"]
    names += ["forget10_perturbed", "retain_perturbed", "holdout10_perturbed", "real_authors_perturbed", "world_facts_perturbed"]
    rows = [r for name in names for r in splits[name]]
    texts = [f"{r['question']} {r['answer']}" for r in rows]
    texts += [a for r in rows for a in r.get("perturbed_answer", [])]
    texts += [r["paraphrased_answer"] for r in rows if "paraphrased_answer" in r]
    return texts + REFUSAL_TEMPLATES + ["Question: Answer:"]


def _build(config: EmbeddedBenchmarkConfig, target: Path) -> None:
    start = time.perf_counter()
    splits = generate_embedded_world(config.world)
    with staging_folder(target) as tmp:
        write_world(splits, tmp / "data", config.world)
        build_tokenizer(tokenizer_corpus(splits), config.vocab_size).save_pretrained(tmp / "tokenizer")
        # The two models train at once, each in a fresh process on one thread: as fast on 2 cores as one model on
        # two threads, and independent of the machine's core count.
        models = {"finetuned": "train_full", "retain": "train_retain"}
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(len(models), os.cpu_count() or 1), mp_context=spawn) as pool:
            jobs = {name: pool.submit(_train_model, config, tmp / "tokenizer", splits[corpus], tmp / name)
                    for name, corpus in models.items()}
            timings = {f"train_{name}_s": round(job.result(), 1) for name, job in jobs.items()}
        shutil.rmtree(tmp / "tokenizer")
        report = {
            "config": asdict(config),
            "key": config.key(),
            "timings": timings,
            "finetuned": _memorisation(tmp / "finetuned", splits, ["full", "forget10", "retain90", "holdout10"]),
            "retain": _memorisation(tmp / "retain", splits, ["forget10", "retain90"]),
        }
        report["timings"]["total_s"] = round(time.perf_counter() - start, 1)
        (tmp / "build_report.json").write_text(json.dumps(report, indent=2))


def build_embedded_benchmark(config: EmbeddedBenchmarkConfig | None = None) -> EmbeddedBenchmark:
    """Build (or load from the cache) the embedded benchmark and return its paths.

    Safe under several processes: one builds under a file lock, in a fresh subprocess outside any distributed
    group, while the others wait and then reuse the cached result.
    """
    config = config or EmbeddedBenchmarkConfig()
    target = cache_root() / "embedded" / config.key()
    build = _build_in_subprocess if in_distributed_launch() else _build
    build_once(target, "build_report.json", lambda: build(config, target),
               f"Building the embedded benchmark into {target} (first run only) ...")
    return EmbeddedBenchmark(target)


def _build_in_subprocess(config: EmbeddedBenchmarkConfig, target: Path) -> None:
    env = environment_outside_launch()
    code = (
        "import json, sys; from pathlib import Path; "
        "from hf_unlearn.benchmarks.embedded import _build, _config_from_dict; "
        "_build(_config_from_dict(json.loads(sys.argv[1])), Path(sys.argv[2]))"
    )
    subprocess.run([sys.executable, "-c", code, json.dumps(asdict(config)), str(target)], env=env, check=True)


def _config_from_dict(values: dict) -> EmbeddedBenchmarkConfig:
    values = dict(values)
    values["world"] = EmbeddedWorldConfig(**values["world"])
    return EmbeddedBenchmarkConfig(**values)


if __name__ == "__main__":
    benchmark = build_embedded_benchmark()
    print(json.dumps(benchmark.report, indent=2))
    print(f"Embedded benchmark at {benchmark.root}")
