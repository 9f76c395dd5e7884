"""Bad model inputs get a clear, early error (issue 22): a reference or target whose tokenizer is another one of the
same size (CleanGen, ULD), and prompts longer than the model's context (TOFU evaluation, CleanGen)."""

import copy
import json
import re
import shutil
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig, PretrainedConfig

from hf_unlearn.compatibility import context_length
from hf_unlearn.data.formatting import encode_answer, encode_prompt
from hf_unlearn.decoding import CleanGenGenerator
from hf_unlearn.decoding.uld import ULDModel, build_assistant
from hf_unlearn.eval import evaluate_tofu


pytestmark = pytest.mark.usefixtures("single_thread")

FIRST_REGULAR_ID = 3  # the embedded tokenizer's <pad>, <s>, </s> are 0, 1, 2


def _copy_with_tokenizer(source, destination, vocab=None, **special_tokens):
    """A copy of a saved model folder whose tokenizer has the token -> id map `vocab` (same merges) and/or other
    special tokens (`bos_token="</s>"`); the weights are the source's."""
    shutil.copytree(source, destination)
    if vocab is not None:
        tokenizer_file = destination / "tokenizer.json"
        serialized = json.loads(tokenizer_file.read_text())
        serialized["model"]["vocab"] = vocab
        tokenizer_file.write_text(json.dumps(serialized))
    if special_tokens:
        config_file = destination / "tokenizer_config.json"
        config_file.write_text(json.dumps(json.loads(config_file.read_text()) | special_tokens))
    return destination


def _permuted_vocab(folder) -> dict[str, int]:
    """The folder's tokenizer map with the regular (non-special) token ids reversed: same size, same tokens."""
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    top = max(vocab.values())
    return {t: (i if i < FIRST_REGULAR_ID else top + FIRST_REGULAR_ID - i) for t, i in vocab.items()}


def _first_permuted(folder) -> str:
    """The message fragment for `_permuted_vocab(folder)`: count, size and the lowest-id token that moved."""
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    permuted = _permuted_vocab(folder)
    moved = sorted((i, t) for t, i in vocab.items() if permuted[t] != i)
    token = moved[0][1]
    return (f"{len(moved)} of {len(vocab)} token ids differ, first: {token!r} -> {vocab[token]} vs "
            f"{permuted[token]}")


@pytest.fixture(scope="module")
def other_tokenizers(embedded, tmp_path_factory):
    """The retain model (CleanGen's reference) and the finetuned model (ULD's target) saved with other tokenizers
    of the same size: a permuted vocabulary, another BOS token, another EOS token."""
    root = tmp_path_factory.mktemp("other_tokenizers")
    variants = {"permuted": {"vocab": _permuted_vocab(embedded.retain_dir)}, "other_bos": {"bos_token": "</s>"},
                "other_eos": {"eos_token": "<s>"}}
    return {
        (role, name): _copy_with_tokenizer(source, root / f"{role}_{name}", **changes)
        for role, source in (("reference", embedded.retain_dir), ("target", embedded.finetuned_dir))
        for name, changes in variants.items()
    }


def _expected_difference(name: str, embedded) -> str:
    return {"permuted": _first_permuted(embedded.retain_dir),
            "other_bos": "the bos token differs ('<s>' = 1 vs '</s>' = 2)",
            "other_eos": "the eos token differs ('</s>' = 2 vs '<s>' = 1)"}[name]


# ----------------------------------------------------------------------------------------------- CleanGen tokenizers


@pytest.mark.parametrize("variant", ["permuted", "other_bos"])
@pytest.mark.parametrize("how", ["reference_folder", "from_pretrained", "reference_tokenizer"])
def test_cleangen_refuses_a_reference_with_another_tokenizer_of_the_same_size(embedded, finetuned, other_tokenizers,
                                                                            variant, how):
    folder = other_tokenizers["reference", variant]
    target, tokenizer = finetuned
    expected = (r"CleanGen needs the reference model to share the suspect's tokenizer, but the suspect's tokenizer "
                rf"\(.+\) and the reference's \({re.escape(str(folder)) if how != 'reference_tokenizer' else '.+'}\) "
                rf"differ: {re.escape(_expected_difference(variant, embedded))}; use a reference model from the same "
                r"tokenizer family")
    with pytest.raises(ValueError, match=expected):
        if how == "reference_folder":  # `hf-unlearn generate --cleangen`: the reference's tokenizer from its folder
            CleanGenGenerator(target, AutoModelForCausalLM.from_pretrained(folder), tokenizer=tokenizer)
        elif how == "from_pretrained":
            CleanGenGenerator.from_pretrained(embedded.finetuned_dir, folder)
        else:  # a reference model without a folder, its tokenizer given
            reference = AutoModelForCausalLM.from_pretrained(embedded.retain_dir)
            reference.config._name_or_path = ""
            CleanGenGenerator(target, reference, tokenizer=tokenizer,
                              reference_tokenizer=AutoTokenizer.from_pretrained(folder))


def test_cleangen_accepts_the_same_tokenizer_and_another_eos(embedded, finetuned, other_tokenizers):
    target, tokenizer = finetuned
    reference = AutoModelForCausalLM.from_pretrained(embedded.retain_dir)
    CleanGenGenerator(target, reference, tokenizer=tokenizer)
    CleanGenGenerator(target, reference)  # both tokenizers from the models' folders
    CleanGenGenerator.from_pretrained(embedded.finetuned_dir, embedded.retain_dir)
    # an instruct model and its base model often differ in EOS (and pad): CleanGen stops at the suspect's EOS
    CleanGenGenerator(target, AutoModelForCausalLM.from_pretrained(other_tokenizers["reference", "other_eos"]),
                      tokenizer=tokenizer)


def test_cleangen_without_tokenizers_compares_vocabulary_sizes_only(finetuned):
    target, _ = finetuned
    reference = AutoModelForCausalLM.from_config(copy.deepcopy(target.config))  # no folder, so no tokenizer
    reference.config._name_or_path = ""
    CleanGenGenerator(target, reference)


# ----------------------------------------------------------------------------------------------- ULD tokenizers


@pytest.fixture(scope="module")
def uld_folder(finetuned, tmp_path_factory):
    target, tokenizer = finetuned
    folder = tmp_path_factory.mktemp("uld") / "uld"
    ULDModel(target, build_assistant(target, 0.5).eval()).save_pretrained(folder, tokenizer=tokenizer)
    return folder


@pytest.mark.parametrize("variant", ["permuted", "other_bos", "other_eos"])
@pytest.mark.parametrize("how", ["target_folder", "tokenizer_given"])
def test_uld_refuses_a_target_with_another_tokenizer_of_the_same_size(embedded, finetuned, other_tokenizers,
                                                                     uld_folder, variant, how):
    folder = other_tokenizers["target", variant]
    difference = _expected_difference(variant, embedded)  # both models were saved with the benchmark's tokenizer
    expected = (rf"ULD needs the target to use the tokenizer the assistant in {re.escape(str(uld_folder))} was trained "
                rf"with, not another vocabulary, but its tokenizer \({re.escape(str(uld_folder))}\) and the target's "
                rf"\({re.escape(str(folder))}\) differ: {re.escape(difference)}; load the target it was built from")
    with pytest.raises(ValueError, match=expected):
        if how == "target_folder":  # no tokenizer given: the one saved with the target is compared
            ULDModel.from_pretrained(uld_folder, target=AutoModelForCausalLM.from_pretrained(folder))
        else:
            ULDModel.from_pretrained(uld_folder, target=finetuned[0], tokenizer=AutoTokenizer.from_pretrained(folder))


def test_uld_accepts_its_own_target_with_or_without_its_tokenizer(finetuned, uld_folder):
    target, tokenizer = finetuned
    ULDModel.from_pretrained(uld_folder, target=target)
    ULDModel.from_pretrained(uld_folder, target=target, tokenizer=tokenizer)


# ----------------------------------------------------------------------------------------------- context length


@pytest.mark.parametrize(("config", "expected"), [
    (LlamaConfig(max_position_embeddings=77), 77),
    (GPT2Config(n_positions=99), 99),
    (PretrainedConfig(), None),
])
def test_context_length_reads_the_configs_equivalent(config, expected):
    assert context_length(config) == expected


def test_context_length_of_models(finetuned):
    assert context_length(finetuned[0]) == 128
    assert context_length(torch.nn.Linear(2, 2)) is None


class ForwardCounter:
    """Counts forward calls of models and the largest position id fed to them."""

    def __init__(self, *models):
        self.calls, self.max_position = 0, -1
        self.handles = [m.register_forward_pre_hook(self, with_kwargs=True) for m in models]

    def __call__(self, module, args, kwargs):
        self.calls += 1
        if kwargs.get("position_ids") is not None:
            self.max_position = max(self.max_position, int(kwargs["position_ids"].max()))

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _data_with_question(embedded, destination, index: int, prompt_tokens: int, tokenizer):
    """A copy of the embedded TOFU data whose forget10_perturbed item `index` has a question padded (with a repeated
    word before it) to at least `prompt_tokens` prompt tokens (one or two more)."""
    shutil.copytree(embedded.data_dir, destination)
    split = destination / "forget10_perturbed.json"
    rows = [json.loads(line) for line in split.read_text().splitlines() if line.strip()]
    question = rows[index]["question"]
    while len(encode_prompt(tokenizer, question)) < prompt_tokens:
        question = "Answer " + question
    rows[index]["question"] = question
    split.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return destination, question


def test_tofu_max_length_past_the_context_is_clipped_and_scores_the_real_answers(embedded, finetuned, tmp_path):
    model, tokenizer = finetuned
    # item 2's prompt fits the context of 128 tokens, its prompt + answer does not: scored past position 127 unclipped
    data, question = _data_with_question(embedded, tmp_path / "data", 2, 120, tokenizer)
    answer = json.loads((data / "forget10_perturbed.json").read_text().splitlines()[2])["answer"]
    prompt_ids = encode_prompt(tokenizer, question)
    assert len(prompt_ids) < 128 < len(prompt_ids + encode_answer(tokenizer, answer))
    with pytest.warns(UserWarning, match=r"max_length=300 exceeds the model's context of 128 tokens .*max_length=128"):
        clipped = evaluate_tofu(model, tokenizer, data, max_length=300, max_items=3, progress=False)
    with warnings.catch_warnings(record=True) as caught:  # the default (256) is "at most": clipped without a word
        warnings.simplefilter("always")
        by_default = evaluate_tofu(model, tokenizer, data, max_items=3, progress=False)
    assert not [w for w in caught if "context" in str(w.message)]
    assert by_default["settings"]["max_length"] == 128
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        at_context = evaluate_tofu(model, tokenizer, data, max_length=128, max_items=3, progress=False)
    assert not [w for w in caught if "context" in str(w.message)]  # at the context: nothing to clip
    assert clipped["settings"]["max_length"] == at_context["settings"]["max_length"] == 128
    assert clipped["forget_rougeL_recall"] == at_context["forget_rougeL_recall"] > 0.5  # not 0.0: the real answers
    for key in ("forget_answer_prob", "forget_truth_ratio", "forget_rougeL_recall", "forget_generation"):
        assert clipped["per_item"][key] == at_context["per_item"][key]


@pytest.mark.parametrize("max_length", [256, None])
def test_tofu_prompt_longer_than_the_context_is_refused_before_any_forward_pass(embedded, finetuned, tmp_path,
                                                                              max_length):
    model, tokenizer = finetuned
    data, question = _data_with_question(embedded, tmp_path / "data", 1, 130, tokenizer)
    tokens = len(encode_prompt(tokenizer, question))
    counter = ForwardCounter(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the clip warning of max_length=256
            with pytest.raises(ValueError, match=(
                rf"TOFU forget item 1 \(split 'forget10_perturbed'\) has a prompt of {tokens} tokens \(its question "
                r"formatted for the model, without the answer\), which leaves no room for an answer within the model's "
                r"context of 128 tokens: shorten that question or evaluate a model with a longer context\.")):
                evaluate_tofu(model, tokenizer, data, max_length=max_length, max_items=3, progress=False)
    finally:
        counter.remove()
    assert counter.calls == 0


def test_tofu_prompt_longer_than_a_smaller_max_length_names_the_fix(embedded, finetuned):
    model, tokenizer = finetuned
    with pytest.raises(ValueError, match=r"TOFU forget item 0 .* within max_length=10: raise max_length \(up to the "
                                         r"model's context of 128 tokens\) or shorten that question\."):
        evaluate_tofu(model, tokenizer, embedded.data_dir, max_length=10, max_items=2, progress=False)


# ----------------------------------------------------------------------------------------------- CleanGen context


@pytest.fixture(scope="module")
def trained_pair(embedded, finetuned):
    reference = AutoModelForCausalLM.from_pretrained(embedded.retain_dir).eval()
    return finetuned[0].eval(), reference, finetuned[1]


def _random_prompts(lengths, tokenizer, seed=0):
    """Left-padded prompts of random regular tokens, of the given lengths."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(FIRST_REGULAR_ID, len(tokenizer), (n,), generator=generator)
        mask[row, width - n:] = 1
    return ids, mask


def test_cleangen_refuses_a_prompt_that_fills_the_context_before_any_forward_pass(trained_pair):
    target, reference, tokenizer = trained_pair
    generator = CleanGenGenerator(target, reference, tokenizer=tokenizer)
    ids, mask = _random_prompts([12, 128, 130], tokenizer)
    counter = ForwardCounter(target, reference)
    try:
        with pytest.raises(ValueError, match=(
                r"CleanGen cannot answer prompt 1: its 128 tokens fill the suspect's context of 128 tokens and leave "
                r"no room for a new token \(2 of 3 prompts are that long\); shorten the prompts to at most 127 tokens, "
                r"or use models with a longer context\.")):
            generator.generate(ids, mask, max_new_tokens=8)
    finally:
        counter.remove()
    assert counter.calls == 0


def test_cleangen_clips_max_new_tokens_per_prompt_to_the_context(trained_pair):
    target, reference, tokenizer = trained_pair
    generator = CleanGenGenerator(target, reference, tokenizer=tokenizer)
    ids, mask = _random_prompts([10, 120], tokenizer)
    counter = ForwardCounter(target, reference)
    try:
        with pytest.warns(UserWarning, match=(
                r"max_new_tokens=32 runs past the suspect's context of 128 tokens for 1 of 2 prompts \(prompt 1: 120 "
                r"tokens\); each of them generates at most as many tokens as fit \(8 for prompt 1\)")):
            out = generator.generate(ids, mask, max_new_tokens=32, eos_token_id=[], return_dict_in_generate=True)
    finally:
        counter.remove()
    assert out.num_generated_tokens == [32, 8]  # the short prompt keeps its whole budget
    assert 0 <= counter.max_position <= 127  # no model was fed a position past its context
