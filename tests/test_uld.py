"""ULD: the uniform loss and the combination rules (scoring, generation) on hand-made logits, the assistant builder on
several architectures, ULDModel's generation (cached == uncached, a uniform assistant changes nothing), saving and
loading, the trainer (no evaluated answer in its data, explicit augmentations), and clear errors."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_unlearn.data import load_tofu_split
from hf_unlearn.data.formatting import IGNORE_INDEX, tokenize_qa
from hf_unlearn.decoding.uld import (
    ULDModel,
    build_assistant,
    candidate_mask,
    generation_logits,
    logit_difference,
    resolve_num_layers,
    truncate_model,
)
from hf_unlearn.eval.generation import generate_answers
from hf_unlearn.eval.scoring import score_answers
from hf_unlearn.trainers.uld import ULDConfig, ULDTrainer, uld_loss, uniform_loss


QUESTIONS = ["Where was Voka Martorjor born?", "What genre does Voka Martorjor write?", "Who is Zanis?"]


# ----- pure functions ----------------------------------------------------------------------------------------------


def test_uniform_loss_is_kl_from_uniform_on_answer_positions():
    # position 0 predicts label 1 (scored), position 1 predicts label 2 (masked), position 2 predicts nothing
    logits = torch.tensor([[[math.log(2.0), 0.0], [5.0, -3.0], [0.0, 0.0]]])
    labels = torch.tensor([[-100, 1, -100]])
    # p = (2/3, 1/3): KL(U || p) = 0.5 log(0.5 / (2/3)) + 0.5 log(0.5 / (1/3)) = 0.5 log(1.125)
    assert uniform_loss(logits, labels).item() == pytest.approx(0.5 * math.log(1.125), rel=1e-6)
    assert uniform_loss(torch.zeros(2, 4, 7), torch.ones(2, 4, dtype=torch.long)).item() == pytest.approx(0.0, abs=1e-6)
    assert uld_loss(torch.tensor(2.0), torch.tensor(0.5), retain_weight=5.0).item() == pytest.approx(4.5)


def _logits_with_ratios(vocab: int, ratios: dict[int, float]) -> torch.Tensor:
    """Logits over `vocab` tokens: token 0 is the most likely (logit 20), token i has probability ratios[i] times
    token 0's, every other token a ratio of e^-20."""
    logits = torch.zeros(vocab)
    logits[0] = 20.0
    for token, ratio in ratios.items():
        logits[token] = 20.0 + math.log(ratio)
    return logits


def test_candidate_set_is_the_top_k_and_the_tokens_above_tau_times_the_maximum():
    tau = 0.01
    # |V| = 200: k = floor(0.01 * 200) = 2, so the second most likely token is a candidate even below tau * p_max
    rows = torch.stack([
        _logits_with_ratios(200, {1: 0.005, 2: 0.004}),  # {0, 1}: token 1 by top-k, token 2 is neither
        _logits_with_ratios(200, {1: 0.5, 2: 0.02, 3: 0.0101, 4: 0.0099}),  # {0, 1, 2, 3}: ratio >= tau
    ])
    mask = candidate_mask(rows, tau)
    assert mask[0].nonzero().flatten().tolist() == [0, 1]
    assert mask[1].nonzero().flatten().tolist() == [0, 1, 2, 3]
    # |V| = 50: k = 0, only the ratio rule applies
    assert candidate_mask(_logits_with_ratios(50, {1: 0.005, 2: 0.02}), tau).nonzero().flatten().tolist() == [0, 2]
    assert candidate_mask(rows, 0.0).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        candidate_mask(rows, 1.5)


def test_logit_difference_subtracts_the_assistant_on_candidates_only():
    target = _logits_with_ratios(200, {1: 0.5, 2: 0.004})[None]  # candidates {0, 1}
    assistant = torch.arange(200, dtype=torch.float32)[None] / 10
    combined = logit_difference(target, assistant, weight=0.75, threshold=0.01)
    expected = target.clone()
    expected[0, :2] -= 0.75 * assistant[0, :2]
    assert torch.equal(combined, expected)
    with pytest.raises(ValueError, match="same tokens and vocabulary"):
        logit_difference(target, assistant[:, :100])


def test_generation_never_promotes_a_token_outside_the_candidate_set():
    # |V| = 50, tau = 0.01: k = 0, candidates {0, 1} (ratios 1 and 0.5); token 2 (ratio 0.005) is not one.
    target = _logits_with_ratios(50, {1: 0.5, 2: 0.005})[None]
    assistant = torch.zeros(1, 50)
    assistant[0, :2] = 10.0  # the assistant raises both candidates alike (it is uniform on them)
    # Scoring keeps l_target outside C (the reference's forward): token 2 (14.7) now outranks 12.0 and 11.3 ...
    assert logit_difference(target, assistant, weight=0.8).argmax().item() == 2
    # ... generation (the reference's greedy search) excludes it: the target's own top token stays on top.
    decoded = generation_logits(target, assistant, weight=0.8)
    assert decoded.argmax().item() == 0
    assert torch.isinf(decoded[0, 2:]).all() and (decoded[0, 2:] < 0).all()
    assert torch.allclose(decoded[0, :2], target[0, :2] - 8.0)
    # with a uniform assistant, sampling draws from the target's distribution restricted to its candidates
    restricted = target[0].softmax(-1) * candidate_mask(target[0])
    assert torch.allclose(decoded[0].softmax(-1), restricted / restricted.sum(), atol=1e-6)


def test_assistant_depth_is_a_fraction_or_a_count():
    assert resolve_num_layers(0.25, 32) == 8
    assert resolve_num_layers(0.25, 4) == 1
    assert resolve_num_layers(0.01, 4) == 1
    assert resolve_num_layers(3, 4) == 3
    assert resolve_num_layers(4.0, 4) == 4
    for bad in (0, 2.5, 5, -1):
        with pytest.raises(ValueError, match="fraction in \\(0, 1\\) or a whole count"):
            resolve_num_layers(bad, 4)


# ----- the assistant builder ---------------------------------------------------------------------------------------


def _tiny(model_type: str, vocab_size: int = 96):
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        model_type, vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral", "olmo", "olmo2"])
def test_assistant_is_the_targets_first_layers_norm_and_head(model_type):
    target = _tiny(model_type)
    assistant = truncate_model(target, 0.5)
    assert len(target.model.layers) == 4 and target.config.num_hidden_layers == 4  # the target is untouched
    assert assistant.config.num_hidden_layers == 2 and len(assistant.model.layers) == 2
    assert not any(p.requires_grad for p in assistant.parameters())
    ids = torch.randint(0, 96, (2, 9))
    with torch.no_grad():
        hidden = target(input_ids=ids, output_hidden_states=True).hidden_states[2]  # output of the 2nd layer
        expected = target.lm_head(target.model.norm(hidden))
        assert torch.allclose(assistant(input_ids=ids).logits, expected, atol=1e-5)


def test_architectures_that_cannot_be_truncated_are_refused_clearly():
    from peft import LoraConfig, get_peft_model
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16))
    with pytest.raises(ValueError, match="decoder-only causal LM"):
        build_assistant(t5)
    peft_target = get_peft_model(_tiny("llama"), LoraConfig(r=2, target_modules="all-linear"))
    with pytest.raises(ValueError, match="merge_and_unload"):
        build_assistant(peft_target)


def test_assistant_trains_far_fewer_parameters_than_the_target(finetuned):
    target, _ = finetuned
    assistant = build_assistant(target, 0.25)
    trainable = sum(p.numel() for p in assistant.parameters() if p.requires_grad)
    assert all("lora_" in n for n, p in assistant.named_parameters() if p.requires_grad)
    assert 0 < trainable < 0.1 * sum(p.numel() for p in target.parameters())
    assert len(assistant.get_base_model().model.layers) == 1


# ----- ULDModel ----------------------------------------------------------------------------------------------------


def _uld(finetuned, weight=0.75, seed=0):
    """ULDModel over the finetuned model with an assistant whose LoRA weights are random (so it matters)."""
    target, tokenizer = finetuned
    assistant = build_assistant(target, 0.5)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in assistant.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return ULDModel(target, assistant.eval(), assistant_weight=weight).eval(), tokenizer


def _prompts(tokenizer):
    from hf_unlearn.data.formatting import encode_prompt, pad_examples

    prompts = [{"input_ids": encode_prompt(tokenizer, q)} for q in QUESTIONS]
    for p in prompts:
        p["attention_mask"] = [1] * len(p["input_ids"])
    batch = pad_examples(prompts, tokenizer.pad_token_id, padding_side="left")
    assert len(set(batch["attention_mask"].sum(-1).tolist())) > 1  # really left-padded
    return batch


def test_generation_with_both_caches_equals_generation_without(finetuned):
    uld, tokenizer = _uld(finetuned)
    batch = _prompts(tokenizer)
    kwargs = dict(max_new_tokens=16, pad_token_id=tokenizer.pad_token_id)
    cached = uld.generate(**batch, use_cache=True, **kwargs)
    uncached = uld.generate(**batch, use_cache=False, **kwargs)
    assert cached.shape[1] > batch["input_ids"].shape[1] + 4
    assert torch.equal(cached, uncached)
    sampled = [uld.generate(**batch, do_sample=True, temperature=1.5, top_k=20, use_cache=cache,
                            generator=torch.Generator().manual_seed(3), **kwargs) for cache in (True, False)]
    assert torch.equal(sampled[0], sampled[1])
    assert not torch.equal(sampled[0], cached)


class _ConstantAssistant(torch.nn.Module):
    """An assistant that knows nothing: the same logit `value` for every token at every position."""

    def __init__(self, vocab_size: int, value: float):
        super().__init__()
        self.head = torch.nn.Linear(1, vocab_size, bias=False)
        self.value = value

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        logits = torch.full((*input_ids.shape, self.head.out_features), self.value)
        return CausalLMOutputWithPast(logits=logits)


def test_a_uniform_assistant_leaves_generation_exactly_the_targets(finetuned):
    target, tokenizer = finetuned
    uld = ULDModel(target, _ConstantAssistant(target.config.vocab_size, 30.0), assistant_weight=0.8).eval()
    batch = _prompts(tokenizer)
    kwargs = dict(max_new_tokens=16, pad_token_id=tokenizer.pad_token_id, do_sample=False)
    # the case this guards: under the scoring rule the offset (-24 on every candidate) puts a non-candidate on top
    with torch.no_grad():
        scored = uld(**batch).logits[:, -1].argmax(-1)
        original = target(**batch).logits[:, -1].argmax(-1)
    assert (scored != original).any()
    assert torch.equal(uld.generate(**batch, use_cache=False, **kwargs), target.generate(**batch, **kwargs))


def test_with_weight_zero_it_generates_exactly_what_the_target_generates(finetuned):
    uld, tokenizer = _uld(finetuned, weight=0.0)
    batch = _prompts(tokenizer)
    kwargs = dict(max_new_tokens=16, pad_token_id=tokenizer.pad_token_id, do_sample=False)
    assert torch.equal(uld.generate(**batch, **kwargs), finetuned[0].generate(**batch, **kwargs))


@pytest.mark.quality
def test_the_assistant_changes_the_answers_and_scoring_with_shared_prompts_agrees(finetuned, train_seed):
    uld, tokenizer = _uld(finetuned, weight=1.0, seed=train_seed)
    rows = load_tofu_split_rows()
    answers = [r["answer"] for r in rows]
    questions = [r["question"] for r in rows]
    shared = score_answers(uld, tokenizer, questions, answers, share_prompts=True)
    flat = score_answers(uld, tokenizer, questions, answers, share_prompts=False)
    for a, b in zip(shared, flat):
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-4)
    target_scores = score_answers(finetuned[0], tokenizer, questions, answers)
    assert sum(sum(s["logprobs"]) for s in shared) < sum(sum(s["logprobs"]) for s in target_scores) - 1

    # Generation applies the difference: an assistant that knows what the target knows (all its layers, LoRA still
    # zero) at weight 2 turns the target's logits around on the candidate set (l_t - 2 l_t = -l_t), so every greedy
    # answer changes. (A random assistant changed none of these memorised answers on build seed 0, 1 of 6 on seed 1:
    # its offsets are smaller than the finetuned model's margins.)
    target = finetuned[0]
    mirror = ULDModel(target, build_assistant(target, target.config.num_hidden_layers).eval(), assistant_weight=2.0)
    original = generate_answers(target, tokenizer, questions, 16)
    assert all(a != b for a, b in zip(generate_answers(mirror.eval(), tokenizer, questions, 16), original))


def load_tofu_split_rows():
    from hf_unlearn.benchmarks.embedded import build_embedded_benchmark

    return load_tofu_split(build_embedded_benchmark().data_dir, "forget10").to_list()[:6]


def test_generate_refuses_what_it_does_not_do(finetuned):
    uld, tokenizer = _uld(finetuned)
    with pytest.raises(ValueError, match="num_beams"):
        uld.generate(**_prompts(tokenizer), num_beams=4)


def test_save_and_load_roundtrip(finetuned, embedded, tmp_path):
    uld, tokenizer = _uld(finetuned, weight=0.6)
    uld.candidate_threshold = 0.05
    uld.save_pretrained(tmp_path / "uld", tokenizer=tokenizer)
    assert (tmp_path / "uld" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "uld" / "model.safetensors").exists()  # the target is referred to, not copied
    loaded = ULDModel.from_pretrained(tmp_path / "uld").eval()  # the target loads from its saved path
    assert (loaded.assistant_weight, loaded.candidate_threshold) == (0.6, 0.05)
    batch = _prompts(tokenizer)
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, uld(**batch).logits, atol=1e-5)
    assert torch.equal(loaded.generate(**batch, max_new_tokens=8), uld.generate(**batch, max_new_tokens=8))


def test_mismatched_vocabularies_and_tokenizers_are_refused(finetuned, tmp_path):
    uld, tokenizer = _uld(finetuned)
    with pytest.raises(ValueError, match="share the target's tokenizer: the target has 1024 tokens, the assistant 96"):
        ULDModel(finetuned[0], _tiny("llama", vocab_size=96))
    uld.save_pretrained(tmp_path / "uld", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="share the target's tokenizer.*1024 tokens, the target has 96"):
        ULDModel.from_pretrained(tmp_path / "uld", target=_tiny("llama", vocab_size=96))
    other = AutoTokenizer.from_pretrained(tmp_path / "uld")
    other.add_tokens(["<not-in-the-assistant's-vocabulary>"])
    with pytest.raises(ValueError, match="another vocabulary"):
        ULDModel.from_pretrained(tmp_path / "uld", target=finetuned[0], tokenizer=other)
    with pytest.raises(FileNotFoundError, match="uld_config.json"):
        ULDModel.from_pretrained(tmp_path)


# ----- the trainer -------------------------------------------------------------------------------------------------


def _args(tmp_path, **kwargs):
    defaults = dict(output_dir=str(tmp_path / "out"), report_to="none", per_device_train_batch_size=4, bf16=False,
                    save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, learning_rate=3e-3, max_steps=2,
                    assistant_layers=1)
    return ULDConfig(**{**defaults, **kwargs})


def test_trainer_trains_only_the_assistant_adapter_and_saves_a_loadable_uld_model(embedded, tmp_path):
    target = AutoModelForCausalLM.from_pretrained(embedded.finetuned_dir)
    tokenizer = AutoTokenizer.from_pretrained(embedded.finetuned_dir)
    target_before = {n: p.detach().clone() for n, p in target.named_parameters()}
    forget = load_tofu_split(embedded.data_dir, "forget10_perturbed").select(range(8))
    retain = load_tofu_split(embedded.data_dir, "retain90").select(range(16))
    trainer = ULDTrainer(target, _args(tmp_path), forget_dataset=forget, retain_dataset=retain,
                         processing_class=tokenizer)
    assert set(trainer.train_dataset[0]) == {"forget", "retain"}  # no augmentation unless a column is named
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert all(torch.equal(p, target_before[n]) for n, p in target.named_parameters())
    assert any(not torch.equal(p, lora_before[n]) for n, p in trainer.model.named_parameters() if p.requires_grad)
    logged = [h for h in trainer.state.log_history if "forget_nll" in h]
    assert logged and "retain_uniform_kl" in logged[0]

    trainer.save_model(str(tmp_path / "model"))
    loaded = ULDModel.from_pretrained(tmp_path / "model").eval()
    batch = _prompts(tokenizer)
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, trainer.uld_model().eval()(**batch).logits, atol=1e-5)

    with pytest.raises(ValueError, match="retain_dataset"):
        ULDTrainer(AutoModelForCausalLM.from_pretrained(embedded.finetuned_dir), _args(tmp_path),
                   forget_dataset=forget, processing_class=tokenizer)


def _answer_tokens(example: dict) -> tuple[int, ...]:
    return tuple(t for t in example["labels"] if t != IGNORE_INDEX)


def test_the_assistant_never_trains_on_an_answer_the_evaluation_scores(embedded, finetuned, tmp_path):
    """TOFU's truth ratio scores `paraphrased_answer` and every `perturbed_answer` (hf_unlearn.eval.tofu); the
    assistant trained on them would inflate forget quality. With the evaluated split itself as forget data, none of
    those answers may reach its training rows."""
    target, tokenizer = finetuned
    forget = load_tofu_split(embedded.data_dir, "forget10_perturbed")
    retain = load_tofu_split(embedded.data_dir, "retain90")
    trainer = ULDTrainer(target, _args(tmp_path), forget_dataset=forget, retain_dataset=retain,
                         processing_class=tokenizer)
    trained = {_answer_tokens(view) for item in trainer.train_dataset.forget for view in item.values()}
    trained |= {_answer_tokens(example) for example in trainer.train_dataset.retain}
    scored = set()
    for split in ("forget10_perturbed", "retain_perturbed", "holdout10_perturbed"):
        for row in load_tofu_split(embedded.data_dir, split):
            for answer in [row["paraphrased_answer"], *row["perturbed_answer"]]:
                scored.add(_answer_tokens(tokenize_qa(tokenizer, row["question"], answer, 256)))
    assert len(trained) > len(forget) and len(scored) > 6 * len(forget)
    assert not trained & scored


def test_augmentations_come_from_named_columns_and_never_from_scored_answers(finetuned, tmp_path):
    target, tokenizer = finetuned
    rows = [{"question": q, "answer": f"{q} The answer is {i}.", "paraphrased_answer": f"It is {i}.",
             "perturbed_answer": [f"It is {i + 1}.", f"It is {i + 2}."],
             "rephrased": [f"{i} is the answer.", {"question": f"Tell me: {q}", "answer": f"It was {i}."}],
             "wrong": f"The answer is {i + 7}."}
            for i, q in enumerate(QUESTIONS)]
    retain = [{"question": "Who is Zanis?", "answer": "Zanis is a poet."}] * 4
    args = _args(tmp_path, positive_augmentation_column="rephrased", negative_augmentation_column="wrong",
                 max_steps=1, per_device_train_batch_size=3)
    trainer = ULDTrainer(target, args, forget_dataset=rows, retain_dataset=retain, processing_class=tokenizer)
    item = trainer.train_dataset[0]
    assert set(item) == {"forget", "positive_0", "positive_1", "negative_0", "negative_1", "retain"}
    expected = {_answer_tokens(tokenize_qa(tokenizer, QUESTIONS[0], "0 is the answer.", 256)),
                _answer_tokens(tokenize_qa(tokenizer, f"Tell me: {QUESTIONS[0]}", "It was 0.", 256))}
    assert {_answer_tokens(item["positive_0"]), _answer_tokens(item["positive_1"])} == expected
    assert _answer_tokens(item["negative_0"]) == _answer_tokens(item["negative_1"])  # one wrong answer, cycled
    trainer.train()
    assert trainer.state.global_step == 1

    for column in ("paraphrased_answer", "perturbed_answer"):
        with pytest.raises(ValueError, match="truth ratio scores.*leaks the test set"):
            _args(tmp_path, positive_augmentation_column=column)
    leaky = [dict(r, rephrased=r["perturbed_answer"][:1]) for r in rows]
    with pytest.raises(ValueError, match="repeats an answer the TOFU truth ratio scores"):
        ULDTrainer(target, args, forget_dataset=leaky, retain_dataset=retain, processing_class=tokenizer)
    with pytest.raises(ValueError, match="no column 'wrong'"):
        ULDTrainer(target, args, forget_dataset=[{k: v for k, v in r.items() if k != "wrong"} for r in rows],
                   retain_dataset=retain, processing_class=tokenizer)
