"""Quantization relapse on the embedded benchmark: GradDiff at a small learning rate vs. SURE at a larger one, both
evaluated at full precision and with bitsandbytes NF4 on CPU.

Measured here (benchmarks/relapse_sure.py prints the full table): on the tiny embedded model, NF4 brings back only a
few percent of what either method forgot; the relapse of the paper (most of the forgotten knowledge back after
4-bit on 7B models) does not appear at this scale, so these tests pin what does hold instead of a direction that
the data do not show."""

import copy
import json

import pytest

from hf_unlearn.data import load_tofu_split
from hf_unlearn.eval.relapse import evaluate_relapse
from hf_unlearn.trainers import GradDiffConfig, GradDiffTrainer


pytestmark = [pytest.mark.slow, pytest.mark.quality]
pytest.importorskip("bitsandbytes")

# Both methods train until the forget rows' answer probability is at most STOP_AT_FORGET_PROB (at most MAX_STEPS), so
# they are compared at the same amount of forgetting. With a fixed 40 steps, SURE at 2e-4 forgot anywhere from forget
# prob 0.24 to 0.66 (a cliff), and its utility differed from GradDiff's by up to 0.088 on build seed 1 (build seeds 0
# and 1 x training seeds 0-2). Stopped at 0.5, on the same 6 runs: utility gap 0.004-0.037, forget prob 0.40-0.61 and
# forget ROUGE-L 0.58-0.80 of the original's ~1.0 on 24 evaluated items, for both methods.
STOP_AT_FORGET_PROB, MAX_STEPS = 0.5, 80


def _unlearn(model, tokenizer, embedded, tmp_path, learning_rate, sure_percentile=None, seed=0,
             stop_at_forget_prob=STOP_AT_FORGET_PROB, max_steps=MAX_STEPS):
    config_class, trainer_class = GradDiffConfig, GradDiffTrainer
    extra = {}
    if sure_percentile is not None:
        extra["sure_percentile"] = sure_percentile
    args = config_class(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=8, bf16=False, save_strategy="no",
        logging_steps=1000, disable_tqdm=True, seed=seed, use_cpu=True, learning_rate=learning_rate, max_steps=max_steps,
        stop_at_forget_prob=stop_at_forget_prob, stop_check_steps=2,
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
    for relapse in (grad_diff, sure):  # the numbers the thresholds below were set from, shown with -s
        print(relapse["label"], json.dumps({"full": relapse["evaluations"][relapse["label"]]["full"],
                                            "recovered": relapse["recovered"]}))
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
    # Share of what was forgotten that NF4 brings back, both methods stopped at forget prob 0.5 (build seeds 0 and 1 x
    # seeds 0-2): below 0.25 for both metrics on every run but one, build seed 1 x seed 1, where SURE got back 0.49 of
    # its 0.25 drop in forget ROUGE-L (+0.12 ROUGE-L; forget prob share 0.06 there). When little of the generations was
    # forgotten a small rise is a large share, so the ROUGE-L share is held below 0.6.
    limits = {"forget_prob": 0.25, "forget_rougeL_recall": 0.6}
    for relapse in (grad_diff, sure):
        for metric, share in relapse["recovered"]["nf4"].items():
            assert share is not None and share < limits[metric], (relapse["label"], metric, share)
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
