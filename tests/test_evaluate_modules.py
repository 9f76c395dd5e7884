"""hf_unlearn's metrics as `evaluate` modules: each loads offline by path and gives the library function's value."""

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_unlearn import metrics
from hf_unlearn.eval.mia import attack_scores, mia_auc, mia_aucs, privleak
from hf_unlearn.eval.rouge import rouge_l_f1_unstemmed, rouge_l_recall
from hf_unlearn.eval.tofu import (
    forget_quality,
    forget_truth_ratio_statistic,
    retain_truth_ratio_statistic,
    truth_ratio,
)


REPO = Path(__file__).resolve().parents[1]

# Hand-made inputs, one set per module.
SCORES, LABELS = [3.0, 2.0, 1.0, 2.0, 0.0], [1, 1, 1, 0, 0]
TRUTH_RATIOS, REFERENCE_TRUTH_RATIOS = [0.3, 0.9, 1.4, 2.2], [0.5, 1.1, 2.5, 2.9]
PARAPHRASED_NLL, PERTURBED_NLL = [1.0, 2.0, 0.5], [[2.0, 3.0], [1.0], [0.5, 0.7, 2.5]]
GENERATIONS = ["the cat sat on a mat", "Paris is in France", "running dogs"]
ANSWERS = ["the cat sat on the mat", "the capital of France is Paris", "a dog runs"]
# Two members then two non-members; the first member's last token (its EOS) is its least likely one, so Min-K%
# differs with and without it.
TOKENS = {
    "token_logprobs": [[-0.1, -0.3, -0.2, -0.1, -5.0], [-0.2, -0.4, -0.3, -0.05], [-1.0, -1.2, -0.9, -0.8, -0.05], [-1.5, -0.7, -2.0, -0.03]],
    "token_zscores": [[0.5, 0.1, 0.3, 0.6, -4.0], [0.3, -0.2, 0.1, 1.2], [-0.5, -0.9, -0.4, -0.3, 1.1], [-0.8, 0.0, -1.2, 1.3]],
    "texts": ["alpha beta", "gamma delta epsilon", "zeta eta", "theta iota kappa"],
    "references": [1, 1, 0, 0],
}

# Run in a fresh interpreter: offline, with an empty Hugging Face cache and no socket able to connect.
OFFLINE_SCRIPT = """
import json, socket, sys
from pathlib import Path

def no_network(*args, **kwargs):
    raise OSError("network access during an offline metric load")

socket.socket.connect = no_network
socket.create_connection = no_network

import evaluate
from hf_unlearn import metrics

inputs = json.loads(sys.argv[1])
out = {
    "privleak": metrics.load("privleak").compute(predictions=[0.9], references=[0.6]),
    "privleak_by_path": evaluate.load(metrics.metric_path("privleak")).compute(predictions=[0.9], references=[0.6]),
    "privleak_by_folder": evaluate.load(str(Path(metrics.metric_path("privleak")).parent)).compute(predictions=[0.9], references=[0.6]),
    "privleak_hand": metrics.load("privleak").compute(predictions=[inputs["auc_model"]], references=[inputs["auc_retain"]]),
    "mia_auc": metrics.load("mia_auc").compute(predictions=inputs["scores"], references=inputs["labels"]),
    "mia_attacks": metrics.load("mia_attacks").compute(**inputs["tokens"]),
    "mia_attacks_all_tokens": metrics.load("mia_attacks").compute(**inputs["tokens"], ends_with_eos=False),
    "forget_quality": metrics.load("forget_quality").compute(predictions=inputs["tr"], references=inputs["ref_tr"]),
    "truth_ratio_forget": metrics.load("truth_ratio").compute(paraphrased_nll=inputs["para"], perturbed_nll=inputs["pert"]),
    "truth_ratio_retain": metrics.load("truth_ratio").compute(paraphrased_nll=inputs["para"], perturbed_nll=inputs["pert"],
                                                             statistic="retain"),
    "rouge_tofu": metrics.load("rouge_l").compute(predictions=inputs["gen"], references=inputs["ans"]),
    "rouge_muse": metrics.load("rouge_l", "muse").compute(predictions=inputs["gen"], references=inputs["ans"]),
}
print("RESULTS " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def offline_results(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    inputs = {
        "auc_model": mia_auc([0.9, 0.7, 0.4], [0.8, 0.3]),
        "auc_retain": mia_auc([0.5, 0.2, 0.35], [0.4, 0.3]),
        "scores": SCORES, "labels": LABELS, "tokens": TOKENS, "tr": TRUTH_RATIOS, "ref_tr": REFERENCE_TRUTH_RATIOS,
        "para": PARAPHRASED_NLL, "pert": PERTURBED_NLL, "gen": GENERATIONS, "ans": ANSWERS,
    }
    run = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, json.dumps(inputs)], env=env, cwd=home, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULTS "))
    assert not any(home.joinpath("hub").glob("*")), "an offline load wrote to the Hub cache"
    return inputs, json.loads(line.removeprefix("RESULTS "))


def test_privleak_module_gives_minus_75(offline_results):
    inputs, out = offline_results
    for key in ("privleak", "privleak_by_path", "privleak_by_folder"):  # metrics.load, evaluate.load(script or folder)
        assert out[key]["privleak"] == pytest.approx(-75.0, abs=1e-12)
    # hand-counted: the model's AUC is 4/6, the retain model's 3/6; MUSE's (holdout as members) 2/6 and 3/6
    assert out["privleak_hand"]["privleak"] == pytest.approx((2 / 6 - 3 / 6) / (3 / 6) * 100, abs=1e-12)
    assert out["privleak_hand"]["privleak"] == privleak(inputs["auc_model"], inputs["auc_retain"])


def test_mia_modules_match_the_library(offline_results):
    _, out = offline_results
    assert out["mia_auc"] == {"auc": mia_auc([3.0, 2.0, 1.0], [2.0, 0.0])} == {"auc": 0.75}
    for ends_with_eos, key in ((True, "mia_attacks"), (False, "mia_attacks_all_tokens")):
        scores = [attack_scores(lp, z, t, ends_with_eos=ends_with_eos)
                  for lp, z, t in zip(TOKENS["token_logprobs"], TOKENS["token_zscores"], TOKENS["texts"])]
        assert out[key] == mia_aucs(scores[:2], scores[2:])
    # Min-K%: without the EOS both members outscore both non-members (AUC 1); with it the first member's -2.65 is
    # below both non-members' (AUC 0.5)
    assert out["mia_attacks"]["min_k"] == 1.0 and out["mia_attacks_all_tokens"]["min_k"] == 0.5


def test_tofu_modules_match_the_library(offline_results):
    _, out = offline_results
    assert out["forget_quality"] == {"forget_quality": forget_quality(TRUTH_RATIOS, REFERENCE_TRUTH_RATIOS)}
    nan = float("nan")
    ratios = truth_ratio(PARAPHRASED_NLL, [[2.0, 3.0, nan], [1.0, nan, nan], [0.5, 0.7, 2.5]])
    assert out["truth_ratio_forget"] == {"truth_ratio": forget_truth_ratio_statistic(ratios), "truth_ratios": ratios.tolist()}
    assert out["truth_ratio_retain"]["truth_ratio"] == retain_truth_ratio_statistic(ratios)


def test_rouge_module_matches_the_library(offline_results):
    _, out = offline_results
    recall, f1 = rouge_l_recall(GENERATIONS, ANSWERS), rouge_l_f1_unstemmed(GENERATIONS, ANSWERS)
    assert out["rouge_tofu"] == {"rougeL_recall": sum(recall) / len(recall)}
    assert out["rouge_muse"] == {"rougeL_f1": sum(f1) / len(f1)}


def test_metric_paths_and_package_data():
    tomllib = pytest.importorskip("tomllib")
    for name in metrics.METRICS:
        path = Path(metrics.metric_path(name))
        assert path.is_file() and path.name == f"{name}.py"
        relative = path.relative_to(REPO / "hf_unlearn").as_posix()
        patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["hf_unlearn"]
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), f"{relative} is not in the package data"
    with pytest.raises(ValueError, match="No hf_unlearn metric named 'rouge'"):
        metrics.metric_path("rouge")
