import time

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_unlearn.benchmarks.embedded import build_embedded_benchmark
from hf_unlearn.data import load_tofu_split
from hf_unlearn.eval.generation import generate_answers
from hf_unlearn.eval.rouge import rouge_l_recall


def _rouge(model_dir, data_dir, split, limit=None):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = load_tofu_split(data_dir, split)
    rows = rows.select(range(min(limit or len(rows), len(rows))))
    answers = generate_answers(model, tokenizer, rows["question"])
    recalls = rouge_l_recall(answers, rows["answer"])
    return sum(recalls) / len(recalls)


@pytest.mark.quality
def test_finetuned_memorises_and_retain_model_does_not_know_the_forget_split(embedded):
    finetuned_full = _rouge(embedded.finetuned_dir, embedded.data_dir, "full", limit=160)
    retain_on_forget = _rouge(embedded.retain_dir, embedded.data_dir, "forget10")
    retain_on_retain = _rouge(embedded.retain_dir, embedded.data_dir, "retain90", limit=96)
    assert finetuned_full > 0.95
    assert retain_on_retain > 0.95
    assert retain_on_forget < retain_on_retain - 0.4


def test_cached_benchmark_is_reused(embedded):
    start = time.perf_counter()
    again = build_embedded_benchmark()
    assert again.root == embedded.root
    assert time.perf_counter() - start < 5
    assert embedded.report["finetuned"]["full"]["exact_match"] > 0.9


def test_the_data_alone_equals_the_built_benchmarks_data(embedded, embedded_data_dir):
    """conftest's `embedded_data_dir` (the data without the models) holds the very files of the build."""
    built = sorted(p.name for p in embedded.data_dir.iterdir())
    assert built == sorted(p.name for p in embedded_data_dir.iterdir()) and "forget10.json" in built
    for name in built:
        assert (embedded_data_dir / name).read_bytes() == (embedded.data_dir / name).read_bytes(), name
