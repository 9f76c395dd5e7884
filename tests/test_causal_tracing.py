"""Causal tracing: pure helpers, fact tokenization, and a trace of the embedded finetuned model (which memorised
its facts): corrupting the subject loses the answer, restoring clean states brings it back."""

import pytest
import torch

from hf_unlearn.data.tofu import load_tofu_split
from hf_unlearn.editing.causal_tracing import (
    CausalTraceConfig,
    Fact,
    _tokenize_fact,
    causal_trace,
    embedded_facts,
    qa_fact,
    restored_probability,
    suggest_layers,
    window_layers,
)


def test_suggest_layers_takes_the_peak_and_strong_neighbours():
    assert suggest_layers([0.1, 0.5, 0.9, 0.6, 0.2], threshold=0.5) == [1, 2, 3]
    assert suggest_layers([0.9, 0.1, 0.8], threshold=0.5) == [0]  # contiguous only
    assert suggest_layers([0.0, 0.2, 0.1], threshold=0.4) == [1, 2]


def test_window_layers_are_centred_and_cut_at_the_ends():
    assert window_layers(5, 4, 12) == [3, 4, 5, 6]
    assert window_layers(0, 3, 12) == [0, 1]
    assert window_layers(11, 3, 12) == [10, 11]
    assert window_layers(2, 1, 4) == [2]


def test_config_rejects_unknown_kinds_and_tokens():
    with pytest.raises(ValueError, match="kinds"):
        CausalTraceConfig(kinds=("residual",))
    with pytest.raises(ValueError, match="token"):
        CausalTraceConfig(token="first")


def test_facts_locate_subject_and_target_by_offsets(finetuned):
    _, tokenizer = finetuned
    fact = qa_fact(tokenizer, "Where was Ana Bel born?", "Ana Bel was born in Lisbon.", "Ana Bel", "Lisbon")
    assert fact.prompt.endswith("Ana Bel was born in") and fact.target == " Lisbon"
    tokenized = _tokenize_fact(tokenizer, fact)
    ids = tokenized.input_ids
    subject_text = tokenizer.decode([ids[i] for i in tokenized.subject_positions])
    assert subject_text.count("Ana") == 2 and subject_text.count("Bel") == 2  # both mentions
    assert tokenizer.decode([ids[i] for i in tokenized.target_positions]).strip() == "Lisbon"
    assert tokenized.restore_positions["last_subject"][0] == max(tokenized.subject_positions)
    with pytest.raises(ValueError, match="does not occur"):
        _tokenize_fact(tokenizer, Fact("Question: who?", "Nobody", " x"))


def test_embedded_facts_parse_the_canonical_phrasings(embedded, finetuned):
    _, tokenizer = finetuned
    rows = load_tofu_split(embedded.data_dir, "forget10").to_list()
    facts = embedded_facts(tokenizer, rows)
    assert len(facts) == len(rows)
    assert all(f.subject in r["question"] and f.target.strip() in r["answer"] for f, r in zip(facts, rows))


@pytest.mark.quality
def test_trace_of_the_memorising_model(embedded, finetuned, tmp_path):
    model, tokenizer = finetuned
    rows = load_tofu_split(embedded.data_dir, "forget10").to_list()
    facts = embedded_facts(tokenizer, rows)[::3]
    num_layers = model.config.num_hidden_layers

    result = causal_trace(model, tokenizer, facts, CausalTraceConfig(num_samples=4))  # restored at the subject
    effects = result.effect_matrix
    assert effects.shape == (num_layers, 3) and result.kinds == ["hidden", "mlp", "attention"]
    clean, corrupted = torch.tensor(result.clean_prob), torch.tensor(result.corrupted_prob)
    assert clean.mean() > 0.9  # the model knows these facts
    assert corrupted.mean() < clean.mean() - 0.3  # noise on the subject loses them
    assert result.suggested_layers and set(result.suggested_layers) <= set(range(num_layers))
    assert effects[:, 1].argmax().item() in result.suggested_layers  # the largest MLP effect is suggested

    # where the answer is predicted: restoring the last layer's state gives all of it back, single MLPs part of it
    late = causal_trace(model, tokenizer, facts, CausalTraceConfig(num_samples=4, token="prediction")).effect_matrix
    torch.testing.assert_close(late[-1, 0].item(), (clean - corrupted).mean().item(), atol=1e-5, rtol=0)
    assert late[:, 1].max() > 0.1
    every_layer = [("hidden", layer) for layer in range(num_layers)]
    restored = restored_probability(model, tokenizer, facts, every_layer, CausalTraceConfig(num_samples=4, token="prediction"))
    torch.testing.assert_close(restored["restored"], restored["clean"], atol=1e-5, rtol=0)
    torch.testing.assert_close(restored["corrupted"], corrupted.double(), atol=1e-6, rtol=0)  # same noise draws

    paths = result.save(tmp_path)
    assert paths["plot"].stat().st_size > 0 and paths["json"].read_text().startswith("{")
