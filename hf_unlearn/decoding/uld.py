"""ULD's models (Ji et al., 2024, "Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework
from Logit Difference"; reference code github.com/UCSB-NLP-Chang/ULD, `uld/model/contrastllm.py` and
`uld/model/gen_util.py`): the assistant built from the target's first layers, and `ULDModel`, the target minus
alpha times the assistant on the target's candidate tokens.

With C the target's candidate set at a position (`candidate_mask`):
- scoring (`ULDModel.forward`, what answer probabilities and truth ratios use) follows `ContrastLLM.forward`:
  l = l_target - alpha * l_assistant on C, l = l_target outside C (`logit_difference`);
- generation (`ULDModel.generate`) follows `ContrastGenerationMixin.greedy_search`: the same on C, and tokens outside
  C are never chosen (logit -inf; the reference writes -1e3) (`generation_logits`).

The assistant is trained (`hf_unlearn.trainers.ULDTrainer`) to remember the forget set and to know nothing of the
retain set (uniform next-token distribution there). A uniform assistant (equal logits c) shifts every candidate by the
same -alpha * c, so generation, which decodes among the candidates only, is exactly the target's: greedy picks the
target's top token (always a candidate), sampling draws from the target's distribution restricted to C. Scoring keeps
non-candidates at l_target as the reference does, so there a uniform assistant with c != 0 moves probability between
C and the rest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import LogitsProcessorList
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..layout import decoder_layer_list, forward_accepts, vocabulary_size
from .generation import SINGLE_SEQUENCE_DEFAULTS, refuse_unsupported, sampling_warpers


ULD_CONFIG_NAME = "uld_config.json"
DEFAULT_ASSISTANT_WEIGHT = 0.8  # alpha: the authors' TOFU setting (bashes/tofu/uld_*.sh, model_mode.weight=-0.8)
DEFAULT_CANDIDATE_THRESHOLD = 0.01  # tau: the authors' TOFU setting (model_mode.top_logit_filter=1e-2)


# ----------------------------------------------------------------------------------------------------------------
# The combination rule (pure functions of logits)


def candidate_mask(target_logits: torch.Tensor, threshold: float = DEFAULT_CANDIDATE_THRESHOLD) -> torch.Tensor:
    """The target's candidate tokens C at each position: its top floor(tau * |V|) tokens and every token with
    probability >= tau * (max probability), i.e. p >= min(p_(k), tau * p_max) with k = floor(tau * |V|)
    (tau = 0: every token). Ties with the k-th token are kept. Boolean, same shape.

    Reference: `relative_top_filter` in github.com/UCSB-NLP-Chang/ULD, `uld/model/gen_util.py` (DoLa's adaptive
    plausibility filter with min_tokens_to_keep = int(tau * |V|)). Deliberate difference: when tau * |V| < 1 (k = 0,
    only vocabularies under 1/tau tokens) the reference indexes the sorted log-probabilities at -1, the least likely
    token, and so keeps every token; here k = 0 leaves the tau * p_max rule alone."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"The candidate threshold tau must be in [0, 1], got {threshold}.")
    log_probs = target_logits.float().log_softmax(-1)
    # log(tau * p_max); log(0) = -inf keeps every token
    bound = log_probs.max(-1, keepdim=True).values + (math.log(threshold) if threshold > 0 else -math.inf)
    top_k = int(threshold * log_probs.shape[-1])
    if top_k > 0:
        bound = torch.minimum(bound, log_probs.topk(top_k, dim=-1).values[..., -1:])
    return log_probs >= bound


def _checked(target_logits: torch.Tensor, assistant_logits: torch.Tensor) -> None:
    if target_logits.shape != assistant_logits.shape:
        raise ValueError(
            f"Target and assistant logits differ in shape: {tuple(target_logits.shape)} vs "
            f"{tuple(assistant_logits.shape)}; ULD needs both models on the same tokens and vocabulary."
        )


def logit_difference(
    target_logits: torch.Tensor,
    assistant_logits: torch.Tensor,
    weight: float = DEFAULT_ASSISTANT_WEIGHT,
    threshold: float = DEFAULT_CANDIDATE_THRESHOLD,
) -> torch.Tensor:
    """ULD's scoring logits: l_target - alpha * l_assistant on the candidate set C (`candidate_mask` with tau =
    `threshold`), l_target outside C, as `ContrastLLM.forward` in github.com/UCSB-NLP-Chang/ULD
    (`uld/model/contrastllm.py`: the assistant's logits are zeroed outside C, then added with weight -alpha). Every
    token keeps a finite probability, so any answer can be scored. Float32, the shape of the inputs."""
    _checked(target_logits, assistant_logits)
    target_logits = target_logits.float()
    keep = candidate_mask(target_logits, threshold)
    return target_logits - weight * assistant_logits.float() * keep


def generation_logits(
    target_logits: torch.Tensor,
    assistant_logits: torch.Tensor,
    weight: float = DEFAULT_ASSISTANT_WEIGHT,
    threshold: float = DEFAULT_CANDIDATE_THRESHOLD,
) -> torch.Tensor:
    """ULD's decoding logits: l_target - alpha * l_assistant on the candidate set C, -inf outside C, as the greedy
    search of github.com/UCSB-NLP-Chang/ULD (`uld/model/gen_util.py`, `ContrastGenerationMixin.greedy_search`: tokens
    outside C are set to -1e3 and excluded from the argmax). The assistant's offset can thus only reorder the target's
    candidates, never promote a token the target finds implausible. Float32, the shape of the inputs."""
    _checked(target_logits, assistant_logits)
    keep = candidate_mask(target_logits, threshold)
    return (target_logits.float() - weight * assistant_logits.float()).masked_fill(~keep, -math.inf)


# ----------------------------------------------------------------------------------------------------------------
# The assistant


def resolve_num_layers(num_layers: int | float, total: int) -> int:
    """A layer count from `num_layers`: a value in (0, 1) is a fraction of `total` (rounded, at least 1), a whole
    number >= 1 is a count (at most `total`)."""
    if 0 < num_layers < 1:
        return max(1, round(num_layers * total))
    if num_layers >= 1 and float(num_layers).is_integer() and num_layers <= total:
        return int(num_layers)
    raise ValueError(
        f"The assistant's layers must be a fraction in (0, 1) or a whole count from 1 to {total} (the target's "
        f"layers), got {num_layers}."
    )


def truncate_model(target, num_layers: int | float = 0.25):
    """A frozen copy of `target` with its embedding, its first K decoder layers (K from `resolve_num_layers`), its
    final norm and LM head; the target is left as it was."""
    if hasattr(target, "peft_config"):
        raise ValueError(
            "ULD builds its assistant from a plain model; the target is a PEFT model. Merge the adapter first "
            "(`target = target.merge_and_unload()`)."
        )
    name, layers = decoder_layer_list(target, "ULD's assistant (a truncated copy of the target)")
    keep = resolve_num_layers(num_layers, len(layers))
    parent_name, _, attribute = name.rpartition(".")
    parent = target.get_submodule(parent_name)
    setattr(parent, attribute, nn.ModuleList(list(layers)[:keep]))
    try:
        assistant = copy.deepcopy(target)  # copies everything but the layers left out
    finally:
        setattr(parent, attribute, layers)
    text_config = assistant.config.get_text_config()
    text_config.num_hidden_layers = keep
    if isinstance(getattr(text_config, "layer_types", None), list):
        text_config.layer_types = text_config.layer_types[:keep]
    return assistant.requires_grad_(False)


def default_lora_config(r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05):
    """ULD's assistant adapter: LoRA on every linear layer but the LM head."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def build_assistant(target, num_layers: int | float = 0.25, lora_config=None):
    """ULD's assistant: `truncate_model(target, num_layers)` (embedding, first K layers, final norm and LM head, all
    frozen) with a trainable LoRA adapter (`lora_config`, `default_lora_config()` when unset). Returns a PeftModel."""
    from peft import get_peft_model

    return get_peft_model(truncate_model(target, num_layers), lora_config or default_lora_config())


# ----------------------------------------------------------------------------------------------------------------
# The logit-difference model


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the tokenizer's token -> id map: equal fingerprints mean the same vocabulary."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]


def _saved_tokenizer(folder: Path):
    """The tokenizer `ULDModel.save_pretrained` (or `ULDTrainer.save_model`) wrote into `folder`, or None."""
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception:  # unreadable tokenizer files: the saved fingerprint is compared instead
        return None


@dataclass
class ULDCache:
    """The KV caches of both models, kept side by side; `batch_select_indices` and `crop` act on both."""

    target: object
    assistant: object

    def get_seq_length(self) -> int:
        return self.target.get_seq_length()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.target.batch_select_indices(indices)
        self.assistant.batch_select_indices(indices)

    def crop(self, max_length: int) -> None:
        self.target.crop(max_length)
        self.assistant.crop(max_length)


class ULDModel(nn.Module):
    """The unlearned model of ULD: the target minus alpha times the assistant on the target's candidate tokens C.

    Scoring (`forward`, `ContrastLLM.forward` of github.com/UCSB-NLP-Chang/ULD): l_target - alpha * l_assistant on C,
    l_target outside C. Generation (`generate`, `ContrastGenerationMixin.greedy_search` there): the same on C, tokens
    outside C excluded. Defaults alpha = 0.8, tau = 0.01: the authors' TOFU settings (`bashes/tofu/uld_train.sh`).

    Call it like a causal LM (`input_ids`, `attention_mask`, `position_ids`, `past_key_values`, `use_cache`,
    `logits_to_keep`); `generate()` decodes greedily or by sampling with both KV caches; `save_pretrained` writes
    the assistant adapter with alpha, tau and a reference to the target, `from_pretrained` reloads it. The
    evaluation core (`hf_unlearn.eval.evaluate_tofu`) takes it like any model.

    Example:
        >>> uld = ULDModel.from_pretrained("outputs/tofu_uld_forget10/model")
        >>> uld.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=48)
    """

    def __init__(self, target, assistant, assistant_weight: float = DEFAULT_ASSISTANT_WEIGHT,
                 candidate_threshold: float = DEFAULT_CANDIDATE_THRESHOLD):
        super().__init__()
        target_vocab, assistant_vocab = vocabulary_size(target), vocabulary_size(assistant)
        if target_vocab != assistant_vocab:
            raise ValueError(
                f"ULD needs the assistant to share the target's tokenizer: the target has {target_vocab} tokens, "
                f"the assistant {assistant_vocab}. Build the assistant from the target (`build_assistant`)."
            )
        if not 0 <= candidate_threshold <= 1:
            raise ValueError(f"candidate_threshold (tau) must be in [0, 1], got {candidate_threshold}.")
        self.target = target
        self.assistant = assistant
        self.assistant_weight = assistant_weight
        self.candidate_threshold = candidate_threshold

    @property
    def config(self):
        return self.target.config

    @property
    def generation_config(self):
        return self.target.generation_config

    @property
    def device(self) -> torch.device:
        return next(self.target.parameters()).device

    def _both(self, input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep):
        """Both models on the same inputs: (target logits, assistant logits, ULDCache or None)."""
        if past_key_values is not None and not isinstance(past_key_values, ULDCache):
            raise TypeError(
                f"ULDModel takes the ULDCache it returned as past_key_values, got {type(past_key_values).__name__}."
            )
        outputs = []
        for model, cache in ((self.target, getattr(past_key_values, "target", None)),
                             (self.assistant, getattr(past_key_values, "assistant", None))):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                      "past_key_values": cache, "use_cache": use_cache}
            if logits_to_keep and forward_accepts(model, "logits_to_keep"):
                kwargs["logits_to_keep"] = logits_to_keep
            outputs.append(model(**kwargs))
        target_out, assistant_out = outputs
        keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        cache = None
        if target_out.past_key_values is not None and assistant_out.past_key_values is not None:
            cache = ULDCache(target_out.past_key_values, assistant_out.past_key_values)
        return target_out.logits[:, keep], assistant_out.logits[:, keep], cache

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: ULDCache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
    ) -> CausalLMOutputWithPast:
        """Both models on the same inputs, their logits combined by `logit_difference` (the scoring rule: non-candidate
        tokens keep the target's logit); the returned `past_key_values` is a `ULDCache` when caching."""
        target_logits, assistant_logits, cache = self._both(input_ids, attention_mask, position_ids, past_key_values,
                                                            use_cache, logits_to_keep)
        logits = logit_difference(target_logits, assistant_logits, self.assistant_weight, self.candidate_threshold)
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache)

    # ----- generation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        **unsupported,
    ) -> torch.LongTensor:
        """Decode left-padded prompts like `generate()` of a decoder-only model: greedy, or sampling with
        temperature / top-k / top-p (`generator` makes it reproducible); unset arguments come from the target's
        generation config. Returns prompt + new tokens, finished rows padded with `pad_token_id`.

        Each step decodes from `generation_logits`: l_target - alpha * l_assistant on the target's candidates, the
        other tokens excluded, as the reference's greedy search does. Sampling warps these same logits, so it draws
        from the candidates only (the reference's `sample` cannot run with the candidate filter on: it unpacks two of
        `relative_top_filter`'s three results; the greedy rule is the one it defines)."""
        refuse_unsupported(unsupported, "ULDModel.generate does not support {names}: it decodes one sequence per "
                           "prompt, greedily or by sampling (do_sample, temperature, top_k, top_p).",
                           {**SINGLE_SEQUENCE_DEFAULTS, "return_dict_in_generate": False})
        config = self.generation_config
        prompt_length = input_ids.shape[1]
        if max_new_tokens is None:
            if max_length is None and config.max_new_tokens is not None:
                max_new_tokens = config.max_new_tokens
            else:
                max_new_tokens = (max_length or config.max_length) - prompt_length
        eos = eos_token_id if eos_token_id is not None else config.eos_token_id
        eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), device=input_ids.device)
        pad = pad_token_id if pad_token_id is not None else config.pad_token_id
        if pad is None:
            pad = int(eos[0]) if len(eos) else 0
        sample = config.do_sample if do_sample is None else do_sample
        warpers = LogitsProcessorList()
        if sample:
            warpers = sampling_warpers(config.temperature if temperature is None else temperature,
                                       config.top_k if top_k is None else top_k,
                                       config.top_p if top_p is None else top_p)

        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.device)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        sequences, unfinished = input_ids, torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        cache, step_ids, step_positions = None, input_ids, positions
        for _ in range(max(0, max_new_tokens)):
            if use_cache:
                target_logits, assistant_logits, cache = self._both(step_ids, mask, step_positions, cache, True, 1)
            else:
                target_logits, assistant_logits, _ = self._both(sequences, mask, positions, None, False, 1)
            logits = generation_logits(target_logits[:, -1], assistant_logits[:, -1], self.assistant_weight,
                                       self.candidate_threshold)
            if sample:
                probs = warpers(sequences, logits).softmax(-1)
                tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                tokens = logits.argmax(-1)
            tokens = torch.where(unfinished, tokens, torch.full_like(tokens, pad))
            sequences = torch.cat([sequences, tokens[:, None]], -1)
            unfinished &= ~torch.isin(tokens, eos)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], -1)
            step_ids, step_positions = tokens[:, None], positions[:, -1:] + 1
            positions = torch.cat([positions, step_positions], -1)
            if not unfinished.any():
                break
        return sequences

    # ----- saving and loading -------------------------------------------------------------------------------------
    def uld_config(self, tokenizer=None, target_name_or_path: str | os.PathLike | None = None) -> dict:
        """What `from_pretrained` needs besides the adapter: the target's reference, the assistant's depth, alpha,
        tau and the vocabulary (size, and the tokenizer's fingerprint when given)."""
        target_name_or_path = str(target_name_or_path or self.target.config._name_or_path or "")
        if not target_name_or_path:
            raise ValueError(
                "The target model has no name or path to refer to: save it first (`target.save_pretrained(dir)`) or "
                "pass `target_name_or_path`."
            )
        return {
            "target_name_or_path": target_name_or_path,
            "assistant_num_layers": self.assistant.config.get_text_config().num_hidden_layers,
            "assistant_weight": self.assistant_weight,
            "candidate_threshold": self.candidate_threshold,
            "vocab_size": vocabulary_size(self.target),
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, tokenizer=None,
                        target_name_or_path: str | os.PathLike | None = None) -> None:
        """Write the assistant's LoRA adapter, `uld_config.json` (target reference, assistant depth, alpha, tau,
        vocabulary) and the tokenizer when given. The target is referred to, not copied."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.uld_config(tokenizer, target_name_or_path)
        self.assistant.save_pretrained(folder)
        (folder / ULD_CONFIG_NAME).write_text(json.dumps(config, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, target=None, tokenizer=None, **load_kwargs) -> ULDModel:
        """Load a saved ULD model: the target from its saved reference (with `load_causal_lm(**load_kwargs)`) or
        the given `target` (and its `tokenizer`), the assistant rebuilt from it with the saved adapter. A target whose
        vocabulary or tokenizer differs from the one the assistant was trained with is refused: the target's tokenizer
        (given, else the one saved with the target) is compared with the one saved in `directory` (token -> id map
        and BOS, EOS and pad tokens), else with its saved fingerprint, else only the vocabulary sizes are."""
        from peft import PeftModel

        from ..compatibility import check_same_tokenizer, tokenizer_of

        folder = Path(directory)
        config_path = folder / ULD_CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{folder} holds no {ULD_CONFIG_NAME}: save a ULD model with `ULDModel.save_pretrained` or "
                "`ULDTrainer.save_model`."
            )
        config = json.loads(config_path.read_text())
        if target is None:
            from ..modeling import load_causal_lm

            target, loaded_tokenizer = load_causal_lm(config["target_name_or_path"], **load_kwargs)
            tokenizer = tokenizer or loaded_tokenizer
        elif tokenizer is None:
            tokenizer = tokenizer_of(target)
        if vocabulary_size(target) != config["vocab_size"]:
            raise ValueError(
                f"ULD needs the assistant to share the target's tokenizer: the assistant in {folder} was trained "
                f"with {config['vocab_size']} tokens, the target has {vocabulary_size(target)}. Load the target it "
                f"was built from ({config['target_name_or_path']})."
            )
        trained_tokenizer = _saved_tokenizer(folder) if tokenizer is not None else None
        if trained_tokenizer is not None:
            check_same_tokenizer(
                trained_tokenizer, tokenizer,
                requirement=f"ULD needs the target to use the tokenizer the assistant in {folder} was trained with, "
                            "not another vocabulary",
                expected_role="its tokenizer", actual_role="the target's",
                fix=f"load the target it was built from ({config['target_name_or_path']}) with its tokenizer",
            )
        trained_with = config.get("tokenizer_fingerprint")
        if tokenizer is not None and trained_with is not None and trained_with != tokenizer_fingerprint(tokenizer):
            raise ValueError(
                f"ULD needs the assistant to share the target's tokenizer: the assistant in {folder} was trained with "
                f"another vocabulary ({len(tokenizer.get_vocab())} tokens in the target's tokenizer, fingerprint "
                f"{tokenizer_fingerprint(tokenizer)} instead of {config['tokenizer_fingerprint']}). Load the target "
                f"it was built from ({config['target_name_or_path']}) with its tokenizer."
            )
        assistant = PeftModel.from_pretrained(truncate_model(target, config["assistant_num_layers"]), folder)
        return cls(target, assistant, config["assistant_weight"], config["candidate_threshold"])
