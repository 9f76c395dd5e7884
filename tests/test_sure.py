"""SURE: module saliency, the percentile mask, and training only the salient modules with every method."""

import copy

import pytest
import torch
from transformers import HfArgumentParser

from hf_unlearn.data import load_tofu_split, pad_examples, tokenize_qa
from hf_unlearn.trainers import METHODS, GradDiffConfig, GradDiffTrainer
from hf_unlearn.trainers.losses import nll
from hf_unlearn.trainers.sure import module_of, module_saliency, salient_modules


def test_module_of_groups_parameters_and_adapters_by_module():
    assert module_of("model.layers.0.mlp.down_proj.weight") == "model.layers.0.mlp.down_proj"
    assert module_of("base_model.model.model.layers.1.self_attn.q_proj.lora_B.default.weight") == (
        "base_model.model.model.layers.1.self_attn.q_proj"
    )
    assert module_of("model.layers.1.self_attn.q_proj.base_layer.weight") == "model.layers.1.self_attn.q_proj"


def test_salient_modules_keep_those_at_or_above_the_percentile():
    saliency = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    assert salient_modules(saliency, 50) == (["c", "d"], 2.5)
    assert salient_modules(saliency, 0)[0] == ["a", "b", "c", "d"]
    assert salient_modules(saliency, 99)[0] == ["d"]
    for bad in (100, -1):
        with pytest.raises(ValueError, match="sure_percentile"):
            salient_modules(saliency, bad)


def test_saliency_is_the_gradient_norm_of_the_forget_nll_and_leaves_the_model_as_it_was(finetuned, embedded):
    model, tokenizer = finetuned
    model = copy.deepcopy(model)
    rows = load_tofu_split(embedded.data_dir, "forget10").to_list()[:6]
    batch = pad_examples([tokenize_qa(tokenizer, r["question"], r["answer"]) for r in rows], tokenizer.pad_token_id)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    saliency = module_saliency(model, [batch])
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())

    loss = nll(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
    down, embed = model.model.layers[2].mlp.down_proj.weight, model.model.embed_tokens.weight
    grad_down, grad_embed = torch.autograd.grad(loss, [down, embed])
    assert saliency["model.layers.2.mlp.down_proj"] == pytest.approx(float(grad_down.norm()), rel=1e-4)
    # The tied output embedding is one parameter: one module, the embedding.
    assert saliency["model.embed_tokens"] == pytest.approx(float(grad_embed.norm()), rel=1e-4)
    assert "lm_head" not in saliency and len(saliency) == 4 * 9 + 2


def _args(config_class, tmp_path, **kwargs):
    defaults = dict(output_dir=str(tmp_path / "out"), report_to="none", per_device_train_batch_size=4, bf16=False,
                    save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, use_cpu=True, max_steps=2,
                    learning_rate=1e-3)
    return config_class(**{**defaults, **kwargs})


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_with_sure_trains_only_the_salient_modules(method, finetuned, embedded, tmp_path):
    model, tokenizer = finetuned
    model = copy.deepcopy(model)
    forget = load_tofu_split(embedded.data_dir, "forget10").select(range(8))
    retain = load_tofu_split(embedded.data_dir, "retain90").select(range(16))
    config_class, trainer_class = METHODS[method]
    trainer = trainer_class(model=model, args=_args(config_class, tmp_path, sure_percentile=75),
                            forget_dataset=forget, retain_dataset=retain, processing_class=tokenizer)
    # The trained model (ULD trains an assistant built from the model, every other method the model itself).
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    chosen = trainer.saliency_map
    assert chosen.selected and 0 < chosen.trained_fraction < 1
    assert all(chosen.saliency[name] >= chosen.threshold for name in chosen.selected)
    trainer.train()
    changed = {module_of(n) for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed, f"{method} with SURE changed nothing"
    assert changed <= set(chosen.selected), f"{method} changed non-salient modules {sorted(changed - set(chosen.selected))}"


def test_sure_flags_parse_from_the_command_line(tmp_path):
    config_class = GradDiffConfig
    (config,) = HfArgumentParser(config_class).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--sure_percentile", "80", "--retain_loss_type", "kl", "--use_cpu"]
    )
    assert isinstance(config, GradDiffConfig) and config.sure_percentile == 80 and config.retain_loss_type == "kl"
    with pytest.raises(ValueError, match="sure_percentile"):
        config_class(output_dir=str(tmp_path), sure_percentile=100)


def test_sure_on_a_lora_model_ranks_the_adapted_modules(finetuned, embedded, tmp_path):
    from peft import LoraConfig

    model, tokenizer = finetuned
    forget = load_tofu_split(embedded.data_dir, "forget10").select(range(8))
    retain = load_tofu_split(embedded.data_dir, "retain90").select(range(16))
    config_class, trainer_class = GradDiffConfig, GradDiffTrainer
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = trainer_class(model=copy.deepcopy(model), args=_args(config_class, tmp_path, sure_percentile=50),
                            forget_dataset=forget, retain_dataset=retain, processing_class=tokenizer, peft_config=lora)
    names = set(trainer.saliency_map.saliency)
    assert "base_model.model.model.layers.0.mlp.down_proj" in names and len(names) == 28
    trainable = {module_of(n) for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == set(trainer.saliency_map.selected)
