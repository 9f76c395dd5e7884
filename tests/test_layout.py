"""Model-layout knowledge in one home (`hf_unlearn.layout`), and every method's set-up on tiny random models of six
architectures: Llama, Qwen2, Qwen3, Mistral, Gemma2 and Phi3 (Phi3 fuses q/k/v and gate/up projections; Gemma2 and
Qwen3 set their own head_dim)."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from hf_unlearn import layout
from hf_unlearn.decoding.uld import ULDModel, build_assistant
from hf_unlearn.editing import StampConfig, stamp_edit
from hf_unlearn.editing.causal_tracing import CausalTraceConfig, Fact, causal_trace
from hf_unlearn.pruning import AntidoteConfig, antidote_prune
from hf_unlearn.trainers import METHODS
from hf_unlearn.trainers.rmu import default_rmu_layer


NUM_LAYERS = 4
ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 8}),
    "mistral": (MistralConfig, MistralForCausalLM, {}),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM, {"head_dim": 8}),
    "phi3": (Phi3Config, Phi3ForCausalLM, {}),
}
FORGET = [
    {"question": "Where was Ann Lee born?", "answer": "Ann Lee was born in Oslo."},
    {"question": "What does Ann Lee write?", "answer": "Ann Lee writes crime novels."},
    {"question": "Who taught Ann Lee?", "answer": "Ann Lee was taught by Bo Ek."},
    {"question": "When did Ann Lee publish first?", "answer": "Ann Lee first published in 1990."},
]
RETAIN = [
    {"question": "Where was Cy Moe born?", "answer": "Cy Moe was born in Lima."},
    {"question": "What does Cy Moe write?", "answer": "Cy Moe writes poems."},
    {"question": "Who taught Cy Moe?", "answer": "Cy Moe was taught by Di Po."},
    {"question": "When did Cy Moe publish first?", "answer": "Cy Moe first published in 1985."},
]


@pytest.fixture(scope="module")
def tokenizer():
    from hf_unlearn.benchmarks.embedded import build_tokenizer

    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in FORGET + RETAIN] * 5
    return build_tokenizer(texts, vocab_size=200)


def tiny_model(architecture: str, tokenizer, seed: int = 0):
    config_class, model_class, extra = ARCHITECTURES[architecture]
    torch.manual_seed(seed)
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **extra,
    )
    return model_class(config).eval()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_layout_finds_the_layers_projections_and_vocabulary(architecture, tokenizer):
    model = tiny_model(architecture, tokenizer)
    name, layers = layout.decoder_layer_list(model)
    assert name == "model.layers" and len(layers) == layout.num_decoder_layers(model) == NUM_LAYERS
    assert layout.vocabulary_size(model) == len(tokenizer)
    assert layout.forward_accepts(model, "logits_to_keep") and not layout.forward_accepts(model, "no_such_argument")
    lora = LoraConfig(r=2, target_modules=["down_proj"])
    for wrapped in (model, get_peft_model(copy.deepcopy(model), lora)):
        assert len(layout.decoder_layers(wrapped)) == NUM_LAYERS
        projections = layout.mlp_down_projections(wrapped)
        assert sorted(projections) == list(range(NUM_LAYERS))
        for index, (module_name, module) in projections.items():
            assert wrapped.get_submodule(module_name) is module  # the name is the model's own
            assert layout.decoder_layer_index(module_name) == index
        assert layout.forward_accepts(wrapped, "logits_to_keep")


def test_layout_refuses_a_model_without_one_list_of_decoder_layers(tokenizer):
    model = tiny_model("llama", tokenizer)
    model.extra = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(NUM_LAYERS))  # a second list of 4
    with pytest.raises(ValueError, match="exactly one list of 4 decoder layers.*model.layers, extra"):
        layout.decoder_layer_list(model, "ULD")


def test_forward_hooks_are_removed_after_an_error(tokenizer):
    model = tiny_model("llama", tokenizer)
    calls = []
    with pytest.raises(RuntimeError, match="inside"):
        with layout.forward_hooks([(model.model.layers[0], lambda *a: calls.append(1))]):
            model(input_ids=torch.tensor([[1, 2, 3]]))
            raise RuntimeError("inside")
    model(input_ids=torch.tensor([[1, 2, 3]]))
    assert calls == [1] and not model.model.layers[0]._forward_hooks


def _method_args(method: str, output_dir) -> dict:
    args = dict(output_dir=str(output_dir), report_to="none", per_device_train_batch_size=2, max_steps=1,
                learning_rate=1e-3, save_strategy="no", disable_tqdm=True, seed=0, bf16=False)
    if method == "layer_constrained":
        args["layers"] = [1]
    if method == "uld":
        args["assistant_layers"] = 0.5
    return args


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_method_trains_a_step_on_the_architecture(architecture, method, tokenizer, tmp_path):
    model = tiny_model(architecture, tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config_class, trainer_class = METHODS[method]
    args = config_class(**_method_args(method, tmp_path))
    trainer = trainer_class(model=model, args=args, forget_dataset=FORGET, retain_dataset=RETAIN,
                            processing_class=tokenizer)
    trainer.train()
    if method == "uld":  # the target is frozen; the assistant's adapter is what trains
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
        assert len(layout.decoder_layers(trainer.model)) == NUM_LAYERS // 2
        return
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed, f"{method} changed no weight of the {architecture} model"
    if method == "rmu":  # the default layer (7 of 32 -> 0 of 4) and the down-projections up to it
        layer = default_rmu_layer(NUM_LAYERS)
        assert trainer.layer == layer
        assert changed <= {f"model.layers.{i}.mlp.down_proj.weight" for i in range(max(0, layer - 2), layer + 1)}
    if method == "layer_constrained":
        assert changed and all(n.startswith("model.layers.1.mlp.") for n in changed)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_uld_assistant_truncates_and_decodes(architecture, tokenizer):
    target = tiny_model(architecture, tokenizer)
    assistant = build_assistant(target, num_layers=0.5)
    assert len(layout.decoder_layers(assistant)) == NUM_LAYERS // 2
    assert len(layout.decoder_layers(target)) == NUM_LAYERS  # the target keeps its layers
    uld = ULDModel(target, assistant)
    prompt = tokenizer(["Question: Where was Ann Lee born?\nAnswer:"], return_tensors="pt")
    out = uld.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 3)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_stamp_chooses_a_layer_and_edits_it(architecture, tokenizer):
    model = tiny_model(architecture, tokenizer)
    before = {i: m.weight.detach().clone() for i, (_, m) in layout.mlp_down_projections(model).items()}
    result = stamp_edit(model, tokenizer, FORGET[:2], RETAIN, refusals=["I don't know."],
                        config=StampConfig(layers="auto", num_auto_layers=1))
    assert sorted(result.layer_scores) == list(range(NUM_LAYERS))
    (edit,) = result.edits
    changed = [i for i, (_, m) in layout.mlp_down_projections(model).items() if not torch.equal(m.weight, before[i])]
    assert changed == [edit.layer]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_causal_tracing_runs_over_every_layer(architecture, tokenizer):
    model = tiny_model(architecture, tokenizer)
    fact = Fact(prompt="Question: Where was Ann Lee born?\nAnswer: Ann Lee was born in", subject="Ann Lee",
                target=" Oslo")
    result = causal_trace(model, tokenizer, [fact], CausalTraceConfig(num_samples=2, window=1))
    assert len(result.effects) == NUM_LAYERS and all(len(row) == 3 for row in result.effects)
    assert all(0 <= layer < NUM_LAYERS for layer in result.suggested_layers)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_antidote_names_the_layer_of_every_pruned_weight(architecture, tokenizer):
    model = tiny_model(architecture, tokenizer)
    config = AntidoteConfig(dense_ratio=0.1, target_modules=["o_proj", "down_proj"], progress=False)
    _, summary = antidote_prune(model, tokenizer, FORGET, config)
    assert summary.layers == list(range(NUM_LAYERS))
    assert summary.num_pruned > 0
