"""Bad hyperparameters are refused when the config is built, with one sentence naming the field, the value, the
allowed range and a typical value (issue 22); good non-default values are kept. Pure Python: no model is loaded."""

import math
import re

import pytest

from hf_unlearn.trainers import (
    METHODS,
    FLATConfig,
    GradAscentConfig,
    GradDiffConfig,
    IdkDPOConfig,
    LayerConstrainedConfig,
    NPOConfig,
    RMUConfig,
    SimNPOConfig,
    ULDConfig,
    UnlearnConfig,
)
from hf_unlearn.trainers.base import RetainTermConfig


ALL_CONFIGS = [UnlearnConfig, RetainTermConfig, *(config for config, _ in METHODS.values())]


def _build(config_class, tmp_path, **kwargs):
    return config_class(output_dir=str(tmp_path), report_to="none", **kwargs)


# (config class, kwargs, fragment the message must contain)
BAD = [
    # shared training arguments (UnlearnConfig)
    (GradAscentConfig, {"max_steps": 0}, "max_steps must be a positive number of optimizer steps or -1 (unset: "
                                         "num_train_epochs decides), got 0; e.g. 100"),
    (GradAscentConfig, {"max_steps": -5}, "max_steps must be a positive number of optimizer steps or -1"),
    (NPOConfig, {"num_train_epochs": -3}, "num_train_epochs must be > 0 (unless max_steps > 0 sets the length), "
                                          "got -3; e.g. 5"),
    (FLATConfig, {"num_train_epochs": 0}, "num_train_epochs must be > 0"),
    (GradAscentConfig, {"learning_rate": -1e-5}, "learning_rate must be > 0, got -1e-05; e.g. 1e-5"),
    (GradAscentConfig, {"learning_rate": 0.0}, "learning_rate must be > 0, got 0.0"),
    (GradAscentConfig, {"learning_rate": math.nan}, "learning_rate must be > 0, got nan"),
    (GradAscentConfig, {"per_device_train_batch_size": 0}, "per_device_train_batch_size must be >= 1, got 0; e.g. 4"),
    (GradAscentConfig, {"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be >= 1, got 0; e.g. 4"),
    (GradAscentConfig, {"max_length": 1}, "max_length must be >= 2 (a prompt token and an answer token), got 1; "
                                          "e.g. 256"),
    (GradAscentConfig, {"eval_max_new_tokens": 0}, "eval_max_new_tokens must be >= 1, got 0; e.g. 200"),
    (GradAscentConfig, {"eval_max_items": 0}, "eval_max_items must be unset (every item) or >= 1, got 0; e.g. 8"),
    # the forget and retain weights of GradDiff, NPO, SimNPO and IdkDPO
    (GradDiffConfig, {"gamma": 0.0}, "gamma (the forget term's weight) must be > 0, got 0.0; e.g. 1.0"),
    (GradDiffConfig, {"alpha": -1.0}, "alpha (the retain term's weight) must be >= 0 (0: forget set only), got -1.0; "
                                      "e.g. 1.0"),
    (NPOConfig, {"beta": -1.0}, "beta (NPO's inverse temperature) must be > 0, got -1.0; e.g. 0.1"),
    (NPOConfig, {"beta": 0.0}, "beta (NPO's inverse temperature) must be > 0, got 0.0"),
    (NPOConfig, {"gamma": -1.0}, "gamma (the forget term's weight) must be > 0, got -1.0; e.g. 1.0"),
    (NPOConfig, {"alpha": -0.5}, "alpha (the retain term's weight) must be >= 0"),
    (SimNPOConfig, {"beta": 0.0}, "beta (SimNPO's inverse temperature) must be > 0, got 0.0; e.g. 4.5"),
    (SimNPOConfig, {"delta": -0.1}, "delta (SimNPO's reward margin, the paper's gamma / beta) must be >= 0, got -0.1; "
                                    "e.g. 0.0"),
    (SimNPOConfig, {"gamma": 0.0}, "gamma (the forget term's weight) must be > 0, got 0.0; e.g. 0.125"),
    (SimNPOConfig, {"alpha": -1.0}, "alpha (the retain term's weight) must be >= 0"),
    (IdkDPOConfig, {"beta": -0.1}, "beta (DPO's inverse temperature) must be > 0, got -0.1; e.g. 0.1"),
    (IdkDPOConfig, {"gamma": 0.0}, "gamma (the forget term's weight) must be > 0"),
    (IdkDPOConfig, {"alpha": -2.0}, "alpha (the retain term's weight) must be >= 0"),
    # RMU
    (RMUConfig, {"layer": -1}, "layer (the steered decoder layer, counted from 0) must be unset or >= 0, got -1; "
                               "e.g. 7"),
    (RMUConfig, {"steering_coeff": 0.0}, "steering_coeff (c, the control vector's norm) must be > 0, got 0.0; e.g. 20"),
    (RMUConfig, {"steering_scale": -1.0}, "steering_scale (c as a multiple of the forget states' mean norm) must be "
                                          "unset or > 0, got -1.0; e.g. 2.0"),
    (RMUConfig, {"alpha": -100.0}, "alpha (the retain term's weight) must be >= 0, got -100.0; e.g. 100"),
    # ULD
    (ULDConfig, {"assistant_layers": 0}, "assistant_layers must be a fraction in (0, 1) of the target's layers or a "
                                         "whole count >= 1, got 0; e.g. 0.25"),
    (ULDConfig, {"assistant_layers": 1.5}, "assistant_layers must be a fraction in (0, 1)"),
    (ULDConfig, {"assistant_layers": -0.25}, "assistant_layers must be a fraction in (0, 1)"),
    (ULDConfig, {"assistant_lora_r": 0}, "assistant_lora_r (the assistant's LoRA rank) must be >= 1, got 0; e.g. 16"),
    (ULDConfig, {"assistant_lora_alpha": 0}, "assistant_lora_alpha must be > 0 (the adapter is scaled by alpha / r), "
                                             "got 0; e.g. 32"),
    (ULDConfig, {"assistant_lora_dropout": 1.0}, "assistant_lora_dropout must be in [0, 1), got 1.0; e.g. 0.05"),
    (ULDConfig, {"retain_weight": -5.0}, "retain_weight (w_r of the uniform loss on retain data) must be >= 0, got "
                                         "-5.0; e.g. 5"),
    (ULDConfig, {"assistant_weight": -0.8}, "must be > 0, got -0.8; e.g. 0.8"),
    (ULDConfig, {"candidate_threshold": 1.5}, "candidate_threshold (tau) must be in [0, 1], got 1.5; e.g. 0.01"),
    # layer-constrained (SHA256)
    (LayerConstrainedConfig, {"eval_prompt_format": "chat"}, "eval_prompt_format must be one of ('raw', 'qa'), got "
                                                             "'chat'; e.g. 'qa'"),
    (LayerConstrainedConfig, {"eval_semeval_split": "test"}, "eval_semeval_split must be 'train' or 'validation', got "
                                                             "'test'; e.g. 'validation'"),
    (LayerConstrainedConfig, {"layers": []}, "layers must be unset (traced) or a non-empty list of layer indices >= 0, "
                                             "got []; e.g. [3, 4]"),
    (LayerConstrainedConfig, {"layers": [2, -1]}, "layers must be unset (traced) or a non-empty list"),
    (LayerConstrainedConfig, {"trace_num_facts": 0}, "trace_num_facts must be >= 1, got 0; e.g. 32"),
    (LayerConstrainedConfig, {"trace_num_samples": 0}, "trace_num_samples must be >= 1, got 0; e.g. 5"),
    (LayerConstrainedConfig, {"alpha_scale": -0.3}, "alpha_scale (a in clip(a * b^Delta + c)) must be >= 0 (0: a "
                                                    "constant retain weight), got -0.3; e.g. 0.3"),
    (LayerConstrainedConfig, {"alpha_base": 0.5}, "alpha_base (b in clip(a * b^Delta + c)) must be >= 1, so the "
                                                  "retain weight grows as the retain loss rises, got 0.5; e.g. 6"),
    (LayerConstrainedConfig, {"alpha_offset": math.inf}, "alpha_offset (c in clip(a * b^Delta + c)) must be a finite "
                                                         "number, got inf; e.g. 0.8"),
    (LayerConstrainedConfig, {"alpha_min": -1.0}, "alpha_min (the retain weight's lower clip) must be >= 0, got -1.0; "
                                                  "e.g. 1.2"),
]


@pytest.mark.parametrize(
    ("config_class", "kwargs", "fragment"),
    BAD,
    ids=[f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for c, kw, _ in BAD],
)
def test_a_bad_value_is_refused_at_construction_with_one_clear_sentence(tmp_path, config_class, kwargs, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)) as error:
        _build(config_class, tmp_path, **kwargs)
    message = str(error.value)
    field, value = next(iter(kwargs.items()))
    assert message.startswith(field), message  # names the field first
    assert repr(value) in message or str(value) in message, message  # and the value given
    assert "e.g." in message, message  # and a typical good value
    assert ". " not in message.replace("e.g. ", "") and message.endswith("."), message  # one sentence


@pytest.mark.parametrize("config_class", ALL_CONFIGS, ids=lambda c: c.__name__)
def test_the_defaults_construct(tmp_path, config_class):
    _build(config_class, tmp_path)


@pytest.mark.parametrize("config_class", [config for config, _ in METHODS.values()], ids=lambda c: c.__name__)
def test_every_method_refuses_a_negative_epoch_count(tmp_path, config_class):
    # measured before the check: `--num_train_epochs -2` trained 0 steps, exited 0 and saved the unchanged model
    with pytest.raises(ValueError, match=re.escape("num_train_epochs must be > 0")):
        _build(config_class, tmp_path, num_train_epochs=-2)


# (config class, kwargs): valid non-default values, every one kept as given
GOOD = [
    (UnlearnConfig, {"num_train_epochs": 0, "max_steps": 10}),  # max_steps sets the length; epochs are unused
    (GradAscentConfig, {"learning_rate": 3e-4, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 2,
                        "max_length": 2, "eval_max_new_tokens": 1, "eval_max_items": 1, "num_train_epochs": 0.5}),
    (RetainTermConfig, {"retain_loss_type": "kl", "kl_positions": "answer"}),
    (FLATConfig, {"divergence": "js"}),
    (GradDiffConfig, {"gamma": 0.5, "alpha": 0.0}),
    (NPOConfig, {"beta": 0.05, "gamma": 2.0, "alpha": 0.0}),
    (SimNPOConfig, {"beta": 2.5, "delta": 0.5, "gamma": 0.1375, "alpha": 0.0}),
    (IdkDPOConfig, {"beta": 0.5, "gamma": 0.5, "alpha": 0.0}),
    (RMUConfig, {"layer": 0, "steering_coeff": 6.5, "steering_scale": 2.0, "alpha": 0.0}),
    (ULDConfig, {"assistant_layers": 8, "assistant_lora_r": 1, "assistant_lora_alpha": 1, "assistant_lora_dropout": 0.0,
                 "retain_weight": 0.0, "assistant_weight": 2.0, "candidate_threshold": 0.0}),
    (ULDConfig, {"assistant_layers": 1.0, "candidate_threshold": 1.0}),
    (LayerConstrainedConfig, {"layers": [0, 3], "alpha_scale": 0.0, "alpha_base": 1.0, "alpha_offset": -1.0,
                              "alpha_min": 0.0, "alpha_max": 0.0, "trace_num_facts": 1, "trace_num_samples": 1,
                              "eval_semeval_split": "train", "eval_prompt_format": "raw"}),
]


@pytest.mark.parametrize(("config_class", "kwargs"), GOOD, ids=[c.__name__ for c, _ in GOOD])
def test_a_good_non_default_value_is_kept(tmp_path, config_class, kwargs):
    config = _build(config_class, tmp_path, **kwargs)
    for name, value in kwargs.items():
        assert getattr(config, name) == value, name


def test_every_method_config_has_an_accepted_non_default_row():
    assert {config for config, _ in METHODS.values()} <= {config for config, _ in GOOD}


def test_forget_rows_in_the_retain_set_warn_once_and_the_same_set_is_refused():
    import warnings

    from hf_unlearn.trainers.base import check_forget_retain_overlap

    forget = [{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2."}]
    retain = [{"question": "Q2?", "answer": "A2."}, {"question": "Q3?", "answer": "A3."}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_forget_retain_overlap(forget, retain)  # the pipeline's early check
        check_forget_retain_overlap(forget, retain)  # the trainer's, on the same rows: no second warning
        check_forget_retain_overlap(forget, retain + [{"question": "Q4?", "answer": "A4."}])  # other rows: warns
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and messages[0].startswith("1 of the 2 distinct retain rows are also forget rows")
    check_forget_retain_overlap(forget, [{"question": "Q3?", "answer": "A3."}])  # disjoint: silent
    with pytest.raises(ValueError, match="The retain set is the forget set"):
        check_forget_retain_overlap(forget, list(reversed(forget)))


@pytest.mark.parametrize("config_class", [GradDiffConfig, NPOConfig, SimNPOConfig, IdkDPOConfig])
def test_a_retain_loss_type_in_another_case_is_refused_not_trained_as_kl(config_class, tmp_path):
    # open-unlearning spells the retain term "NLL"/"KL"; an unknown spelling once trained silently with KL
    with pytest.raises(ValueError, match="retain_loss_type must be 'nll' or 'kl', got 'NLL'"):
        config_class(output_dir=str(tmp_path), retain_loss_type="NLL")
