"""recipes/stamp_forget.py end to end on the embedded benchmark: the chosen facts go, the report and adapter are
written, and the saved adapter reloads onto the finetuned model with the same effect."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from hf_unlearn.data import load_tofu_split
from hf_unlearn.editing import stamp


RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "stamp_forget.py"


def _recipe():
    spec = importlib.util.spec_from_file_location("stamp_forget", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.quality
def test_recipe_forgets_the_chosen_facts_and_writes_report_and_adapter(embedded, tmp_path, train_seed):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "stamp"
    _recipe().main(["--output_dir", str(out), "--forget_items", "0", "9", "--eval_max_items", "16",
                    "--delivery", "adapter", "--seed", str(train_seed)])
    report = json.loads((out / "report" / "evaluation.json").read_text())
    results = report["results"]
    assert set(results) == {"retain", "finetuned", "stamp"}
    before, after = results["finetuned"], results["stamp"]
    assert before["edited_rougeL_recall"] == 1.0  # the finetuned model knew both facts
    # With the recipe's embedded default (forget weight 10), on build seeds 0 and 1 x seeds 0-2: edited ROUGE-L 0.0,
    # edited probability 0.001-0.007 x before, retain ROUGE-L 0.99-1.0 x before.
    assert after["edited_rougeL_recall"] < 0.3
    assert after["edited_prob"] < 0.2 * before["edited_prob"]
    assert after["retain_rougeL_recall"] >= 0.95 * before["retain_rougeL_recall"]
    assert after["forget_quality"] is not None and report["settings"]["edit"]["time_s"] > 0

    forget = load_tofu_split(embedded.data_dir, "forget10").to_list()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(embedded.finetuned_dir), out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    scores = stamp.answer_scores(reloaded, tokenizer, [forget[0], forget[9]])
    assert sum(scores["rouge_l_recall"]) / 2 == pytest.approx(after["edited_rougeL_recall"], abs=1e-6)
    assert sum(scores["probability"]) / 2 == pytest.approx(after["edited_prob"], abs=1e-6)
