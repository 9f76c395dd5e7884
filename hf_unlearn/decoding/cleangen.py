"""CleanGen: a decoding-time defence against backdoored language models.

Li et al., 2024, "CleanGen: Mitigating Backdoor Attacks for Generation Tasks in Large Language Models". The
possibly backdoored target model proposes k tokens; a reference model that the same attacker did not compromise
scores them in one forward pass; the first proposed token t whose suspicion score

    s(t) = P_target(t | x) / P_reference(t | x)

reaches alpha is dropped together with the rest of the window and the reference's most likely token at that
position is emitted instead. Unlike the authors' code, which recomputes both models over the whole sequence at
every step, both KV caches are kept across windows and cropped after a replacement, as in speculative decoding.

With greedy decoding the output does not depend on k: it is the token-by-token rule "emit the target's greedy
token unless its suspicion score reaches alpha, else the reference's greedy token"; k only sets how many tokens
the reference scores per forward pass.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.stopping_criteria import StopStringCriteria

from ..compatibility import check_same_tokenizer, context_length, tokenizer_of
from ..data.formatting import ensure_pad_token, left_padded_prompts
from ..layout import forward_accepts, vocabulary_size
from .generation import refuse_unsupported, sampling_warpers


@dataclass
class CleanGenConfig:
    """Parameters of CleanGen decoding; every one can be overridden per call of `CleanGenGenerator.generate`.

    Parameters that control the defence:
        proposal_length (`int`, default 4): k, the number of tokens the target proposes (greedily, with its KV
            cache) before the reference scores them all in one forward pass.
        suspicion_threshold (`float`, default 20.0): alpha; a proposed token t is suspicious when
            P_target(t) / P_reference(t) >= alpha.
        use_cache (`bool`, default True): keep both models' KV caches across windows (cropped after a
            replacement). False recomputes both models over the whole sequence at every forward pass, as the
            authors' code does; the tokens are the same.

    Parameters that control generation (as in `generate()`):
        max_new_tokens (`int`, default 64): the most tokens generated per prompt.
        do_sample (`bool`, default False): greedy decoding when False. When True, the target's proposals are sampled
            from its distribution after `temperature`/`top_k`/`top_p`, and a replacement is sampled from the
            reference's distribution after the same warpers. The suspicion score always uses both models' raw
            probabilities (softmax of the logits, no temperature), so the defence does not depend on the warpers.
        temperature (`float`, default 1.0), top_k (`int`, optional), top_p (`float`, optional): sampling warpers,
            used only when `do_sample`.
    """

    proposal_length: int = 4
    suspicion_threshold: float = 20.0
    use_cache: bool = True
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if self.proposal_length < 1:
            raise ValueError(f"proposal_length (k) must be at least 1, got {self.proposal_length}.")
        if self.suspicion_threshold <= 0:
            raise ValueError(
                f"suspicion_threshold (alpha) must be positive, got {self.suspicion_threshold}; the paper uses 20."
            )
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be non-negative, got {self.max_new_tokens}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}; for greedy use do_sample=False.")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1 (or None), got {self.top_k}.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (or None), got {self.top_p}.")


def suspicion_scores(target_logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> torch.Tensor:
    """log s = log P_target(t) - log P_reference(t) for each proposed token t (any matching shapes)."""
    return target_logprobs - reference_logprobs


def first_suspicious_index(log_scores: torch.Tensor, log_alpha: float, valid_lengths: torch.Tensor) -> torch.Tensor:
    """Per row of `log_scores` [batch, window], the index of the first score with log s >= log alpha among the
    first `valid_lengths[row]` entries, or the window size when there is none."""
    window = log_scores.shape[-1]
    in_range = torch.arange(window, device=log_scores.device) < valid_lengths[:, None]
    suspicious = (log_scores >= log_alpha) & in_range
    return torch.where(suspicious.any(-1), suspicious.int().argmax(-1), torch.full_like(valid_lengths, window))


@dataclass(frozen=True)
class Replacement:
    """One token the reference replaced: its index among the generated tokens, the target's proposal, the
    reference's token emitted instead, and the suspicion score P_target / P_reference of the proposal."""

    position: int
    target_token: int
    reference_token: int
    suspicion_score: float


@dataclass
class CleanGenOutput:
    """Result of `CleanGenGenerator.generate(..., return_dict_in_generate=True)`.

    `sequences` has the layout of `generate()`: the prompts as given (left padding kept) followed by the generated
    tokens, right-padded with the pad token. `target_forward_passes` and `reference_forward_passes` count batched
    forward calls of each model (plain greedy `generate()` makes one target call per generated token).
    """

    sequences: torch.LongTensor
    num_generated_tokens: list[int]
    replacements: list[list[Replacement]]
    target_forward_passes: int
    reference_forward_passes: int
    texts: list[str] | None = None

    @property
    def num_replaced_tokens(self) -> list[int]:
        return [len(r) for r in self.replacements]

    @property
    def replaced_fraction(self) -> float:
        """Replaced tokens over generated tokens, over the whole batch."""
        return sum(self.num_replaced_tokens) / max(1, sum(self.num_generated_tokens))


@dataclass
class _Settings:
    proposal_length: int
    log_alpha: float
    use_cache: bool
    max_new_tokens: int
    eos_token_ids: set[int]
    pad_token_id: int
    warpers: LogitsProcessorList | None
    stopping_criteria: StoppingCriteriaList
    generator: torch.Generator | None = field(default=None)
    budgets: list[int] = field(default_factory=list)  # per row: max_new_tokens, clipped to the context


def _check_same_tokenizer(target, reference, tokenizer=None, reference_tokenizer=None) -> None:
    """Refuse a reference whose tokenizer maps tokens to other ids than the suspect's, or has another BOS token: its
    probabilities would be of other texts. The tokenizers are the given ones, else those saved with the models; when
    either cannot be had, the vocabulary sizes (compared by the caller) are all that is checked.

    EOS and pad tokens may differ (an instruct model and its base model often do): CleanGen stops at the suspect's
    EOS and masks the padding, so the reference's never take part."""
    suspect_tokenizer = tokenizer if tokenizer is not None else tokenizer_of(target)
    if suspect_tokenizer is None:
        return
    reference_tokenizer = reference_tokenizer if reference_tokenizer is not None else tokenizer_of(reference)
    if reference_tokenizer is None:
        return
    check_same_tokenizer(
        suspect_tokenizer, reference_tokenizer,
        requirement="CleanGen needs the reference model to share the suspect's tokenizer",
        expected_role="the suspect's tokenizer", actual_role="the reference's",
        fix="use a reference model from the same tokenizer family, e.g. the base model the suspect was fine-tuned "
            "from",
        special_tokens=("bos",),
    )


def _as_id_set(token_ids) -> set[int]:
    if token_ids is None:
        return set()
    if isinstance(token_ids, torch.Tensor):
        return {int(t) for t in token_ids.flatten().tolist()}
    if isinstance(token_ids, int):
        return {token_ids}
    return {int(t) for t in token_ids}


class CleanGenGenerator:
    """Generate with a possibly backdoored `target` model, guarded by a `reference` model (CleanGen).

    Both models must share the tokenizer (same token -> id map and BOS token; checked when both tokenizers are at
    hand: `tokenizer` or the one saved with the target, `reference_tokenizer` or the one saved with the reference,
    else only the vocabulary sizes are compared). A prompt must leave room for a new token within the models' context
    (the smaller of their `max_position_embeddings`); longer answers are clipped to it. `generate` takes the
    arguments of `generate()` that matter here and returns the same tensor (or a `CleanGenOutput` with statistics);
    `generate_text` takes prompt strings or chat conversations.

    Example:
        >>> guard = CleanGenGenerator(backdoored_model, reference_model, CleanGenConfig(suspicion_threshold=20))
        >>> out = guard.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=64,
        ...                      return_dict_in_generate=True)
        >>> tokenizer.decode(out.sequences[0]), out.num_replaced_tokens
    """

    def __init__(self, target, reference, config: CleanGenConfig | None = None, tokenizer=None,
                 reference_tokenizer=None):
        target_vocab, reference_vocab = vocabulary_size(target), vocabulary_size(reference)
        if target_vocab != reference_vocab:
            raise ValueError(
                f"CleanGen needs the reference to share the target's tokenizer and vocabulary: the target has "
                f"{target_vocab} tokens, the reference {reference_vocab}. Pick a reference from the same model family "
                "(same tokenizer), e.g. the base model the target was fine-tuned from."
            )
        if reference is not target:
            _check_same_tokenizer(target, reference, tokenizer, reference_tokenizer)
        contexts = {"suspect": context_length(target), "reference": context_length(reference)}
        self._context = min((c for c in contexts.values() if c is not None), default=None)
        self._context_owner = "suspect" if contexts["suspect"] == self._context else "reference"
        self.target = target
        self.reference = reference
        self.config = config or CleanGenConfig()
        self.tokenizer = tokenizer
        self._target_keeps_logits = forward_accepts(target, "logits_to_keep")
        self._reference_keeps_logits = forward_accepts(reference, "logits_to_keep")

    @classmethod
    def from_pretrained(cls, target_name_or_path, reference_name_or_path, config: CleanGenConfig | None = None,
                        **load_kwargs) -> CleanGenGenerator:
        """Load both models (Hub names, local folders or GGUF files) with `hf_unlearn.modeling.load_causal_lm`;
        the target's tokenizer is kept for `generate_text`."""
        from ..modeling import load_causal_lm

        target, tokenizer = load_causal_lm(target_name_or_path, **load_kwargs)
        reference, reference_tokenizer = load_causal_lm(reference_name_or_path, **load_kwargs)
        return cls(target.eval(), reference.eval(), config, tokenizer, reference_tokenizer)

    # ------------------------------------------------------------------ generate()-compatible entry points

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        stop_strings: str | list[str] | None = None,
        tokenizer=None,
        generator: torch.Generator | None = None,
        proposal_length: int | None = None,
        suspicion_threshold: float | None = None,
        use_cache: bool | None = None,
        return_dict_in_generate: bool = False,
        **unsupported,
    ) -> torch.LongTensor | CleanGenOutput:
        """Decode left-padded prompts with CleanGen; arguments as in `generate()`, unset ones from the config and
        the target's generation config (EOS and pad ids). Returns the sequences, or a `CleanGenOutput` with the
        statistics when `return_dict_in_generate`. Batches are decoded with per-row acceptance."""
        refuse_unsupported(unsupported, "CleanGenGenerator.generate does not support {names}. It decodes one "
                           "sequence per prompt (no beams), greedily or by sampling; see CleanGenConfig for the "
                           "supported options.")
        settings = self._settings(
            input_ids, max_new_tokens, max_length, eos_token_id, pad_token_id, do_sample, temperature, top_k, top_p,
            stopping_criteria, stop_strings, tokenizer, generator, proposal_length, suspicion_threshold, use_cache,
        )
        input_ids = input_ids.to(self.target.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(input_ids.device)
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids must be [batch, length] with an attention_mask of the same shape; got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}."
            )
        if not bool(attention_mask[:, -1].all()):
            raise ValueError(
                "CleanGen needs left-padded prompts (every row's last token real), like batched `generate()` of a "
                "decoder-only model: set `tokenizer.padding_side = 'left'`."
            )
        settings.budgets = self._budgets(attention_mask, settings.max_new_tokens)
        output = self._decode(input_ids, attention_mask, settings)
        return output if return_dict_in_generate else output.sequences

    def generate_text(self, prompts, tokenizer=None, **generate_kwargs) -> list[str] | CleanGenOutput:
        """Generate answers to prompts given as text (used as is) or as chat conversations (lists of
        `{"role", "content"}` messages, formatted with the tokenizer's chat template and a generation prompt).

        Returns the decoded new text of each prompt, or a `CleanGenOutput` with `.texts` filled when
        `return_dict_in_generate=True`.
        """
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("generate_text needs a tokenizer: pass `tokenizer=` here or to CleanGenGenerator.")
        ensure_pad_token(tokenizer)
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)):
            prompts = [prompts]
        encoded = []
        for prompt in prompts:
            if isinstance(prompt, str):
                encoded.append(tokenizer(prompt)["input_ids"])
            else:
                if not getattr(tokenizer, "chat_template", None):
                    raise ValueError(
                        "A chat conversation was given but the tokenizer has no chat template: pass the prompt as "
                        "text, or set `tokenizer.chat_template`."
                    )
                ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
                encoded.append(list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids))
        batch = left_padded_prompts(encoded, tokenizer.pad_token_id)
        want_dict = generate_kwargs.pop("return_dict_in_generate", False)
        generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        output = self.generate(**batch, return_dict_in_generate=True, **generate_kwargs)
        output.texts = tokenizer.batch_decode(output.sequences[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return output if want_dict else output.texts

    # ------------------------------------------------------------------ settings

    def _budgets(self, attention_mask: torch.Tensor, max_new_tokens: int) -> list[int]:
        """Per prompt, the most tokens it may generate: `max_new_tokens`, clipped (with a warning) so that no token
        comes from a position past the models' context. A prompt that leaves no room for one new token is refused.

        Clipped rather than refused, as `generate()` caps its default `max_length` at `max_position_embeddings`:
        `max_new_tokens` is an upper bound, most answers end at EOS well before it, and one budget fits prompts of
        every length; tokens past the context would only be the models' extrapolation, garbage for RoPE models and
        an index error for learned positions."""
        lengths = [int(n) for n in attention_mask.sum(-1).tolist()]
        limit = self._context
        if limit is None or max_new_tokens <= 0:
            return [max_new_tokens] * len(lengths)
        context = f"the {self._context_owner}'s context of {limit} tokens"
        too_long = [row for row, n in enumerate(lengths) if n >= limit]
        if too_long:
            row = too_long[0]
            raise ValueError(
                f"CleanGen cannot answer prompt {row}: its {lengths[row]} tokens fill {context} and leave no room for "
                f"a new token ({len(too_long)} of {len(lengths)} prompts are that long); shorten the prompts to at "
                f"most {limit - 1} tokens, or use models with a longer context."
            )
        budgets = [min(max_new_tokens, limit - n) for n in lengths]
        clipped = [row for row, budget in enumerate(budgets) if budget < max_new_tokens]
        if clipped:
            row = clipped[0]
            warnings.warn(
                f"max_new_tokens={max_new_tokens} runs past {context} for {len(clipped)} of {len(lengths)} prompts "
                f"(prompt {row}: {lengths[row]} tokens); each of them generates at most as many tokens as fit "
                f"({budgets[row]} for prompt {row}), since tokens past the context would come from positions the "
                "models were never trained on.",
                stacklevel=4,  # the caller of `generate` (under its no_grad wrapper)
            )
        return budgets

    def _settings(self, input_ids, max_new_tokens, max_length, eos_token_id, pad_token_id, do_sample, temperature,
                  top_k, top_p, stopping_criteria, stop_strings, tokenizer, generator, proposal_length,
                  suspicion_threshold, use_cache) -> _Settings:
        c = self.config
        overrides = {
            "proposal_length": proposal_length, "suspicion_threshold": suspicion_threshold, "use_cache": use_cache,
            "max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature, "top_k": top_k,
            "top_p": top_p,
        }
        c = CleanGenConfig(**{**c.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
        budget = c.max_new_tokens
        if max_length is not None and max_new_tokens is None:
            budget = max(0, max_length - input_ids.shape[-1])
        generation_config = getattr(self.target, "generation_config", None)
        if eos_token_id is None and generation_config is not None:
            eos_token_id = generation_config.eos_token_id
        if pad_token_id is None and generation_config is not None:
            pad_token_id = generation_config.pad_token_id
        eos_ids = _as_id_set(eos_token_id)
        if pad_token_id is None:
            pad_token_id = min(eos_ids) if eos_ids else 0
        warpers = sampling_warpers(c.temperature, c.top_k, c.top_p) if c.do_sample else None
        criteria = StoppingCriteriaList(stopping_criteria or [])
        if stop_strings is not None:
            tokenizer = tokenizer or self.tokenizer
            if tokenizer is None:
                raise ValueError("stop_strings needs a tokenizer: pass `tokenizer=` as with `generate()`.")
            criteria.append(StopStringCriteria(tokenizer, stop_strings))
        return _Settings(
            proposal_length=c.proposal_length,
            log_alpha=math.log(c.suspicion_threshold),
            use_cache=c.use_cache,
            max_new_tokens=budget,
            eos_token_ids=eos_ids,
            pad_token_id=int(pad_token_id),
            warpers=warpers,
            stopping_criteria=criteria,
            generator=generator,
        )

    # ------------------------------------------------------------------ decoding

    def _choose(self, logits: torch.Tensor, settings: _Settings) -> torch.Tensor:
        """Greedy token, or a sample from the warped distribution, for logits [..., vocab]."""
        if settings.warpers is None:
            return logits.argmax(-1)
        shape = logits.shape[:-1]
        flat = settings.warpers(None, logits.reshape(-1, logits.shape[-1]))
        probs = flat.softmax(-1)
        return torch.multinomial(probs, 1, generator=settings.generator).reshape(shape)

    def _forward(self, model, keeps_logits, tokens, mask, positions, cache, start, end, n_logits) -> torch.Tensor:
        """Logits [batch, n_logits, vocab] (float32) at columns end-n_logits .. end-1, feeding columns start..end-1
        into `cache` (or all columns 0..end-1 without a cache)."""
        if cache is None:
            start = 0
        device = model.device
        position_ids = positions[:, start:end]
        if self._context is not None:  # only columns no row keeps (past a row's budget or after its end) go beyond
            position_ids = position_ids.clamp(max=self._context - 1)
        kwargs = {
            "input_ids": tokens[:, start:end].to(device),
            "attention_mask": mask[:, :end].to(device),
            "position_ids": position_ids.to(device),
            "use_cache": cache is not None,
        }
        if cache is not None:
            kwargs["past_key_values"] = cache
        if keeps_logits:
            kwargs["logits_to_keep"] = n_logits
        logits = model(**kwargs).logits[:, -n_logits:, :]
        return logits.to(device=tokens.device, dtype=torch.float32)

    def _decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: _Settings) -> CleanGenOutput:
        """The CleanGen loop over a batch, with per-row acceptance.

        Column layout shared by both models: `tokens`, `mask` and `positions` hold every token fed so far, column by
        column; the last column is the pending token that no cache holds yet. A row that keeps fewer proposals than
        another row keeps its dropped columns as masked holes, so one cache serves rows that accepted different
        numbers of tokens; columns that no row keeps are cropped from both caches.
        """
        batch = input_ids.shape[0]
        device = input_ids.device
        tokens, mask = input_ids, attention_mask.long()
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        next_position = positions[:, -1] + 1
        caches = [None, None]
        if settings.use_cache:
            caches = [DynamicCache(config=self.target.config), DynamicCache(config=self.reference.config)]
        fed = [0, 0]  # columns held by the target's and the reference's cache
        generated: list[list[int]] = [[] for _ in range(batch)]
        replacements: list[list[Replacement]] = [[] for _ in range(batch)]
        budgets = settings.budgets or [settings.max_new_tokens] * batch
        active = [budget > 0 for budget in budgets]
        passes = [0, 0]
        eos = torch.tensor(sorted(settings.eos_token_ids), dtype=torch.long, device=device)

        while any(active):
            remaining = torch.tensor(
                [budget - len(g) if a else 0 for g, a, budget in zip(generated, active, budgets)], device=device
            )
            window = min(settings.proposal_length, int(remaining.max()))
            start_column = tokens.shape[1]

            # 1. The target proposes up to `window` tokens, one forward pass each (with its cache).
            proposals, target_logprobs = [], []
            done_proposing = ~torch.tensor(active, device=device)
            for j in range(window):
                logits = self._forward(self.target, self._target_keeps_logits, tokens, mask, positions, caches[0],
                                       fed[0], tokens.shape[1], 1)[:, 0]
                passes[0] += 1
                fed[0] = tokens.shape[1]
                token = self._choose(logits, settings)
                proposals.append(token)
                target_logprobs.append(logits.log_softmax(-1).gather(-1, token[:, None])[:, 0])
                tokens = torch.cat([tokens, token[:, None]], dim=1)
                mask = torch.cat([mask, torch.ones_like(token)[:, None]], dim=1)
                positions = torch.cat([positions, (next_position + j)[:, None]], dim=1)
                done_proposing |= torch.isin(token, eos) | (remaining <= j + 1)
                if bool(done_proposing.all()):
                    break
            window = len(proposals)
            proposed = torch.stack(proposals, dim=1)  # [batch, window]

            # 2. The reference scores all proposals in one forward pass (with its cache).
            end = start_column + window - 1
            reference_logits = self._forward(self.reference, self._reference_keeps_logits, tokens, mask, positions,
                                             caches[1], fed[1], end, window)
            passes[1] += 1
            fed[1] = end
            reference_logprobs = reference_logits.log_softmax(-1).gather(-1, proposed[..., None])[..., 0]

            # 3. Per row: the first proposal with s >= alpha (within the row's budget and up to its first EOS).
            log_scores = suspicion_scores(torch.stack(target_logprobs, dim=1), reference_logprobs)
            is_eos = torch.isin(proposed, eos)
            first_eos = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, torch.full_like(remaining, window))
            valid = torch.minimum(torch.minimum(first_eos, remaining), torch.full_like(remaining, window))
            first = first_suspicious_index(log_scores, settings.log_alpha, valid)
            replaced = (first < valid) & torch.tensor(active, device=device)
            replacement = torch.full_like(first, settings.pad_token_id)
            if bool(replaced.any()):  # the reference's token at the first suspicious position (drawn only there)
                at_first = reference_logits[torch.arange(batch, device=device), first.clamp(max=window - 1)]
                replacement[replaced] = self._choose(at_first[replaced], settings)

            # 4. Emit, check the stopping rules, and record how many proposal columns each live row keeps.
            kept_columns: dict[int, int] = {}
            pending = {}
            first_list, valid_list = first.tolist(), valid.tolist()
            proposed_list, replacement_list = proposed.tolist(), replacement.tolist()
            for row in range(batch):
                if not active[row]:
                    continue
                f, v = first_list[row], valid_list[row]
                emitted = proposed_list[row][:f] + [replacement_list[row]] if f < v else proposed_list[row][:v]
                replaced_at = len(generated[row]) + f
                stopped = self._emit(row, emitted, generated, input_ids, settings)
                if f < v and replaced_at < len(generated[row]):  # unless a stopping rule cut the row before it
                    replacements[row].append(Replacement(
                        position=replaced_at,
                        target_token=proposed_list[row][f],
                        reference_token=replacement_list[row],
                        suspicion_score=math.exp(float(log_scores[row, f])),
                    ))
                if stopped:
                    active[row] = False
                    continue
                kept_columns[row] = f if f < v else window - 1
                pending[row] = emitted[-1]
            if not any(active):
                break

            # 5. Lay out the next window: keep the columns some live row still needs, mask the others' holes, and
            #    crop both caches to the kept columns (as in speculative decoding).
            keep = max(kept_columns.values())
            tokens, mask, positions = (t[:, : start_column + keep] for t in (tokens, mask, positions))
            mask = mask.clone()
            pending_token = torch.full((batch,), settings.pad_token_id, dtype=torch.long, device=device)
            pending_position = next_position.clone()
            for row, kept in kept_columns.items():
                mask[row, start_column + kept:] = 0
                pending_token[row] = pending[row]
                pending_position[row] = next_position[row] + kept
            tokens = torch.cat([tokens, pending_token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(pending_token)[:, None]], dim=1)
            positions = torch.cat([positions, pending_position[:, None]], dim=1)
            next_position = pending_position + 1
            for i, cache in enumerate(caches):
                if cache is not None and fed[i] > start_column + keep:
                    cache.crop(start_column + keep - fed[i])  # a negative count removes that many columns
                fed[i] = min(fed[i], start_column + keep)

        width = max((len(g) for g in generated), default=0)
        new = torch.full((batch, width), settings.pad_token_id, dtype=torch.long, device=device)
        for row, g in enumerate(generated):
            new[row, : len(g)] = torch.tensor(g, dtype=torch.long, device=device)
        return CleanGenOutput(
            sequences=torch.cat([input_ids, new], dim=1),
            num_generated_tokens=[len(g) for g in generated],
            replacements=replacements,
            target_forward_passes=passes[0],
            reference_forward_passes=passes[1],
        )

    @staticmethod
    def _emit(row: int, emitted: list[int], generated: list[list[int]], input_ids, settings: _Settings) -> bool:
        """Append `emitted` to the row token by token; True when the row stops (EOS, budget or a criterion), with
        the tokens after the stop discarded."""
        budget = settings.budgets[row] if settings.budgets else settings.max_new_tokens
        for token in emitted:
            generated[row].append(token)
            if token in settings.eos_token_ids or len(generated[row]) >= budget:
                return True
            if settings.stopping_criteria:
                so_far = torch.cat([input_ids[row], input_ids.new_tensor(generated[row])])[None]
                if bool(settings.stopping_criteria(so_far, None).any()):
                    return True
        return False
