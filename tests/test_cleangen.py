"""CleanGen decoding: exact replacements on hand-built models, cache/batch/greedy equivalences on trained models."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, StoppingCriteria, StoppingCriteriaList

from hf_unlearn.data.formatting import encode_prompt, pad_examples
from hf_unlearn.decoding import CleanGenConfig, CleanGenGenerator, first_suspicious_index, suspicion_scores


# ----------------------------------------------------------------------------------------------- pure functions


def test_suspicion_scores_are_log_probability_ratios():
    target = torch.log(torch.tensor([[0.9, 0.5, 0.2]]))
    reference = torch.log(torch.tensor([[0.01, 0.5, 0.4]]))
    assert torch.allclose(suspicion_scores(target, reference).exp(), torch.tensor([[90.0, 1.0, 0.5]]))


def test_first_suspicious_index_respects_threshold_order_and_valid_length():
    log_alpha = math.log(20.0)
    scores = torch.log(torch.tensor([
        [1.0, 25.0, 30.0, 1.0],   # first crossing at 1
        [19.9, 1.0, 1.0, 1.0],    # never crosses
        [1.0, 1.0, 1.0, 20.0],    # crossing at the threshold itself counts (s >= alpha)
        [1.0, 1.0, 50.0, 1.0],    # crossing beyond the row's valid length does not count
    ]))
    valid = torch.tensor([4, 4, 4, 2])
    assert first_suspicious_index(scores, log_alpha, valid).tolist() == [1, 4, 3, 4]


# ----------------------------------------------------------------------------------------------- hand-built models
#
# A one-layer Llama whose attention and MLP write nothing (o_proj = down_proj = 0), with one-hot embeddings and an
# LM head set from a table: its logits depend only on the previous token, logits(next | prev) = TABLE[prev]. It is
# still a real Llama with a real KV cache, so CleanGen runs on it unchanged while we know every probability.

VOCAB = 16
PAD, BOS, EOS = 0, 1, 2


def bigram_llama(table: torch.Tensor) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=VOCAB, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-12,
                         bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(VOCAB))
        model.model.norm.weight.fill_(1.0)
        model.model.layers[0].input_layernorm.weight.fill_(1.0)
        model.model.layers[0].post_attention_layernorm.weight.fill_(1.0)
        # The final norm turns the one-hot e_prev into sqrt(VOCAB) * e_prev.
        model.lm_head.weight.copy_(table.T / math.sqrt(VOCAB))
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    return model.eval()


def peaked(rows: dict[int, dict[int, float]]) -> torch.Tensor:
    """A logit table: every row flat (0) except the given (next token: logit) entries."""
    table = torch.zeros(VOCAB, VOCAB)
    for prev, entries in rows.items():
        for nxt, logit in entries.items():
            table[prev, nxt] = logit
    return table


# The target's chain after BOS: 3 4 5 6 7 8 EOS. The reference agrees except where it puts little mass on the
# target's token: on 4->5 (ratio ~90, replaced by 10), 6->7 (ratio ~9, kept at alpha 20) and 7->8 (ratio ~30,
# replaced by 12). After a replacement the target continues from the reference's token: 10->6, 12->EOS.
TARGET = peaked({BOS: {3: 8}, 3: {4: 8}, 4: {5: 8}, 5: {6: 8}, 6: {7: 8}, 7: {8: 8}, 8: {EOS: 8},
                 10: {6: 8}, 12: {EOS: 8}, 11: {EOS: 8}})
REFERENCE = peaked({BOS: {3: 8}, 3: {4: 8}, 4: {10: 8, 5: 3.4}, 5: {6: 8}, 6: {11: 8, 7: 5.8}, 7: {12: 8, 8: 4.6},
                    8: {EOS: 8}, 10: {6: 8}, 12: {EOS: 8}, 11: {EOS: 8}})


def token_by_token_cleangen(prompt: list[int], alpha: float, max_new_tokens: int = 20):
    """The CleanGen rule one token at a time from the tables: (tokens, replaced positions, their scores)."""
    tokens, replaced, scores = [], [], []
    prev = prompt[-1]
    for _ in range(max_new_tokens):
        p_target, p_reference = TARGET[prev].softmax(-1), REFERENCE[prev].softmax(-1)
        proposal = int(p_target.argmax())
        score = float(p_target[proposal] / p_reference[proposal])
        token = int(p_reference.argmax()) if score >= alpha else proposal
        if score >= alpha:
            replaced.append(len(tokens))
            scores.append(score)
        tokens.append(token)
        prev = token
        if token == EOS:
            break
    return tokens, replaced, scores


@pytest.fixture(scope="module")
def bigram_pair():
    return bigram_llama(TARGET), bigram_llama(REFERENCE)


def test_hand_built_tables_have_the_intended_ratios():
    def ratio(prev, token):
        return float(TARGET[prev].softmax(-1)[token] / REFERENCE[prev].softmax(-1)[token])

    assert ratio(4, 5) > 40 and 5 < ratio(6, 7) < 15 and 25 < ratio(7, 8) < 60 and ratio(3, 4) == pytest.approx(1)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("k", [1, 3, 4, 8])
@pytest.mark.parametrize("alpha", [20.0, 5.0, 500.0])
def test_replaces_exactly_the_tokens_whose_ratio_crosses_alpha(bigram_pair, k, alpha, use_cache):
    target, reference = bigram_pair
    expected, expected_positions, expected_scores = token_by_token_cleangen([BOS], alpha)
    generator = CleanGenGenerator(target, reference, CleanGenConfig(proposal_length=k, suspicion_threshold=alpha,
                                                                    use_cache=use_cache))
    out = generator.generate(torch.tensor([[BOS]]), max_new_tokens=20, return_dict_in_generate=True)
    assert out.sequences[0, 1:].tolist() == expected
    assert [r.position for r in out.replacements[0]] == expected_positions
    assert [r.suspicion_score for r in out.replacements[0]] == pytest.approx(expected_scores, rel=1e-4)
    for r in out.replacements[0]:
        assert r.suspicion_score >= alpha and r.target_token != r.reference_token
    # A sanity check of the scenario itself: alpha 20 replaces 5 and 8 (not 7), alpha 5 also 7, alpha 500 nothing.
    emitted = {20.0: [3, 4, 10, 6, 7, 12, EOS], 5.0: [3, 4, 10, 6, 11, EOS], 500.0: [3, 4, 5, 6, 7, 8, EOS]}[alpha]
    assert expected == emitted


def test_batched_rows_accept_independently(bigram_pair):
    target, reference = bigram_pair
    prompts = [[BOS], [BOS, 3, 4], [BOS, 6], [BOS, 3, 4, 5, 6, 7]]
    width = max(map(len, prompts))
    input_ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    attention_mask = (input_ids != PAD).long()
    for k in (1, 3, 4):
        out = CleanGenGenerator(target, reference, CleanGenConfig(proposal_length=k)).generate(
            input_ids, attention_mask, max_new_tokens=20, return_dict_in_generate=True)
        for row, prompt in enumerate(prompts):
            expected, positions, _ = token_by_token_cleangen(prompt, 20.0)
            new = out.sequences[row, width:].tolist()
            assert new[: len(expected)] == expected and all(t == PAD for t in new[len(expected):])
            assert [r.position for r in out.replacements[row]] == positions
            assert out.num_generated_tokens[row] == len(expected)


def test_window_of_k_costs_one_reference_pass(bigram_pair):
    target, reference = bigram_pair
    out = CleanGenGenerator(target, target, CleanGenConfig(proposal_length=4)).generate(
        torch.tensor([[BOS]]), max_new_tokens=20, return_dict_in_generate=True)
    # 7 tokens, nothing replaced: windows of 4 and 3 proposals (the second ends at EOS) -> 7 target, 2 reference.
    assert out.num_generated_tokens == [7] and out.target_forward_passes == 7 and out.reference_forward_passes == 2


def test_max_new_tokens_and_stopping_criteria(bigram_pair):
    target, reference = bigram_pair

    class StopAfterToken6(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] == 6

    generator = CleanGenGenerator(target, reference)
    assert generator.generate(torch.tensor([[BOS]]), max_new_tokens=3)[0].tolist() == [BOS, 3, 4, 10]
    out = generator.generate(torch.tensor([[BOS]]), max_new_tokens=20, return_dict_in_generate=True,
                             stopping_criteria=StoppingCriteriaList([StopAfterToken6()]))
    assert out.sequences[0].tolist() == [BOS, 3, 4, 10, 6]
    assert [r.position for r in out.replacements[0]] == [2]
    # A token listed as an extra EOS ends the row like EOS does.
    assert generator.generate(torch.tensor([[BOS]]), eos_token_id=[EOS, 4])[0].tolist() == [BOS, 3, 4]


def test_sampling_with_identical_models_is_plain_sampling(bigram_pair):
    target, _ = bigram_pair
    generator = CleanGenGenerator(target, target)
    prompt = torch.tensor([[BOS, 3]])
    torch.manual_seed(0)
    ours = generator.generate(prompt, max_new_tokens=12, do_sample=True, temperature=3.0, top_k=5)
    torch.manual_seed(0)
    plain = target.generate(prompt, max_new_tokens=12, do_sample=True, temperature=3.0, top_k=5, top_p=1.0)
    assert torch.equal(ours, plain)


def test_sampling_with_top_k_1_is_greedy_cleangen(bigram_pair):
    target, reference = bigram_pair
    greedy = CleanGenGenerator(target, reference).generate(torch.tensor([[BOS]]), max_new_tokens=20)
    torch.manual_seed(0)
    sampled = CleanGenGenerator(target, reference).generate(torch.tensor([[BOS]]), max_new_tokens=20, do_sample=True,
                                                            top_k=1)
    assert torch.equal(sampled, greedy)


def test_sampled_replacements_are_drawn_from_the_reference():
    # The target all but always samples 5 after 4; the reference gives 5 little mass and ties 10 and 11 (greedy
    # would always pick 10).
    target = bigram_llama(peaked({4: {5: 20}}))
    tied = bigram_llama(peaked({4: {10: 8, 11: 8, 5: 3.4}}))
    torch.manual_seed(0)
    out = CleanGenGenerator(target, tied).generate(torch.tensor([[BOS, 4]] * 32), max_new_tokens=1, do_sample=True,
                                                   top_k=2, return_dict_in_generate=True)
    replaced = [reps[0] for reps in out.replacements if reps]
    assert len(replaced) == 32 and all(r.target_token == 5 for r in replaced)
    assert {r.reference_token for r in replaced} == {10, 11}
    assert out.sequences[:, -1].tolist() == [r.reference_token for r in replaced]


def test_errors_name_the_problem(bigram_pair):
    target, _ = bigram_pair
    other = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="target has 16 tokens, the reference 32"):
        CleanGenGenerator(target, other)
    generator = CleanGenGenerator(target, target)
    with pytest.raises(ValueError, match="left-padded"):
        generator.generate(torch.tensor([[BOS, 3, PAD]]), torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="num_beams"):
        generator.generate(torch.tensor([[BOS]]), num_beams=4)
    with pytest.raises(ValueError, match="proposal_length"):
        CleanGenConfig(proposal_length=0)


# ----------------------------------------------------------------------------------------------- trained models
# The embedded benchmark's finetuned model memorised the forget10 facts that its retain model never saw: with the
# retain model as reference, CleanGen must replace tokens there, so caches and batching are exercised for real.


@pytest.fixture(scope="module")
def trained_pair(embedded):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = AutoModelForCausalLM.from_pretrained(embedded.finetuned_dir).eval()
    reference = AutoModelForCausalLM.from_pretrained(embedded.retain_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(embedded.finetuned_dir)
    return target, reference, tokenizer


@pytest.fixture(scope="module")
def questions(embedded):
    from hf_unlearn.data import load_tofu_split

    forget = [r["question"] for r in load_tofu_split(str(embedded.data_dir), "forget10")][:6]
    retain = [r["question"] for r in load_tofu_split(str(embedded.data_dir), "retain90")][:4]
    return forget + retain


def left_padded(tokenizer, questions):
    prompts = [{"input_ids": encode_prompt(tokenizer, q)} for q in questions]
    for p in prompts:
        p["attention_mask"] = [1] * len(p["input_ids"])
    return pad_examples(prompts, tokenizer.pad_token_id, padding_side="left")


def test_cached_and_uncached_decoding_agree(trained_pair, questions):
    target, reference, tokenizer = trained_pair
    batch = left_padded(tokenizer, questions)
    generator = CleanGenGenerator(target, reference)
    cached = generator.generate(**batch, max_new_tokens=32, return_dict_in_generate=True)
    uncached = generator.generate(**batch, max_new_tokens=32, use_cache=False, return_dict_in_generate=True)
    assert torch.equal(cached.sequences, uncached.sequences)
    def replaced(out):
        return [[(r.position, r.target_token, r.reference_token) for r in row] for row in out.replacements]

    assert replaced(cached) == replaced(uncached)
    cached_scores = [r.suspicion_score for row in cached.replacements for r in row]
    assert cached_scores == pytest.approx([r.suspicion_score for row in uncached.replacements for r in row], rel=1e-3)
    assert sum(cached.num_replaced_tokens[:6]) > 0  # the forget10 facts were replaced
    assert sum(cached.num_replaced_tokens[6:]) == 0  # the retain facts both models know were not


def test_batch_equals_single_rows_and_k_does_not_change_greedy_output(trained_pair, questions):
    target, reference, tokenizer = trained_pair
    batch = left_padded(tokenizer, questions)
    width = batch["input_ids"].shape[1]
    batched = CleanGenGenerator(target, reference).generate(**batch, max_new_tokens=32)
    for k in (1, 4, 7):
        generator = CleanGenGenerator(target, reference, CleanGenConfig(proposal_length=k))
        for row, question in enumerate(questions):
            ids = torch.tensor([encode_prompt(tokenizer, question)])
            single = generator.generate(ids, max_new_tokens=32)[0, ids.shape[1]:].tolist()
            assert batched[row, width: width + len(single)].tolist() == single


def test_identical_target_and_reference_is_plain_greedy_generate(trained_pair, questions):
    target, _, tokenizer = trained_pair
    batch = left_padded(tokenizer, questions)
    out = CleanGenGenerator(target, target).generate(**batch, max_new_tokens=32, return_dict_in_generate=True)
    plain = target.generate(**batch, max_new_tokens=32, do_sample=False)
    assert torch.equal(out.sequences, plain)
    assert out.num_replaced_tokens == [0] * len(questions)


def test_generate_text_with_prompts_and_chat_template(trained_pair, questions):
    target, reference, tokenizer = trained_pair
    generator = CleanGenGenerator(target, reference, tokenizer=tokenizer)
    text = generator.generate_text([f"Question: {questions[6]}\nAnswer:"], max_new_tokens=24)
    ids = tokenizer(f"Question: {questions[6]}\nAnswer:", return_tensors="pt")
    plain = tokenizer.decode(target.generate(**ids, max_new_tokens=24, do_sample=False)[0, ids["input_ids"].shape[1]:],
                             skip_special_tokens=True)
    assert text == [plain]  # a retain fact both models know: no replacement, the target's own answer
    chat_tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    chat_tokenizer.chat_template = (
        "{% for m in messages %}Question: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}Answer:"
        "{% endif %}")
    out = generator.generate_text([[{"role": "user", "content": questions[6]}]], tokenizer=chat_tokenizer,
                                  max_new_tokens=24, return_dict_in_generate=True)
    assert out.texts == [plain] and out.num_replaced_tokens == [0]
