"""Layer-constrained unlearning (SHA256): the pure loss and adaptive alpha, the frozen-parameter guarantee, forgetting
with utility kept on the embedded benchmark, the best checkpoint, and the adaptive state across resume."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_unlearn.data.tofu import load_tofu_split
from hf_unlearn.eval.generation import generate_answers
from hf_unlearn.eval.rouge import rouge_l_recall
from hf_unlearn.trainers.layer_constrained import (
    AdaptiveAlphaCallback,
    LayerConstrainedConfig,
    LayerConstrainedTrainer,
    adaptive_alpha,
    layer_constrained_loss,
)


def config(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, report_to=[], use_cpu=True,
                    disable_tqdm=True, save_strategy="no", seed=0, logging_steps=1, learning_rate=1e-3, lr_scheduler_type="constant")
    return LayerConstrainedConfig(**(settings | overrides))


def mean_rouge(model, tokenizer, rows):
    answers = generate_answers(model, tokenizer, [r["question"] for r in rows], max_new_tokens=24)
    return float(np.mean(rouge_l_recall(answers, [r["answer"] for r in rows])))


# ----- pure functions ----------------------------------------------------------------------------------------------
def test_loss_is_ascent_on_forget_plus_weighted_retain():
    loss = layer_constrained_loss(torch.tensor(2.0), torch.tensor(0.5), alpha=1.5)
    assert loss.item() == pytest.approx(-2.0 + 0.75)


def test_adaptive_alpha_follows_the_formula():
    # clip(0.3 * 6^Delta + 0.8, 1.2, 2.8)
    assert adaptive_alpha(1.0, 1.0) == pytest.approx(1.2)  # 1.1 clipped up
    assert adaptive_alpha(0.5, 1.0) == pytest.approx(1.2)  # loss fell: still the floor
    assert adaptive_alpha(1.5, 1.0) == pytest.approx(0.3 * math.sqrt(6) + 0.8)  # 1.5348
    assert adaptive_alpha(1.8, 1.0) == pytest.approx(0.3 * 6**0.8 + 0.8)  # 2.0937
    assert adaptive_alpha(3.0, 1.0) == pytest.approx(2.8)  # 11.6 clipped down
    assert adaptive_alpha(3.0, 1.0, alpha_max=2.3) == pytest.approx(2.3)
    assert adaptive_alpha(1.0, 0.0, scale=1.0, base=2.0, offset=0.0, alpha_min=0.0) == pytest.approx(2.0)


def test_schedule_records_the_first_epoch_then_adapts(tmp_path):
    args = config(tmp_path)
    schedule = AdaptiveAlphaCallback()
    assert schedule.alpha(1.0, 0.2, args) == (1.2, 0.0)
    assert schedule.alpha(3.0, 0.9, args) == (1.2, 0.0)
    alpha, rise = schedule.alpha(2.5, 1.0, args)  # baseline = mean(1, 3) = 2
    assert schedule.baseline == 2.0 and rise == pytest.approx(0.5)
    assert alpha == pytest.approx(0.3 * math.sqrt(6) + 0.8)
    schedule.alpha(9.0, 1.5, args)
    assert schedule.baseline == 2.0  # frozen after the first epoch
    with pytest.raises(RuntimeError, match="baseline"):
        AdaptiveAlphaCallback().alpha(1.0, 1.0, args)


def test_config_validates(tmp_path):
    with pytest.raises(ValueError, match="module_kind"):
        config(tmp_path, module_kind="embeddings")
    with pytest.raises(ValueError, match="alpha_min"):
        config(tmp_path, alpha_min=3.0)


# ----- training on the embedded benchmark --------------------------------------------------------------------------
@pytest.fixture
def data(embedded):
    return {name: load_tofu_split(embedded.data_dir, name) for name in ("forget10", "retain90", "retain_perturbed")}


def fresh_model(embedded):
    return AutoModelForCausalLM.from_pretrained(embedded.finetuned_dir)


@pytest.mark.quality
def test_only_traced_layers_change_and_the_model_forgets(embedded, finetuned, data, tmp_path, train_seed):
    _, tokenizer = finetuned
    model = fresh_model(embedded)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forget_rows, retain_rows = data["forget10"].to_list(), data["retain_perturbed"].to_list()
    forget_before, retain_before = mean_rouge(model, tokenizer, forget_rows), mean_rouge(model, tokenizer, retain_rows)

    # no layers given: the trainer traces the forget set and trains the suggested layers' MLPs, until forgotten.
    # The retain weight is the embedded setting (alpha clipped to [16, 24], `pipeline.EMBEDDED_DEFAULTS`): the tiny
    # model's retain CE is ~0.003, so the paper's alpha never leaves its floor 1.2, and at 1.2 the retain answers
    # went as fast as the forget ones (build c2ab539173de2a8d, seeds 0-2, stopped at forget prob 0.2: forget ROUGE-L
    # 0.45-0.64 x with retain 0.83-0.92 x; at 0.05: forget 0.51-0.53 x, retain 0.85-0.93 x).
    args = config(tmp_path, learning_rate=5e-4, num_train_epochs=60, stop_at_forget_prob=0.02, alpha_min=16.0,
                  alpha_max=24.0, trace_num_facts=16, trace_num_samples=3, seed=train_seed)
    trainer = LayerConstrainedTrainer(model, args, forget_dataset=data["forget10"], retain_dataset=data["retain90"],
                                      processing_class=tokenizer)
    assert trainer.traced is not None and args.layers == trainer.traced.suggested_layers
    assert trainer.trainable_modules == [f"model.layers.{i}.mlp" for i in args.layers]
    trainer.train()

    chosen = tuple(f"{name}." for name in trainer.trainable_modules)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(chosen) for k in changed)  # everything else is bit-identical
    assert {k for k in before if k.startswith(chosen) and k.endswith("weight")} <= changed

    model.eval()
    forget_after, retain_after = mean_rouge(model, tokenizer, forget_rows), mean_rouge(model, tokenizer, retain_rows)
    assert forget_before > 0.95 and retain_before > 0.95
    # measured on build seed 0 (c2ab539173de2a8d) x seeds 0-2: forget 0.38/0.44/0.41 x before, retain 0.98/0.97/0.98 x
    # before (151/151/179 steps); build seed 1 (ae0d6dc7f0affece): forget 0.17/0.22/0.08 x, retain 0.99/0.97/0.89 x
    # (148/162/147 steps). With [8, 12] build seed 1 x seed 2 kept retain at 0.78 x only.
    assert trainer.stopped_when_forgotten is not None and trainer.stopped_when_forgotten["forget_prob"] <= 0.02
    assert forget_after < 0.6 * forget_before  # forgotten
    assert retain_after > 0.85 * retain_before  # utility kept
    alphas = [log["alpha"] for log in trainer.state.log_history if "alpha" in log]
    assert alphas and all(16.0 <= a <= 24.0 for a in alphas)


def test_explicit_modules_and_errors(embedded, finetuned, data, tmp_path):
    _, tokenizer = finetuned
    model = fresh_model(embedded)
    args = config(tmp_path, trainable_modules=["layers.2.self_attn.o_proj"])
    trainer = LayerConstrainedTrainer(model, args, forget_dataset=data["forget10"], retain_dataset=data["retain90"],
                                      processing_class=tokenizer)
    assert trainer.trainable_modules == ["model.layers.2.self_attn.o_proj"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["model.layers.2.self_attn.o_proj.weight"]
    with pytest.raises(ValueError, match="out of range"):
        LayerConstrainedTrainer(fresh_model(embedded), config(tmp_path, layers=[7]), forget_dataset=data["forget10"],
                                retain_dataset=data["retain90"], processing_class=tokenizer)
    with pytest.raises(ValueError, match="No module"):
        LayerConstrainedTrainer(fresh_model(embedded), config(tmp_path, trainable_modules=["mlp.nothing"]),
                                forget_dataset=data["forget10"], retain_dataset=data["retain90"],
                                processing_class=tokenizer)


def test_best_checkpoint_and_adaptive_state_survive_resume(embedded, finetuned, data, tmp_path):
    _, tokenizer = finetuned
    evaluation = dict(eval_data=str(embedded.data_dir), eval_strategy="epoch", eval_max_items=8,
                      eval_max_new_tokens=16, save_strategy="epoch", load_best_model_at_end=True)
    args = config(tmp_path, layers=[0], num_train_epochs=3, learning_rate=3e-3, **evaluation)
    trainer = LayerConstrainedTrainer(fresh_model(embedded), args, forget_dataset=data["forget10"],
                                      retain_dataset=data["retain90"], processing_class=tokenizer)
    trainer.train()
    baseline = trainer.alpha_schedule.baseline
    assert baseline is not None and baseline > 0

    # the checkpoint with the largest selection score is the model left at the end
    scores = {log["epoch"]: log["eval_selection_score"] for log in trainer.state.log_history if "eval_selection_score" in log}
    assert len(scores) == 3 and trainer.state.best_metric == pytest.approx(max(scores.values()))
    best = Path(trainer.state.best_model_checkpoint)
    best_state = AutoModelForCausalLM.from_pretrained(best).state_dict()
    assert all(torch.equal(v, best_state[k]) for k, v in trainer.model.state_dict().items())

    # every checkpoint after the first epoch carries the adaptive state; resuming restores it
    saved = json.loads((Path(args.output_dir) / "checkpoint-12" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["AdaptiveAlphaCallback"]["attributes"]["baseline_count"] == 6
    resumed_args = config(tmp_path, layers=[0], num_train_epochs=3, learning_rate=3e-3, output_dir=args.output_dir)
    resumed = LayerConstrainedTrainer(fresh_model(embedded), resumed_args, forget_dataset=data["forget10"],
                                      retain_dataset=data["retain90"], processing_class=tokenizer)
    resumed.train(resume_from_checkpoint=str(Path(args.output_dir) / "checkpoint-12"))
    assert resumed.alpha_schedule.baseline == pytest.approx(baseline)
    after_resume = [log for log in resumed.state.log_history if "alpha" in log and log["epoch"] > 2]
    assert after_resume and all(log["alpha"] >= 1.2 for log in after_resume)
