"""Forget a few facts with STAMP (a closed-form edit, no training), evaluate before and after, write the report.

    python recipes/stamp_forget.py                                     # the embedded benchmark: 4 forget10 facts
    python recipes/stamp_forget.py --forget_items 0 8 16 --rank 64 --delivery adapter
    python recipes/stamp_forget.py --model_name_or_path locuslab/tofu_ft_llama2-7b --dataset locuslab/TOFU \
        --forget_split forget10 --retain_model_name_or_path locuslab/tofu_ft_llama2-7b_retain90 --eval_max_items 100

Every `StampConfig` field is a flag (`--layers 0,3`, `--rank`, `--ridge`, `--forget_weight`, `--delivery`, ...). The
report compares the retain model (when there is one), the model before and after the edit on the whole forget
split (TOFU metrics; only the edited facts are meant to go) and adds `edited_prob` / `edited_rougeL_recall`: the
answer probability and ROUGE-L recall of the edited facts alone. The edit's time and memory are in the settings.

On the embedded benchmark (no model or data set named) the recipe edits with `EMBEDDED_DEFAULTS` unless the flags
say otherwise: `StampConfig`'s forget weight 3 left the edited facts at 0.15-0.38 x their probability on two builds
of the benchmark, forget weight 10 at 0.001-0.007 x with the retain answers kept (0.99-1.0 x), 3 seeds each.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from hf_unlearn.data import load_tofu_split
from hf_unlearn.data.tofu import retain_split_for
from hf_unlearn.editing import StampConfig, stamp_edit
from hf_unlearn.editing.stamp import answer_scores
from hf_unlearn.errors import run_command
from hf_unlearn.eval import evaluate_tofu, write_report
from hf_unlearn.files import claim_fresh_path
from hf_unlearn.modeling import load_causal_lm
from hf_unlearn.pipeline import resolve_benchmark


@dataclass
class StampRunArguments:
    r"""
    What to forget and how to judge it (`model_name_or_path` and `dataset` both unset: the embedded benchmark).

    Parameters:
        model_name_or_path (`str`, *optional*), dataset (`str`, *optional*): the model (Hub name, folder or .gguf)
            and its TOFU-schema data (Hub name or folder).
        forget_split (`str`, defaults to `"forget10"`): the split the facts come from, and the one evaluated.
        forget_items (`list[int]`, defaults to `[0, 1, 2, 3]`): indices of the facts in `forget_split` to forget.
        retain_split (`str`, *optional*): where the retain buffer comes from (the complement of the forget split).
        retain_model_name_or_path (`str`, *optional*): the retain model, evaluated for forget quality.
        holdout_split (`str`, *optional*): never-trained examples for the MIA AUCs.
        eval_max_items (`int`, *optional*): evaluate only the first N items of every set.
        output_dir (`str`, *optional*): the report goes to `<output_dir>/report`, the edited model (or adapter) to
            `<output_dir>/model`; by default a fresh `outputs/stamp_<forget_split>[-N]`.
        device (`str`, *optional*): `cuda`, `cpu`, ...; the first GPU when there is one.
        trust_remote_code (`bool`, defaults to `False`).
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "Model (default: embedded)."})
    dataset: str | None = field(default=None, metadata={"help": "TOFU-schema data (default: embedded)."})
    forget_split: str = field(default="forget10", metadata={"help": "Split of the facts to forget."})
    forget_items: list[int] = field(default_factory=lambda: [0, 1, 2, 3], metadata={"help": "Indices to forget."})
    retain_split: str | None = field(default=None, metadata={"help": "Retain split (default: complement)."})
    retain_model_name_or_path: str | None = field(default=None, metadata={"help": "Retain (reference) model."})
    holdout_split: str | None = field(default=None, metadata={"help": "Holdout split for MIA."})
    eval_max_items: int | None = field(default=None, metadata={"help": "Evaluate only the first N items of a set."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the report and model go."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda when available)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})


# The embedded benchmark's settings (measured, see above); later flags override them.
EMBEDDED_DEFAULTS = ["--forget_weight", "10"]


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((StampRunArguments, StampConfig))
    run, _ = parser.parse_args_into_dataclasses(argv)
    if run.model_name_or_path is None and run.dataset is None:
        argv = EMBEDDED_DEFAULTS + argv
    run, config = parser.parse_args_into_dataclasses(argv)
    run = resolve_benchmark(run)
    device = run.device or ("cuda" if torch.cuda.is_available() else "cpu")
    forget_rows = load_tofu_split(run.dataset, run.forget_split).to_list()
    if not all(0 <= i < len(forget_rows) for i in run.forget_items):
        raise ValueError(f"--forget_items must be indices into {run.forget_split} (0..{len(forget_rows) - 1}).")
    facts = [forget_rows[i] for i in run.forget_items]
    output_dir = Path(run.output_dir) if run.output_dir else claim_fresh_path(Path("outputs") / f"stamp_{run.forget_split}")
    if (output_dir / "model").exists():
        raise FileExistsError(f"{output_dir}/model exists; pick a new --output_dir (results are never overwritten).")
    retain = load_tofu_split(run.dataset, run.retain_split or retain_split_for(run.forget_split))

    def evaluate(model, tokenizer, reference=None) -> dict:
        result = evaluate_tofu(model, tokenizer, run.dataset, run.forget_split, holdout_split=run.holdout_split,
                               reference=reference, max_items=run.eval_max_items, progress=False)
        edited = answer_scores(model, tokenizer, facts)
        result["edited_prob"] = sum(edited["probability"]) / len(facts)
        result["edited_rougeL_recall"] = sum(edited["rouge_l_recall"]) / len(facts)
        result["per_item"]["edited_generation"] = edited["answer"]
        return result

    results = {}
    if run.retain_model_name_or_path:
        retain_model, tokenizer = load_causal_lm(run.retain_model_name_or_path, trust_remote_code=run.trust_remote_code)
        results["retain"] = evaluate(retain_model.to(device), tokenizer)
        del retain_model
    model, tokenizer = load_causal_lm(run.model_name_or_path, trust_remote_code=run.trust_remote_code)
    model.to(device).eval()
    results["finetuned"] = evaluate(model, tokenizer, results.get("retain"))
    edit = stamp_edit(model, tokenizer, forget=facts, retain=retain, config=config)
    print(json.dumps(edit.summary(), indent=1))
    results["stamp"] = evaluate(edit.model, tokenizer, results.get("retain"))

    edit.model.save_pretrained(output_dir / "model")
    tokenizer.save_pretrained(output_dir / "model")
    settings = {"run": asdict(run), "stamp": asdict(config), "edit": edit.summary()}
    report = write_report(results, output_dir / "report", title=f"STAMP on {run.dataset}", settings=settings)
    print(f"\nEdited model: {output_dir}/model\nReport: {report['markdown']}")
    return {"report": report, "results": results, "edit": edit}


if __name__ == "__main__":
    sys.exit(run_command(main))
