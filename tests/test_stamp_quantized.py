"""STAMP adapters on a bitsandbytes 4-bit base, on CPU (bitsandbytes >= 0.49 runs 4-bit on CPU)."""

import copy
import random

import pytest
import torch
from test_stamp import retain_model_forget_rouge

from hf_unlearn.data import load_tofu_split, pad_examples, tokenize_qa
from hf_unlearn.editing import stamp


pytest.importorskip("bitsandbytes")


def _load_4bit(path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=config, device_map="cpu")


def _logits(model, tokenizer, rows):
    batch = pad_examples([tokenize_qa(tokenizer, r["question"], r["answer"]) for r in rows], tokenizer.pad_token_id)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.fixture(scope="module")
def data(embedded):
    retain = load_tofu_split(embedded.data_dir, "retain90").to_list()
    buffer = random.Random(0).sample(retain, 32)
    return {
        "forget": load_tofu_split(embedded.data_dir, "forget10").to_list(),
        "buffer": buffer,
        "held_out": [r for r in retain if r not in buffer][:24],
    }


@pytest.mark.quality
def test_adapter_from_full_precision_edit_loads_and_runs_on_a_4bit_base(finetuned, embedded, data, tmp_path):
    from peft import PeftModel
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    model, tokenizer = finetuned
    item = data["forget"][0]
    result = stamp.forget(
        copy.deepcopy(model), tokenizer, item["question"], item["answer"], retain=data["buffer"], delivery="adapter"
    )
    result.model.save_pretrained(tmp_path / "stamp")

    reference = _logits(_load_4bit(embedded.finetuned_dir), tokenizer, [item])
    # Attach the adapter before the base runs: bitsandbytes 0.50 repacks CPU 4-bit weights at the first inference
    # and `state_dict()` (which loading an adapter calls) then unpacks them lossily.
    quantized = PeftModel.from_pretrained(_load_4bit(embedded.finetuned_dir), tmp_path / "stamp")
    module = quantized.base_model.model.get_submodule(result.edits[0].module_name)
    assert isinstance(module, LoraLinear4bit)

    scores = stamp.answer_scores(quantized, tokenizer, [item], max_new_tokens=32)
    with quantized.disable_adapter():
        base_scores = stamp.answer_scores(quantized, tokenizer, [item], max_new_tokens=32)
        assert torch.equal(_logits(quantized, tokenizer, [item]), reference)
    assert base_scores["rouge_l_recall"][0] == 1.0  # the 4-bit base still knows the fact
    assert scores["probability"][0] < 0.1 * base_scores["probability"][0]
    # as in test_stamp.py's one-item test (same item, same edit): build seed 0 0.00, build seed 1 0.33
    assert scores["rouge_l_recall"][0] < retain_model_forget_rouge(embedded) + 0.1


def test_edit_computed_on_a_4bit_base_is_delivered_as_adapter(finetuned, embedded, data):
    _, tokenizer = finetuned
    item = data["forget"][9]
    quantized = _load_4bit(embedded.finetuned_dir)
    rows = [item, *data["held_out"]]
    before_logits = _logits(quantized, tokenizer, rows)
    before = stamp.answer_scores(quantized, tokenizer, rows, max_new_tokens=32)

    with pytest.raises(ValueError, match="delivery='adapter'"):
        stamp.forget(quantized, tokenizer, item["question"], item["answer"], retain=data["buffer"])
    result = stamp.forget(
        quantized, tokenizer, item["question"], item["answer"], retain=data["buffer"], delivery="adapter"
    )
    after = stamp.answer_scores(result.model, tokenizer, rows, max_new_tokens=32)
    assert after["probability"][0] < 0.1 * before["probability"][0]
    assert after["rouge_l_recall"][0] < 0.3
    retain_before = sum(before["rouge_l_recall"][1:]) / len(rows[1:])
    assert sum(after["rouge_l_recall"][1:]) / len(rows[1:]) >= 0.95 * retain_before
    with result.model.disable_adapter():
        assert torch.equal(_logits(result.model, tokenizer, rows), before_logits)
