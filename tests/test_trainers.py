"""UnlearnTrainer machinery on the embedded benchmark: PEFT + gradient checkpointing, saving and reloading,
resuming, the reference model, and clear errors."""

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from hf_unlearn.data import load_tofu_split
from hf_unlearn.trainers import (
    FLATConfig,
    FLATTrainer,
    GradDiffConfig,
    GradDiffTrainer,
    NPOConfig,
    NPOTrainer,
    RMUConfig,
    RMUTrainer,
    SimNPOConfig,
    SimNPOTrainer,
)


def _load(embedded):
    return AutoModelForCausalLM.from_pretrained(embedded.finetuned_dir), AutoTokenizer.from_pretrained(
        embedded.finetuned_dir
    )


def _args(config_class, tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"), report_to="none", per_device_train_batch_size=8, bf16=False,
        save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
    )
    return config_class(**{**defaults, **kwargs})


def _splits(embedded, n_forget=16, n_retain=64):
    forget = load_tofu_split(embedded.data_dir, "forget10").select(range(n_forget))
    retain = load_tofu_split(embedded.data_dir, "retain90").select(range(n_retain))
    return forget, retain


def test_lora_flat_with_gradient_checkpointing_saves_an_adapter_that_reloads(embedded, tmp_path):
    model, tokenizer = _load(embedded)
    forget, _ = _splits(embedded)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    args = _args(FLATConfig, tmp_path, learning_rate=1e-3, max_steps=4, gradient_checkpointing=True)
    trainer = FLATTrainer(model=model, args=args, forget_dataset=forget, processing_class=tokenizer, peft_config=lora)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if "lora_B" in n and not torch.equal(p, before[n])]
    assert changed, "LoRA weights received no gradient under gradient checkpointing"
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()

    batch = tokenizer(["Question: Where was Ann born?\nAnswer:"], return_tensors="pt")
    trainer.model.eval()
    with torch.no_grad():
        trained_logits = trainer.model(**batch).logits
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(embedded.finetuned_dir),
                                         tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, trained_logits, atol=1e-5)
        base_logits = AutoModelForCausalLM.from_pretrained(embedded.finetuned_dir)(**batch).logits
    assert not torch.allclose(base_logits, trained_logits, atol=1e-4)


def test_resume_from_checkpoint_reaches_the_same_model_as_an_uninterrupted_run(embedded, tmp_path):
    forget, retain = _splits(embedded)

    class StopAt(TrainerCallback):  # a crash right after the checkpoint at step 3
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 3

    def run(output, resume=None, callbacks=None):
        model, tokenizer = _load(embedded)
        args = _args(GradDiffConfig, tmp_path, output_dir=str(tmp_path / output), learning_rate=5e-4,
                     num_train_epochs=3, save_strategy="steps", save_steps=3)
        trainer = GradDiffTrainer(model=model, args=args, forget_dataset=forget, retain_dataset=retain,
                                  processing_class=tokenizer, callbacks=callbacks)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run("full")  # 2 steps an epoch: the checkpoint at step 3 is in the middle of epoch 2
    interrupted = run("interrupted", callbacks=[StopAt()])
    resumed = run("interrupted", resume=str(tmp_path / "interrupted" / "checkpoint-3"))
    final = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h][-1]  # noqa: E731
    assert final(resumed) == pytest.approx(final(full), rel=1e-5)
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert interrupted.state.global_step == 3


def test_peft_reference_is_the_adapter_disabled_base(embedded, tmp_path):
    model, tokenizer = _load(embedded)
    forget, retain = _splits(embedded, 8, 8)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    trainer = NPOTrainer(model=model, args=_args(NPOConfig, tmp_path), forget_dataset=forget, retain_dataset=retain,
                         processing_class=tokenizer, peft_config=lora)
    assert trainer.ref_model is None
    batch = next(iter(trainer.get_train_dataloader()))["forget"]
    base = AutoModelForCausalLM.from_pretrained(embedded.finetuned_dir)
    with torch.no_grad():
        expected = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        adapted = trainer.forward(trainer.model, batch).logits
    assert torch.allclose(trainer.reference_forward(trainer.model, batch).logits, expected, atol=1e-5)
    assert not torch.allclose(adapted, expected, atol=1e-4)  # the adapter is back on outside the context


def test_rmu_on_a_32_layer_model_steers_layer_7_and_trains_the_down_projections_of_5_to_7(embedded, tmp_path):
    # The WMDP release's defaults (rmu/unlearn.py: layer_id 7, layer_ids 5,6,7, param_ids 6, steering_coeffs 20,
    # alpha 100); the old default steered layer 32 // 4 = 8 and trained 6-8, with an adaptive c and alpha 1.
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded.finetuned_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=32,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    forget, retain = _splits(embedded, 4, 4)
    args = _args(RMUConfig, tmp_path)
    assert (args.steering_coeff, args.alpha, args.steering_scale) == (20.0, 100.0, None)
    trainer = RMUTrainer(model=model, args=args, forget_dataset=forget, retain_dataset=retain,
                         processing_class=tokenizer)
    assert trainer.layer == 7
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == {f"model.layers.{i}.mlp.down_proj.weight" for i in (5, 6, 7)}
    assert trainer.steering_vector.norm().item() == pytest.approx(20.0, rel=1e-5)
    assert (trainer.steering_vector >= 0).all()  # a direction drawn from U[0, 1)^d, as torch.rand in the reference
    batch = next(iter(trainer.get_train_dataloader()))
    loss, metrics = trainer.unlearning_loss(trainer.model, batch)
    assert torch.isfinite(loss) and metrics["retain_rmu"].item() == pytest.approx(0.0, abs=1e-6)  # nothing trained yet


def test_simnpo_with_a_kl_retain_term_keeps_a_reference(embedded, tmp_path):
    model, tokenizer = _load(embedded)
    forget, retain = _splits(embedded, 4, 4)
    plain = SimNPOTrainer(model=model, args=_args(SimNPOConfig, tmp_path), forget_dataset=forget,
                          retain_dataset=retain, processing_class=tokenizer)
    assert plain.ref_model is None
    kl = SimNPOTrainer(model=model, args=_args(SimNPOConfig, tmp_path, retain_loss_type="kl"), forget_dataset=forget,
                       retain_dataset=retain, processing_class=tokenizer)
    assert kl.ref_model is not None
    batch = next(iter(kl.get_train_dataloader()))
    _, metrics = kl.unlearning_loss(kl.model, batch)
    assert metrics["retain_loss"].item() == pytest.approx(0.0, abs=1e-6)  # the model is still its reference


def test_full_model_reference_is_a_frozen_copy(embedded, tmp_path):
    model, tokenizer = _load(embedded)
    forget, retain = _splits(embedded, 8, 8)
    trainer = NPOTrainer(model=model, args=_args(NPOConfig, tmp_path), forget_dataset=forget, retain_dataset=retain,
                         processing_class=tokenizer)
    assert trainer.ref_model is not model
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())


def test_bad_input_fails_before_training(embedded, tmp_path):
    model, tokenizer = _load(embedded)
    forget, retain = _splits(embedded, 4, 4)
    with pytest.raises(ValueError, match="needs a retain_dataset"):
        GradDiffTrainer(model=model, args=_args(GradDiffConfig, tmp_path), forget_dataset=forget,
                        processing_class=tokenizer)
    with pytest.raises(ValueError, match="needs a forget_dataset"):
        FLATTrainer(model=model, args=_args(FLATConfig, tmp_path), processing_class=tokenizer)
    with pytest.raises(ValueError, match="lacks \\['answer'\\]"):
        FLATTrainer(model=model, args=_args(FLATConfig, tmp_path), forget_dataset=[{"question": "q"}],
                    processing_class=tokenizer)
    with pytest.raises(TypeError, match="needs a FLATConfig"):
        FLATTrainer(model=model, args=_args(GradDiffConfig, tmp_path), forget_dataset=forget,
                    processing_class=tokenizer)
    with pytest.raises(ValueError, match="Unknown divergence"):
        _args(FLATConfig, tmp_path, divergence="hellinger")
    with pytest.raises(ValueError, match="retain_loss_type"):
        _args(GradDiffConfig, tmp_path, retain_loss_type="mse")
    with pytest.raises(ValueError, match="kl_positions"):
        _args(NPOConfig, tmp_path, retain_loss_type="kl", kl_positions="prompt")
    with pytest.raises(ValueError, match="stop_at_forget_prob must be in \\(0, 1\\)"):
        _args(FLATConfig, tmp_path, stop_at_forget_prob=1.5)
    with pytest.raises(ValueError, match="stop_check_steps must be at least 1"):
        _args(FLATConfig, tmp_path, stop_at_forget_prob=0.3, stop_check_steps=0)


def _answer_probability_by_hand(model, tokenizer, rows) -> float:
    """Mean over rows of exp(-mean NLL of the answer tokens), one row at a time with a plain forward pass."""
    from hf_unlearn.data import tokenize_qa

    probabilities = []
    with torch.no_grad():
        for row in rows:
            example = tokenize_qa(tokenizer, row["question"], row["answer"])
            input_ids, labels = torch.tensor([example["input_ids"]]), torch.tensor(example["labels"])
            log_probs = torch.log_softmax(model(input_ids=input_ids).logits[0, :-1].double(), dim=-1)
            targets = labels[1:]
            scored = log_probs[torch.arange(len(targets)), targets.clamp(min=0)][targets != -100]
            probabilities.append(float(torch.exp(scored.mean())))
    return sum(probabilities) / len(probabilities)


def test_training_stops_once_the_forget_set_is_forgotten(embedded, tmp_path):
    model, tokenizer = _load(embedded)
    forget, _ = _splits(embedded)
    before = _answer_probability_by_hand(model.eval(), tokenizer, forget.to_list())
    args = _args(FLATConfig, tmp_path, learning_rate=3e-4, num_train_epochs=30, per_device_train_batch_size=4,
                 stop_at_forget_prob=0.5, stop_check_steps=2, logging_steps=100)
    trainer = FLATTrainer(model=model, args=args, forget_dataset=forget, processing_class=tokenizer)
    trainer.train()
    stopped = trainer.stopped_when_forgotten
    assert before > 0.9 and stopped is not None and stopped["step"] % 2 == 0
    assert trainer.state.global_step == stopped["step"] < trainer.state.max_steps  # ended early, at that check
    checks = trainer.callback_handler.callbacks[-1].checks
    assert [step for step, _ in checks] == list(range(2, stopped["step"] + 1, 2))
    assert all(p > 0.5 for _, p in checks[:-1]) and checks[-1][1] == stopped["forget_prob"] <= 0.5
    after = _answer_probability_by_hand(trainer.model.eval(), tokenizer, forget.to_list())
    assert after == pytest.approx(stopped["forget_prob"], abs=1e-5)
