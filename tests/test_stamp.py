"""STAMP: the closed-form edit on random matrices, and forgetting one memorised fact of the embedded benchmark."""

import copy
import random

import pytest
import torch

from hf_unlearn.data import load_tofu_split, pad_examples, tokenize_qa
from hf_unlearn.editing import StampConfig, stamp
from hf_unlearn.editing.stamp import (
    compress_factors,
    find_down_projections,
    low_rank_ridge_edit,
    refusal_separation,
    refusal_targets,
    ridge_edit,
    token_positions,
)


# ----- linear algebra on random matrices ----------------------------------------------------------------------------
def _random_problem(d_in, d_out, n_f, n_r, seed=0, retain_rank=None):
    g = torch.Generator().manual_seed(seed)
    forget_keys = torch.randn(d_in, n_f, generator=g, dtype=torch.float64)
    residuals = torch.randn(d_out, n_f, generator=g, dtype=torch.float64)
    if retain_rank is None:
        retain_keys = torch.randn(d_in, n_r, generator=g, dtype=torch.float64)
    else:
        retain_keys = torch.randn(d_in, retain_rank, generator=g, dtype=torch.float64) @ torch.randn(
            retain_rank, n_r, generator=g, dtype=torch.float64
        )
    return forget_keys, residuals, retain_keys


@pytest.mark.parametrize("n_r", [5, 60])  # n = n_f + n_r below d_in (dual solve) and above it (primal solve)
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_ridge_edit_satisfies_normal_equations(n_r, ridge):
    forget_keys, residuals, retain_keys = _random_problem(d_in=24, d_out=16, n_f=3, n_r=n_r)
    b, a = ridge_edit(forget_keys, residuals, retain_keys, ridge)
    delta = b @ a
    keys = torch.cat([forget_keys, retain_keys], dim=1)
    full_residuals = torch.cat([residuals, torch.zeros(16, n_r, dtype=torch.float64)], dim=1)
    # Normal equations of min ||dW K - R||^2 + lambda ||dW||^2:  dW (K K^T + lambda I) = R K^T
    lhs = delta @ (keys @ keys.T + ridge * torch.eye(24, dtype=torch.float64))
    if ridge == 0 and n_r == 5:
        # K K^T is singular (rank 8 < 24); the dual solution is the minimum-norm one, dW = R K^+.
        torch.testing.assert_close(delta, full_residuals @ torch.linalg.pinv(keys))
    torch.testing.assert_close(lhs, full_residuals @ keys.T)


def test_ridge_edit_without_retain_is_minimum_norm_ridge_solution():
    forget_keys, residuals, _ = _random_problem(d_in=24, d_out=16, n_f=4, n_r=0)
    b, a = ridge_edit(forget_keys, residuals, None, 0.5)
    gram = forget_keys.T @ forget_keys + 0.5 * torch.eye(4, dtype=torch.float64)
    expected = residuals @ torch.linalg.solve(gram, forget_keys.T)
    torch.testing.assert_close(b @ a, expected)


@pytest.mark.parametrize("retain_rank", [10, None])
def test_low_rank_edit_matches_full_edit_once_rank_reaches_rank_of_retain_keys(retain_rank):
    forget_keys, residuals, retain_keys = _random_problem(d_in=40, d_out=16, n_f=3, n_r=50, retain_rank=retain_rank)
    b, a = ridge_edit(forget_keys, residuals, retain_keys, 0.1)
    full = b @ a
    rank_of_retain = int(torch.linalg.matrix_rank(retain_keys))
    errors = []
    for rank in (1, 4, rank_of_retain // 2, rank_of_retain):
        b, a = low_rank_ridge_edit(forget_keys, residuals, retain_keys, 0.1, rank)
        errors.append(float((b @ a - full).norm() / full.norm()))
    assert errors[-1] < 1e-8, errors
    assert errors[0] > 1e-3, errors  # a truncation really is an approximation
    assert errors[-2] > errors[-1]


def test_compress_factors_gives_the_exact_minimal_rank():
    g = torch.Generator().manual_seed(1)
    b = torch.randn(20, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 6, generator=g, dtype=torch.float64)
    a = torch.randn(6, 30, generator=g, dtype=torch.float64)
    b2, a2 = compress_factors(b, a)
    assert b2.shape == (20, 3) and a2.shape == (3, 30)
    torch.testing.assert_close(b2 @ a2, b @ a)


def test_refusal_targets_project_into_the_refusal_subspace():
    refusal = torch.tensor([[1.0, 3.0, 1.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 5.0, 5.0]])  # mean (2, 1, 5)
    values = torch.tensor([[0.0, 10.0], [0.0, -4.0], [0.0, 1.0]])
    mean_only = refusal_targets(values, refusal, num_directions=0)
    torch.testing.assert_close(mean_only, torch.tensor([[2.0, 2.0], [1.0, 1.0], [5.0, 5.0]]))
    # The refusal values span the plane z = 5 around their mean: the targets keep x, y and set z = 5.
    plane = refusal_targets(values, refusal, num_directions=2)
    torch.testing.assert_close(plane, torch.tensor([[0.0, 10.0], [0.0, -4.0], [5.0, 5.0]]))


def test_refusal_separation_is_distance_to_refusal_mean_over_stream_norm():
    refusal = torch.tensor([[1.0, -1.0], [0.0, 0.0]])  # mean (0, 0)
    forget = torch.tensor([[3.0, 0.0], [4.0, 2.0]])  # distances 5 and 2
    assert refusal_separation(forget, refusal, torch.tensor([7.0, 7.0])) == pytest.approx(3.5 / 7.0)


def test_token_positions():
    batch = {
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]]),
        "labels": torch.tensor([[-100, -100, 7, 8, 2, -100]]),
    }
    assert token_positions(batch, "answer").tolist() == [[False, True, True, True, False, False]]
    assert token_positions(batch, "answer_only").tolist() == [[False, False, True, True, False, False]]
    assert token_positions(batch, "all").tolist() == [[True, True, True, True, True, False]]


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="'auto' or layer indices"):
        StampConfig(layers="first")
    with pytest.raises(ValueError, match="delivery"):
        StampConfig(delivery="merge")
    with pytest.raises(ValueError, match="layers is empty"):
        StampConfig(layers=",")
    assert StampConfig(layers="0, 3").layer_indices == [0, 3]
    assert StampConfig(layers=[2, 1]).layers == "2,1" and StampConfig().layer_indices is None


# ----- on the memorising embedded model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(embedded):
    forget = load_tofu_split(embedded.data_dir, "forget10").to_list()
    perturbed = load_tofu_split(embedded.data_dir, "forget10_perturbed").to_list()
    retain = load_tofu_split(embedded.data_dir, "retain90").to_list()
    buffer = random.Random(0).sample(retain, 32)
    held_out = [r for r in retain if r not in buffer][:32]
    return {"forget": forget, "perturbed": perturbed, "buffer": buffer, "held_out": held_out}


def _logits(model, tokenizer, rows):
    batch = pad_examples([tokenize_qa(tokenizer, r["question"], r["answer"]) for r in rows], tokenizer.pad_token_id)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _mean(values):
    return sum(values) / len(values)


def retain_model_forget_rouge(embedded) -> float:
    """The retain model's mean ROUGE-L recall on forget10 (from the build report): what answers score when the
    model never learned the forget authors (template words such as "was born in" match)."""
    return embedded.report["retain"]["forget10"]["rougeL_recall"]


@pytest.mark.quality
def test_forgetting_one_item_collapses_it_and_keeps_retain_answers(finetuned, embedded, data):
    model, tokenizer = finetuned
    item = data["forget"][0]
    same_author = data["forget"][1:8]
    paraphrase = {"question": data["perturbed"][0]["paraphrased_question"], "answer": item["answer"]}
    rows = [item, paraphrase, *same_author, *data["held_out"]]
    before = stamp.answer_scores(model, tokenizer, rows, max_new_tokens=32)
    assert before["probability"][0] > 0.9 and before["rouge_l_recall"][0] == 1.0  # it really was memorised

    edited = copy.deepcopy(model)
    result = stamp.forget(edited, tokenizer, prompt=item["question"], answer=item["answer"], retain=data["buffer"])
    after = stamp.answer_scores(edited, tokenizer, rows, max_new_tokens=32)

    assert result.model is edited and len(result.layer_scores) == 4  # "auto" scored every layer...
    assert result.layers == [max(result.layer_scores, key=result.layer_scores.get)]  # ...and took the most separated
    assert result.edits[0].rank == result.num_forget_tokens  # rank(dW) = number of forget tokens
    assert result.time_s > 0 and result.peak_memory_mb is not None
    # The forgotten answer collapses...
    assert after["probability"][0] < 0.1 * before["probability"][0]
    # No more of the answer comes back than from the retain model, which never saw the forget authors (its mean
    # forget10 ROUGE-L recall: "<name> was born in" scores without any knowledge), with a 0.1 margin. Measured with
    # the library defaults: build seed 0 ROUGE-L 0.00 (answer ""), build seed 1 0.33 ("aka was born inaka.", the
    # place gone; probability 4.8e-3); the retain models' level 0.303 and 0.285.
    assert after["rouge_l_recall"][0] < retain_model_forget_rouge(embedded) + 0.1, after["answer"][0]
    # ...and so does the answer to the paraphrased question.
    assert after["rouge_l_recall"][1] < before["rouge_l_recall"][1]
    # Facts of other authors stay (held out from the retain buffer).
    retain_before, retain_after = _mean(before["rouge_l_recall"][9:]), _mean(after["rouge_l_recall"][9:])
    assert retain_after >= 0.97 * retain_before
    # The edit (at layer 0 here) reaches the author's name tokens, so the author's other facts suffer too, but less.
    same_after = _mean(after["rouge_l_recall"][2:9])
    assert after["rouge_l_recall"][0] < same_after < _mean(before["rouge_l_recall"][2:9])


def test_adapter_equals_inplace_edit_and_disabling_it_restores_the_model(finetuned, data):
    model, tokenizer = finetuned
    item = data["forget"][9]
    rows = [item, *data["held_out"][:8]]
    original = _logits(model, tokenizer, rows)

    inplace = stamp.forget(copy.deepcopy(model), tokenizer, item["question"], item["answer"], retain=data["buffer"])
    adapter = stamp.forget(
        copy.deepcopy(model), tokenizer, item["question"], item["answer"], retain=data["buffer"], delivery="adapter"
    )
    peft_model = adapter.model
    module_name = adapter.edits[0].module_name
    lora = peft_model.base_model.model.get_submodule(module_name)
    assert lora.lora_A["default"].weight.shape[0] == adapter.edits[0].rank == inplace.edits[0].rank

    edited = _logits(inplace.model, tokenizer, rows)
    assert (edited - original).abs().max() > 1.0  # the edit does something
    torch.testing.assert_close(_logits(peft_model, tokenizer, rows), edited, atol=1e-4, rtol=1e-4)
    assert stamp.answer_scores(peft_model, tokenizer, rows, 32)["answer"] == stamp.answer_scores(
        inplace.model, tokenizer, rows, 32
    )["answer"]
    with peft_model.disable_adapter():
        assert torch.equal(_logits(peft_model, tokenizer, rows), original)


@pytest.mark.quality
def test_low_rank_edit_forgets_and_keeps_retain(finetuned, data):
    model, tokenizer = finetuned
    item = data["forget"][20]
    rows = [item, *data["held_out"]]
    before = stamp.answer_scores(model, tokenizer, rows, max_new_tokens=32)
    result = stamp.forget(copy.deepcopy(model), tokenizer, item["question"], item["answer"], retain=data["buffer"],
                          rank=32, forget_weight=10.0)  # the embedded default of recipes/stamp_forget.py
    after = stamp.answer_scores(result.model, tokenizer, rows, max_new_tokens=32)
    # Measured on build seeds 0 and 1, retain buffers drawn with seeds 0-2: probability 0.0011-0.0018 x before,
    # ROUGE-L 0-0.14, held-out ROUGE-L 0.92-0.96 x before. A one-fact edit changes 1-3 of the 32 held-out answers
    # on this benchmark in every setting tried (forget weight 3 or 10, rank 32, 64 or full, 1 or 2 layers, ridge
    # 0.01 or 0.1, 32 or 128 buffer rows: 0.92-0.98 x), so 0.95 x held on one build only.
    assert after["probability"][0] < 0.1 * before["probability"][0]
    assert after["rouge_l_recall"][0] < 0.3
    assert _mean(after["rouge_l_recall"][1:]) >= 0.9 * _mean(before["rouge_l_recall"][1:])


def test_retain_questions_alone_are_answered_by_the_model(finetuned, data):
    model, tokenizer = finetuned
    item = data["forget"][33]
    questions = [r["question"] for r in data["buffer"]]
    result = stamp.forget(copy.deepcopy(model), tokenizer, item["question"], item["answer"], retain=questions)
    after = stamp.answer_scores(result.model, tokenizer, [item, *data["held_out"]], max_new_tokens=32)
    assert result.num_retain_tokens > 500
    assert after["rouge_l_recall"][0] < 0.3
    assert _mean(after["rouge_l_recall"][1:]) >= 0.95


def test_without_retain_data_it_warns(finetuned, data):
    model, tokenizer = finetuned
    item = data["forget"][0]
    with pytest.warns(UserWarning, match="without retain data"):
        result = stamp.forget(copy.deepcopy(model), tokenizer, item["question"], item["answer"])
    assert result.num_retain_tokens == 0 and result.edits[0].retain_change is None


def test_explicit_layers_are_edited_in_order_into_one_adapter(finetuned, data):
    model, tokenizer = finetuned
    item = data["forget"][0]
    result = stamp.forget(
        copy.deepcopy(model), tokenizer, item["question"], item["answer"], retain=data["buffer"][:8],
        layers="2,1", delivery="adapter",
    )
    assert result.layers == [1, 2]
    peft_model = result.model
    for edit in result.edits:
        lora = peft_model.base_model.model.get_submodule(edit.module_name)
        torch.testing.assert_close(lora.lora_B["default"].weight @ lora.lora_A["default"].weight, edit.delta)
    with pytest.raises(ValueError, match="merge_and_unload"):
        stamp.forget(peft_model, tokenizer, item["question"], item["answer"])


def test_model_without_down_projections_is_refused(finetuned):
    _, tokenizer = finetuned
    with pytest.raises(ValueError, match="down_proj"):
        stamp.forget(torch.nn.Linear(2, 2), tokenizer, "q", "a")
    assert len(find_down_projections(finetuned[0])) == 4
