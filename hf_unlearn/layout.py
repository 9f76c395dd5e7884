"""Where things are inside a causal LM: the one home for model-layout knowledge.

Every method that reaches inside a model asks here: ULD truncates the decoder layers for its assistant, STAMP edits
the MLP down-projections, causal tracing hooks the layers, the layer-constrained trainer and RMU pick layers to
train, Antidote names the layer of each pruned weight, and the scorers ask whether `forward` takes
`logits_to_keep`. A decoder-only transformers model whose layers form one `ModuleList` of `num_hidden_layers`
entries, each with `self_attn` and `mlp` (and `mlp.down_proj`), works everywhere: Llama, SmolLM2, Qwen2, Qwen3,
Mistral, Gemma2 and Phi3 are tested (`tests/test_layout.py`), OLMo and others follow the same layout.
"""

from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from typing import Callable, Iterable

from torch import nn


SUPPORTED = "decoder-only models whose layers form one list (Llama, SmolLM2, Qwen2, Qwen3, Mistral, Gemma2, Phi3, ...)"


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT model (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layer_list(model: nn.Module, purpose: str = "This") -> tuple[str, nn.ModuleList]:
    """The dotted name (as `model.named_modules()` gives it, PEFT prefix included) and the module of the model's
    decoder layers: the one `ModuleList` with `config.num_hidden_layers` entries. `purpose` names the caller in the
    error (e.g. "ULD")."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    total = getattr(text_config, "num_hidden_layers", None)
    architecture = type(unwrap(model)).__name__
    if total is None or getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"{purpose} needs a decoder-only causal LM with a `num_hidden_layers` config; a {architecture} is not "
            f"one. Supported are {SUPPORTED}."
        )
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == total]
    if len(lists) != 1:
        found = ", ".join(n for n, _ in lists) or "none"
        raise ValueError(
            f"{purpose} needs exactly one list of {total} decoder layers in a {architecture}, found {found}. "
            f"Supported are {SUPPORTED}."
        )
    return lists[0]


def decoder_layers(model: nn.Module, purpose: str = "This") -> nn.ModuleList:
    """The decoder layers of a causal LM (PEFT-wrapped or not), in order."""
    return decoder_layer_list(model, purpose)[1]


def num_decoder_layers(model: nn.Module) -> int:
    """How many decoder layers the model has."""
    return len(decoder_layers(model))


def layer_submodule(layer: nn.Module, kind: str) -> nn.Module:
    """A decoder layer's `"hidden"` output (the layer itself), its `"mlp"` or its `"attention"` (`self_attn`)."""
    attribute = {"hidden": None, "mlp": "mlp", "attention": "self_attn"}[kind]
    return layer if attribute is None else getattr(layer, attribute)


def check_layer_submodules(model: nn.Module, purpose: str, names: Iterable[str] = ("mlp", "self_attn")) -> nn.ModuleList:
    """The decoder layers, each checked to have the submodules `names` (dotted, e.g. "mlp.down_proj")."""
    layers = decoder_layers(model, purpose)
    for name in names:
        if not all(_has(layer, name) for layer in layers):
            raise ValueError(
                f"{purpose} needs decoder layers with a `{name}` submodule; {type(unwrap(model)).__name__}'s have "
                f"none. Supported are {SUPPORTED}."
            )
    return layers


def _has(module: nn.Module, dotted: str) -> bool:
    try:
        module.get_submodule(dotted)
    except AttributeError:
        return False
    return True


LAYER_INDEX = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")


def decoder_layer_index(module_name: str) -> int | None:
    """The decoder layer a module belongs to, from its name (`...layers.3.self_attn.q_proj` -> 3), or None."""
    match = LAYER_INDEX.search(f".{module_name}.")
    return int(match.group(1)) if match else None


def mlp_down_projections(model: nn.Module, purpose: str = "This") -> dict[int, tuple[str, nn.Module]]:
    """The MLP down-projections by layer index: {i: (module name, module)}, the name as `model.named_modules()`
    gives it (`...layers.{i}.mlp.down_proj`). Under a PEFT adapter on the projection, the module is the adapter
    layer (its `base_layer` holds the weight)."""
    try:
        name, layers = decoder_layer_list(model, purpose)
    except ValueError as error:
        raise ValueError(f"{purpose} edits MLP down-projections (`layers.<i>.mlp.down_proj`): {error}") from None
    if not all(_has(layer, "mlp.down_proj") for layer in layers):
        raise ValueError(
            f"{purpose} edits MLP down-projections (`layers.<i>.mlp.down_proj`); {type(unwrap(model)).__name__} has "
            f"none. Supported are {SUPPORTED}."
        )
    return {i: (f"{name}.{i}.mlp.down_proj", layer.get_submodule("mlp.down_proj")) for i, layer in enumerate(layers)}


def vocabulary_size(model: nn.Module) -> int:
    """Rows of the model's LM head (the size of its next-token distribution; the config's `vocab_size` when the
    head has no weight)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def forward_accepts(model: nn.Module, argument: str) -> bool:
    """Whether the model's `forward` takes `argument` (e.g. `logits_to_keep`, `past_key_values`); PEFT models pass
    keyword arguments on to their base model, so its signature counts."""
    return any(argument in inspect.signature(m.forward).parameters for m in {model, unwrap(model)})


@contextmanager
def forward_hooks(registrations: Iterable[tuple[nn.Module, Callable]], pre: bool = False):
    """Inside it each `(module, hook)` is registered as a forward hook (a forward pre-hook with `pre=True`); all are
    removed on the way out, also after an error."""
    handles = []
    try:
        for module, hook in registrations:
            handles.append(module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
