"""Launched by tests/test_eval_distributed.py with `accelerate launch --multi_gpu --num_processes 2`: evaluates the
embedded benchmark's finetuned model (TOFU and MUSE metrics) with the work split across the processes, and writes
what each rank returned to `<out>/rank<N>.json`.

Usage: eval_two_process.py OUT_DIR RETAIN_EVAL_JSON MUSE_FOLDER
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_unlearn.benchmarks.embedded import build_embedded_benchmark
from hf_unlearn.eval import evaluate_muse, evaluate_tofu


TOFU_SETTINGS = {"batch_size": 8, "max_items": 12, "progress": False}
MUSE_SETTINGS = {"batch_size": 8, "max_items": 12, "max_length": 128, "verbmem_max_new_tokens": 24, "progress": False}


def main(out_dir: Path, reference: str, muse_folder: str) -> None:
    torch.set_num_threads(1)
    state = PartialState(cpu=not torch.cuda.is_available())  # without a GPU: CPU processes on gloo
    benchmark = build_embedded_benchmark()
    model = AutoModelForCausalLM.from_pretrained(benchmark.finetuned_dir).to(state.device)
    tokenizer = AutoTokenizer.from_pretrained(benchmark.finetuned_dir)
    tofu = evaluate_tofu(model, tokenizer, benchmark.data_dir, reference=reference, accelerator=state, **TOFU_SETTINGS)
    muse = evaluate_muse(model, tokenizer, muse_folder, accelerator=state, **MUSE_SETTINGS)
    report = {"process_index": state.process_index, "num_processes": state.num_processes,
              "backend": state.backend, "tofu": tofu, "muse": muse}
    (out_dir / f"rank{state.process_index}.json").write_text(json.dumps(report))
    state.destroy_process_group()  # a gloo process exiting with its group alive can abort in interpreter teardown


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
