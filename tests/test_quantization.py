"""The fake quantizer against hand-computed values and bitsandbytes, bitsandbytes loading on CPU, the changed-weight
count, the relapse evaluator and its report, and the errors."""

import copy
import json
import sys

import pytest
import torch
from torch import nn

from hf_unlearn.eval import quantization
from hf_unlearn.eval.quantization import (
    NF4_CODE,
    changed_weights,
    check_bitsandbytes,
    check_not_quantized,
    fake_quantize,
    fake_quantize_model,
    load_quantized,
    parse_precision,
    quantized_linear_names,
)
from hf_unlearn.eval.relapse import evaluate_relapse, recovered_fraction, relapse_table, write_relapse_report


# ----- the fake quantizer on hand-made tensors --------------------------------------------------------------------
def test_integer_round_to_nearest_per_row_is_exact():
    # 3 bits: levels k/3, k = -3..3; row absmax 1.5 -> step 0.5; row absmax 3 -> step 1.
    weight = torch.tensor([[1.5, -0.6, 0.2, 0.8], [3.0, -1.4, 0.6, -2.6]])
    expected = torch.tensor([[1.5, -0.5, 0.0, 1.0], [3.0, -1.0, 1.0, -3.0]])
    assert torch.equal(fake_quantize(weight, bits=3, group_size=None, code="int"), expected)


def test_groups_run_over_the_flattened_weight_with_a_short_last_group():
    # 2 bits: levels -1, 0, 1 times the group's absmax; groups of 2 consecutive values, the 5th value alone.
    weight = torch.tensor([1.0, 0.3, -4.0, 1.1, -0.7])
    assert torch.equal(fake_quantize(weight, bits=2, group_size=2), torch.tensor([1.0, 0.0, -4.0, 0.0, -0.7]))
    assert torch.equal(fake_quantize(weight.reshape(1, 5), bits=2, group_size=None), torch.tensor([[0.0, 0.0, -4.0, 0.0, 0.0]]))


def test_nf4_rounds_to_the_nearest_code_times_the_block_absmax():
    weight = torch.tensor([2.0, -2.0, 0.0, 0.16, -0.37, 1.3])
    # scaled: 1, -1, 0, 0.08 (nearest 0.0796), -0.185 (nearest -0.1848), 0.65 (nearest 0.7230)
    codes = [15, 0, 7, 8, 5, 14]
    expected = torch.tensor([NF4_CODE[c] for c in codes], dtype=torch.float32) * 2.0
    assert torch.equal(fake_quantize(weight, bits=4, group_size=64, code="nf4"), expected)


def test_more_bits_give_smaller_errors():
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    errors = [(fake_quantize(weight, bits=b, group_size=64) - weight).abs().mean() for b in (2, 3, 4, 8)]
    assert all(a > b for a, b in zip(errors, errors[1:]))


# ----- agreement with bitsandbytes --------------------------------------------------------------------------------
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_fake_quantizer_equals_bitsandbytes_4bit_dequantized_weights(quant_type):
    functional = pytest.importorskip("bitsandbytes.functional")
    layer = nn.Linear(200, 96)  # 200 inputs: blocks of 64 straddle rows, and the last block is short
    weight = layer.weight.detach()
    packed, state = functional.quantize_4bit(weight, blocksize=64, quant_type=quant_type)
    reference = functional.dequantize_4bit(packed, state)
    assert torch.equal(fake_quantize(weight, bits=4, group_size=64, code=quant_type), reference)


def test_fake_int8_equals_bitsandbytes_int8_codes():
    functional = pytest.importorskip("bitsandbytes.functional")
    weight = nn.Linear(128, 64).weight.detach()
    codes, row_absmax, _ = functional.int8_vectorwise_quant(weight.clone())
    ours = fake_quantize(weight, bits=8, group_size=None)
    assert torch.equal(torch.round(ours * 127 / row_absmax.unsqueeze(-1)).to(torch.int8), codes)
    assert torch.allclose(ours, codes.float() * row_absmax.unsqueeze(-1) / 127, atol=1e-7)


def test_4bit_load_of_the_embedded_model_matches_the_fake_quantizer_and_generates(finetuned, embedded):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import dequantize_4bit

    from hf_unlearn.data import load_tofu_split
    from hf_unlearn.eval.generation import generate_answers

    model, tokenizer = finetuned
    quantized = load_quantized(model, "nf4", device="cpu")
    assert type(quantized.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    # What bitsandbytes quantizes on CPU: the 28 block linears; the tied embedding / lm_head stays float32.
    names = quantized_linear_names(model)
    assert len(names) == 28 and "lm_head" not in names
    assert isinstance(quantized.lm_head, nn.Linear) and quantized.lm_head.weight.dtype == torch.float32
    fake = fake_quantize_model(model, "fake-nf4")
    for name in names:
        weight = quantized.get_submodule(name).weight
        assert weight.quant_state.blocksize == 64
        assert torch.equal(dequantize_4bit(weight.data, weight.quant_state), fake.get_submodule(name).weight)
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, finetuned[0].model.layers[0].mlp.down_proj.weight)

    rows = load_tofu_split(embedded.data_dir, "forget10").to_list()[:8]
    questions = [r["question"] for r in rows]
    answers = generate_answers(quantized, tokenizer, questions, max_new_tokens=32, batch_size=8)
    assert answers == generate_answers(model, tokenizer, questions, max_new_tokens=32, batch_size=8)
    assert sum(a == r["answer"] for a, r in zip(answers, rows)) >= 6  # 4-bit still knows what it memorised


# ----- changed weights --------------------------------------------------------------------------------------------
def test_changed_weights_counts_bucket_moves_not_tiny_changes():
    original = nn.Sequential(nn.Linear(64, 2, bias=False))
    with torch.no_grad():
        original[0].weight.zero_()
        original[0].weight[0, :3] = torch.tensor([1.0, 0.0, 0.5])  # NF4 codes 15, 7, 12 (0.4407; next 0.5626)
        original[0].weight[1, 0] = 2.0
    unlearned = copy.deepcopy(original)
    with torch.no_grad():
        unlearned[0].weight[0, 1] = 1e-4  # still nearest to code 7 (0.0)
        unlearned[0].weight[0, 2] = 0.51  # past the midpoint 0.5017: code 13
    counts = changed_weights(original, unlearned, "nf4")
    assert counts["num_weights"] == 128
    assert counts["changed_full_precision"] == 2 / 128
    assert counts["changed_code"] == counts["changed_value"] == 1 / 128
    with torch.no_grad():
        unlearned[0].weight[1, 0] = 2.5  # a new absmax: the block's values change, its codes do not
    counts = changed_weights(original, unlearned, "nf4")
    assert counts["changed_code"] == 1 / 128 and counts["changed_value"] == 2 / 128  # the zeros stay 0
    assert changed_weights(original, copy.deepcopy(original), "rtn3g64")["changed_full_precision"] == 0


def test_a_peft_model_is_compared_and_quantized_with_its_adapters_merged(finetuned):
    from peft import LoraConfig, get_peft_model

    model, _ = finetuned
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["v_proj"], init_lora_weights=False))
    counts = changed_weights(model, peft_model, "nf4")
    assert counts["changed_full_precision"] == 4 * 128 * 128 / counts["num_weights"]  # the 4 v_proj layers
    quantized = load_quantized(peft_model, "fake-nf4")
    merged = copy.deepcopy(peft_model).merge_and_unload()
    name = "model.layers.2.self_attn.v_proj"
    expected = fake_quantize(merged.get_submodule(name).weight, bits=4, group_size=64, code="nf4")
    assert torch.equal(quantized.get_submodule(name).weight, expected)


# ----- the relapse evaluator --------------------------------------------------------------------------------------
def test_relapse_table_and_recovered_fraction():
    evaluations = {"unlearned": {"full": {"forget_rougeL_recall": 0.2, "forget_prob": 0.1, "model_utility": 0.5},
                                 "nf4": {"forget_rougeL_recall": 0.7, "forget_prob": 0.3, "model_utility": 0.45}}}
    table = relapse_table(evaluations, ["nf4"])["unlearned"]["nf4"]
    assert table["relapse_forget_rougeL_recall"] == pytest.approx(0.5)
    assert table["relapse_forget_prob"] == pytest.approx(0.2)
    assert table["relapse_model_utility"] == pytest.approx(-0.05)
    assert recovered_fraction(0.7, 0.2, 1.0) == pytest.approx(0.625)
    assert recovered_fraction(0.7, 1.0, 1.0) is None  # nothing was forgotten
    assert recovered_fraction(0.9965, 0.9963, 0.9966) is None  # too little forgotten for a ratio


def test_relapse_evaluator_reports_every_precision_and_writes_the_report(finetuned, embedded, tmp_path):
    model, tokenizer = finetuned
    unlearned = copy.deepcopy(model)
    with torch.no_grad():  # a crude "unlearning": noise on one layer, so the models differ
        weight = unlearned.model.layers[0].self_attn.v_proj.weight
        weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    relapse = evaluate_relapse(unlearned, tokenizer, embedded.data_dir, precisions=["fake-nf4", "rtn2g64"],
                               original=model, max_items=8, max_new_tokens=24)
    assert relapse["precisions"] == ["full", "fake-nf4", "rtn2g64"]
    original, ours = relapse["evaluations"]["original"], relapse["evaluations"]["unlearned"]
    # NF4 keeps what the original memorised; 2-bit rounding (3 levels) loses some of it.
    assert original["full"]["forget_rougeL_recall"] == 1.0
    assert original["fake-nf4"]["forget_rougeL_recall"] > 0.9
    assert original["rtn2g64"]["forget_rougeL_recall"] < original["fake-nf4"]["forget_rougeL_recall"]
    rise = relapse["relapse"]["unlearned"]["rtn2g64"]["relapse_forget_rougeL_recall"]
    assert rise == pytest.approx(ours["rtn2g64"]["forget_rougeL_recall"] - ours["full"]["forget_rougeL_recall"])
    changed = relapse["changed_weights"]
    v_proj = 128 * 128
    assert changed["fake-nf4"]["changed_full_precision"] == pytest.approx(v_proj / changed["fake-nf4"]["num_weights"])
    assert 0 < changed["fake-nf4"]["changed_code"] < changed["fake-nf4"]["changed_full_precision"]

    paths = write_relapse_report(relapse, tmp_path)
    assert json.loads(paths["json"].read_text())["precisions"] == relapse["precisions"]
    markdown = paths["markdown"].read_text()
    assert "| unlearned | rtn2g64 |" in markdown and "| original | fake-nf4 |" in markdown
    assert paths["plot"].stat().st_size > 0
    assert write_relapse_report(relapse, tmp_path)["json"].name == "relapse-2.json"  # never overwrites


def test_the_original_is_evaluated_once_for_several_unlearned_models(finetuned, embedded, monkeypatch):
    model, tokenizer = finetuned
    settings = {"precisions": ["fake-nf4"], "original": model, "max_items": 4, "max_new_tokens": 8}
    first = evaluate_relapse(copy.deepcopy(model), tokenizer, embedded.data_dir, label="first", **settings)
    quantized_models = []
    load_quantized = quantization.load_quantized

    def recording_load_quantized(candidate, *args, **kwargs):
        quantized_models.append(candidate)
        return load_quantized(candidate, *args, **kwargs)

    monkeypatch.setattr(quantization, "load_quantized", recording_load_quantized)
    second_model = copy.deepcopy(model)
    second = evaluate_relapse(second_model, tokenizer, embedded.data_dir, label="second",
                              original_evaluations=first["evaluations"]["original"], **settings)
    assert len(quantized_models) == 1 and quantized_models[0] is second_model  # only the new model was quantized
    assert second["evaluations"]["original"] == first["evaluations"]["original"]

    def timeless(by_precision):
        return {precision: {k: v for k, v in numbers.items() if k != "eval_time_s"} for precision, numbers in by_precision.items()}

    assert timeless(second["evaluations"]["second"]) == timeless(first["evaluations"]["first"])  # same weights, same numbers
    assert second["recovered"] == first["recovered"]


# ----- errors -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nf3", "int4", "rtn1", "rtn9g64", "fp16"])
def test_unsupported_bit_widths_are_rejected_with_the_alternatives(name):
    with pytest.raises(ValueError, match="bit width|Unknown precision"):
        parse_precision(name)


def test_fake_precisions_mirror_bitsandbytes_layouts():
    assert parse_precision("fake-nf4").group_size == parse_precision("nf4").group_size == 64
    assert parse_precision("fake-int8").group_size is None
    assert parse_precision("rtn3g128") == parse_precision("RTN3G128")


def test_an_already_quantized_model_is_rejected(finetuned, tmp_path):
    pytest.importorskip("bitsandbytes")
    model, _ = finetuned
    quantized = load_quantized(model, "nf4", device="cpu")
    with pytest.raises(ValueError, match="already quantized"):
        load_quantized(quantized, "int8")
    with pytest.raises(ValueError, match="already quantized"):
        fake_quantize_model(quantized, "fake-nf4")
    quantized.save_pretrained(tmp_path / "q")
    with pytest.raises(ValueError, match="saved quantized"):
        check_not_quantized(tmp_path / "q")


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    with pytest.raises(ImportError, match="pip install 'bitsandbytes"):
        check_bitsandbytes("cpu")


def test_a_device_bitsandbytes_cannot_use_is_a_clear_error(monkeypatch):
    functional = pytest.importorskip("bitsandbytes.functional")

    def no_kernel(*args, **kwargs):  # what bitsandbytes does on a device it has no kernel for
        raise NotImplementedError("no kernel for this device")

    monkeypatch.setattr(functional, "quantize_4bit", no_kernel)
    with pytest.raises(RuntimeError, match="cannot quantize on device 'cpu'.*fake quantizer"):
        check_bitsandbytes("cpu")
