"""Quantization relapse on the embedded benchmark: GradDiff at a small learning rate vs. SURE at a larger one, both
evaluated at full precision and with bitsandbytes NF4 on CPU.

Measured here (benchmarks/relapse_sure.py prints the full table): on the tiny embedded model, NF4 brings back only a
few percent of what either method forgot; the relapse of the paper (most of the forgotten knowledge back after
4-bit on 7B models) does not appear at this scale, so these tests pin what does hold instead of a direction that
the data do not show."""

import copy

import pytest

from hf_unlearn.data import load_tofu_split
from hf_unlearn.eval.quantization import evaluate_relapse
from hf_unlearn.trainers import GradDiffConfig, GradDiffTrainer

pytestmark = [pytest.mark.slow, pytest.mark.quality]
pytest.importorskip("bitsandbytes")


def _unlearn(model, tokenizer, embedded, tmp_path, learning_rate, sure_percentile=None, seed=0):
    config_class, trainer_class = GradDiffConfig, GradDiffTrainer
    extra = {}
    if sure_percentile is not None:
        extra["sure_percentile"] = sure_percentile
    args = config_class(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=8, bf16=False, save_strategy="no",
        logging_steps=1000, disable_tqdm=True, seed=seed, use_cpu=True, learning_rate=learning_rate, max_steps=40,
        # KL over the answer-predicting positions, the definition these thresholds were measured with (with the
        # default, open-unlearning's KL over every position, a run kept forget_prob at 0.93 of 0.997 after 40 steps)
        lr_scheduler_type="constant", retain_loss_type="kl", kl_positions="answer", **extra,
    )
    trainer = trainer_class(model=copy.deepcopy(model), args=args, processing_class=tokenizer,
                            forget_dataset=load_tofu_split(embedded.data_dir, "forget10"),
                            retain_dataset=load_tofu_split(embedded.data_dir, "retain90"))
    trainer.train()
    return trainer.model.eval(), getattr(trainer, "saliency_map", None)


@pytest.fixture(scope="module")
def relapses(finetuned, embedded, tmp_path_factory):
    from conftest import TRAIN_SEED

    model, tokenizer = finetuned
    kwargs = {"precisions": ["nf4"], "original": model, "max_items": 24, "max_new_tokens": 32}
    plain, _ = _unlearn(model, tokenizer, embedded, tmp_path_factory.mktemp("gd"), 1e-4, seed=TRAIN_SEED)
    grad_diff = evaluate_relapse(plain, tokenizer, embedded.data_dir, label="grad_diff", **kwargs)
    sure_model, saliency = _unlearn(model, tokenizer, embedded, tmp_path_factory.mktemp("sure"), 2e-4, sure_percentile=90,
                                    seed=TRAIN_SEED)
    sure = evaluate_relapse(sure_model, tokenizer, embedded.data_dir, label="sure",
                            original_evaluations=grad_diff["evaluations"]["original"], **kwargs)
    return grad_diff, sure, saliency


def test_both_methods_forget_at_full_precision_with_similar_utility(relapses):
    grad_diff, sure, _ = relapses
    original = grad_diff["evaluations"]["original"]["full"]
    plain, salient = grad_diff["evaluations"]["grad_diff"]["full"], sure["evaluations"]["sure"]["full"]
    for unlearned in (plain, salient):
        assert unlearned["forget_prob"] < 0.8 * original["forget_prob"]
        assert unlearned["forget_rougeL_recall"] < 0.95 * original["forget_rougeL_recall"]
    assert abs(plain["model_utility"] - salient["model_utility"]) < 0.05


def test_nf4_brings_back_little_of_the_forgotten_knowledge_on_the_tiny_model(relapses):
    grad_diff, sure, _ = relapses
    for relapse in (grad_diff, sure):
        for metric, share in relapse["recovered"]["nf4"].items():
            assert share is not None and share < 0.25, (relapse["label"], metric, share)
    # The original model keeps what it memorised at 4 bits: a relapse would have knowledge to come back to.
    original = grad_diff["evaluations"]["original"]
    assert original["nf4"]["forget_rougeL_recall"] > 0.95 * original["full"]["forget_rougeL_recall"]


def test_sure_concentrates_its_update_in_few_modules(relapses):
    grad_diff, sure, saliency = relapses
    assert 0 < saliency.trained_fraction < 0.5
    plain_moved = grad_diff["changed_weights"]["nf4"]
    sure_moved = sure["changed_weights"]["nf4"]
    # GradDiff changes every weight a little; SURE changes only the salient modules' weights.
    assert plain_moved["changed_full_precision"] > 0.99
    assert sure_moved["changed_full_precision"] < 0.5
    assert sure_moved["changed_code"] < plain_moved["changed_code"]
