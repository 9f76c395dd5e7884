"""Causal tracing (Meng et al., 2022, ROME): where in the network does a model recall a fact?

For each fact (a prompt that mentions a subject, and the target the model should continue with):
1. clean run: record every layer's hidden state, MLP output and attention output;
2. corrupted runs: add Gaussian noise e ~ N(0, (nu * sigma)^2) to the input embeddings of every subject token
   (nu = `noise_multiplier`, 3 by default; sigma the standard deviation of the subject tokens' embeddings;
   `num_samples` noise draws, the same draws for every restoration);
3. restored runs: a corrupted run in which one state is set back to its clean value at the subject's tokens (or
   only its last token, ROME's choice, or the positions that predict the target; `CausalTraceConfig.token`) -
   a layer's hidden state (kind "hidden"), or the MLP or attention outputs of a window of layers centred on it.

The traced probability p is the target's length-normalised probability exp(mean_t log p(target_t | prefix)).
The indirect effect of a state is IE = p_restored - p_corrupted (averaged over noise draws, then over facts):
how much of the answer comes back when that state alone is clean. The layers whose MLPs have the largest effect
are where the facts are stored (layers 0-5 of OLMo in SHA256, Agrawal & Huang, 2025), and the natural place to
constrain unlearning to (`hf_unlearn.trainers.LayerConstrainedTrainer`).

Works on Llama-architecture decoders (and others whose decoder layers have `self_attn` and `mlp` submodules);
the subject is located in the prompt by token offsets, so the tokenizer must be a fast one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from matplotlib.figure import Figure

from ..data.formatting import format_prompt, uses_chat_template
from ..layout import check_layer_submodules, forward_hooks, layer_submodule
from ..modeling import eval_mode


KINDS = ("hidden", "mlp", "attention")
TOKENS = ("subject", "last_subject", "prediction")


@dataclass(frozen=True)
class Fact:
    """A fact to trace: the model reads `prompt` and should continue with `target`; `subject` is a substring of
    `prompt` (every occurrence is corrupted)."""

    prompt: str
    subject: str
    target: str


@dataclass
class CausalTraceConfig:
    r"""
    Configuration for `causal_trace`.

    Parameters:
        noise_multiplier (`float`, defaults to `3.0`): nu; the noise's standard deviation is nu * sigma.
        noise_std (`float`, *optional*): sigma; by default the standard deviation of the subject tokens' input
            embeddings over all traced facts.
        num_samples (`int`, defaults to `10`): noise draws per fact.
        window (`int`, *optional*): layers restored together for the "mlp" and "attention" kinds (ROME uses 10 of
            48); by default max(1, num_layers // 5).
        kinds (`tuple[str]`, defaults to `("hidden", "mlp", "attention")`): what to restore.
        token (`str`, defaults to `"subject"`): where states are restored: `"subject"` (every token of every
            occurrence of the subject), `"last_subject"` (the last token of its last occurrence, ROME's early site)
            or `"prediction"` (the positions that predict the target: the last prompt token and the target's tokens
            but its last; ROME's late site).
        suggestion_threshold (`float`, defaults to `0.5`): the suggested layers are the layer with the largest MLP
            effect and its contiguous neighbours whose MLP effect is at least this fraction of the largest.
        batch_size (`int`, defaults to `64`): sequences per forward pass.
        seed (`int`, defaults to `0`): seed of the noise.
    """

    noise_multiplier: float = 3.0
    noise_std: float | None = None
    num_samples: int = 10
    window: int | None = None
    kinds: tuple[str, ...] = KINDS
    token: str = "subject"
    suggestion_threshold: float = 0.5
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds}.")
        if self.token not in TOKENS:
            raise ValueError(f"token must be one of {TOKENS}, got {self.token!r}.")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}.")


@dataclass
class CausalTraceResult:
    """The outcome of `causal_trace`.

    `effects[l][k]` is the mean indirect effect of restoring kind `kinds[k]` at layer l (for "mlp"/"attention":
    the window centred on l) at the `settings["token"]` positions: a (num_layers, len(kinds)) matrix.
    `restored_prob` has the same shape (mean p_restored); `clean_prob` and `corrupted_prob` are per-fact lists;
    `suggested_layers` come from the MLP column (the first kind's when MLPs are not traced).
    """

    effects: list[list[float]]
    restored_prob: list[list[float]]
    kinds: list[str]
    clean_prob: list[float]
    corrupted_prob: list[float]
    suggested_layers: list[int]
    window: int
    noise_std: float
    settings: dict = field(default_factory=dict)

    @property
    def effect_matrix(self) -> torch.Tensor:
        return torch.tensor(self.effects)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """Write `causal_trace.json` and the heatmap `causal_trace.png` into `output_dir`."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        paths = {"json": output_dir / "causal_trace.json", "plot": output_dir / "causal_trace.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2))
        self.plot().savefig(paths["plot"], dpi=120, bbox_inches="tight")
        return paths

    def plot(self, title: str = "Causal tracing: indirect effect of restoring one state") -> Figure:
        """Heatmap of the indirect effects: kinds as rows, layers as columns; suggested layers marked."""
        matrix = self.effect_matrix.T.numpy()
        figure = Figure(figsize=(max(6.0, 0.35 * matrix.shape[1] + 2), 1.2 * len(self.kinds) + 1.5), layout="constrained")
        ax = figure.subplots()
        image = ax.imshow(matrix, aspect="auto", cmap="Purples", vmin=min(0.0, float(matrix.min())))
        ax.set_yticks(range(len(self.kinds)))
        ax.set_yticklabels([k if k == "hidden" else f"{k} (window {self.window})" for k in self.kinds])
        ax.set_xticks(range(matrix.shape[1]))
        ax.set_xlabel("layer")
        for layer in self.suggested_layers:
            ax.axvline(layer, color="orange", linewidth=1, alpha=0.6)
        figure.colorbar(image, ax=ax, label="p(restored) - p(corrupted)")
        mean_clean = sum(self.clean_prob) / len(self.clean_prob)
        mean_corrupt = sum(self.corrupted_prob) / len(self.corrupted_prob)
        ax.set_title(f"{title}\nclean p = {mean_clean:.3f}, corrupted p = {mean_corrupt:.3f}, "
                     f"suggested layers {self.suggested_layers}", fontsize=9)
        return figure


def suggest_layers(mlp_effects: Sequence[float], threshold: float = 0.5) -> list[int]:
    """The layer with the largest MLP effect and its contiguous neighbours whose effect is >= threshold * max."""
    effects = list(mlp_effects)
    best = max(range(len(effects)), key=effects.__getitem__)
    floor = threshold * effects[best]
    start, end = best, best
    while start > 0 and effects[start - 1] >= floor:
        start -= 1
    while end < len(effects) - 1 and effects[end + 1] >= floor:
        end += 1
    return list(range(start, end + 1))


def window_layers(layer: int, window: int, num_layers: int) -> list[int]:
    """The `window` layers centred on `layer`, cut at the ends (ROME's convention)."""
    return list(range(max(0, layer - window // 2), min(num_layers, layer - (-window // 2))))


# ----- tokenization ------------------------------------------------------------------------------------------------
@dataclass
class _TokenizedFact:
    input_ids: list[int]
    subject_positions: list[int]  # every token overlapping an occurrence of the subject
    target_positions: list[int]  # positions of the target tokens in input_ids
    restore_positions: dict[str, list[int]]  # per `CausalTraceConfig.token` choice


def _tokenize_fact(tokenizer, fact: Fact) -> _TokenizedFact:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("Causal tracing locates the subject by token offsets and needs a fast tokenizer "
                         "(load it with `use_fast=True`).")
    text = fact.prompt + fact.target
    encoded = tokenizer(text, add_special_tokens=not uses_chat_template(tokenizer), return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    cut = len(fact.prompt)
    if any(start < cut < end for start, end in offsets):
        raise ValueError(f"The prompt must end at a token boundary, but a token spans it: {fact.prompt[-30:]!r} + "
                         f"{fact.target[:30]!r}. Move the space into the target (e.g. target ' Paris').")
    target_positions = [i for i, (start, end) in enumerate(offsets) if start >= cut and end > start]
    if not target_positions:
        raise ValueError(f"The target {fact.target!r} has no tokens after the prompt.")
    spans = [(m.start(), m.end()) for m in re.finditer(re.escape(fact.subject), fact.prompt)] if fact.subject else []
    if not spans:
        raise ValueError(f"The subject {fact.subject!r} does not occur in the prompt {fact.prompt!r}.")
    subject_positions = [i for i, (start, end) in enumerate(offsets)
                         if end > start and any(start < s_end and end > s_start for s_start, s_end in spans)]
    last_start, last_end = spans[-1]
    last_subject = max(i for i, (start, end) in enumerate(offsets) if end > start and start < last_end and end > last_start)
    restore_positions = {"subject": subject_positions, "last_subject": [last_subject],
                         "prediction": [p - 1 for p in target_positions]}
    return _TokenizedFact(encoded["input_ids"], subject_positions, target_positions, restore_positions)


# ----- model access ------------------------------------------------------------------------------------------------
def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


# ----- the tracer --------------------------------------------------------------------------------------------------
@torch.no_grad()
def causal_trace(model, tokenizer, facts: Sequence[Fact], config: CausalTraceConfig | None = None) -> CausalTraceResult:
    """Trace `facts` through `model`; returns the layers x kinds indirect-effect matrix and suggested layers."""
    config = config or CausalTraceConfig()
    if not facts:
        raise ValueError("Causal tracing needs at least one fact.")
    layers = check_layer_submodules(model, "Causal tracing")
    num_layers = len(layers)
    window = config.window or max(1, num_layers // 5)
    with eval_mode(model):
        tracer = _Tracer(model, tokenizer, [_tokenize_fact(tokenizer, f) for f in facts], layers, config)
        clean = tracer.clean_probs
        corrupted = tracer.probs([], config.token)
        restored = torch.zeros(num_layers, len(config.kinds), len(facts), dtype=torch.float64)
        plans = [
            [(kind, layer)] if kind == "hidden" else [(kind, w) for w in window_layers(layer, window, num_layers)]
            for layer in range(num_layers)
            for kind in config.kinds
        ]
        for index, probs in enumerate(tracer.probs_many(plans, config.token)):
            restored[index // len(config.kinds), index % len(config.kinds)] = probs
    effects = (restored - corrupted).mean(-1)
    mlp_column = config.kinds.index("mlp") if "mlp" in config.kinds else 0
    return CausalTraceResult(
        effects=effects.tolist(),
        restored_prob=restored.mean(-1).tolist(),
        kinds=list(config.kinds),
        clean_prob=clean.tolist(),
        corrupted_prob=corrupted.tolist(),
        suggested_layers=suggest_layers(effects[:, mlp_column].tolist(), config.suggestion_threshold),
        window=window,
        noise_std=tracer.noise_std,
        settings={**asdict(config), "num_facts": len(facts), "num_layers": num_layers,
                  "probability": "exp(mean log p(target tokens))"},
    )


class _Tracer:
    """Clean states of a batch of facts and their noise draws; runs corrupted forwards with chosen states restored.
    A restoration plan is a list of (kind, layer) whose outputs are set back to clean at the `token` positions."""

    def __init__(self, model, tokenizer, facts: list[_TokenizedFact], layers, config: CausalTraceConfig):
        self.model, self.facts, self.layers, self.config = model, facts, layers, config
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.width = max(len(f.input_ids) for f in facts)
        ids = torch.full((len(facts), self.width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, fact in enumerate(facts):
            ids[i, : len(fact.input_ids)] = torch.tensor(fact.input_ids)
            mask[i, : len(fact.input_ids)] = 1
        self.input_ids, self.attention_mask = ids.to(self.device), mask.to(self.device)
        embeddings = model.get_input_embeddings()
        subject_tokens = [ids[i, f.subject_positions] for i, f in enumerate(facts)]
        self.noise_std = config.noise_std or float(embeddings(torch.cat(subject_tokens).to(self.device)).float().std())
        generator = torch.Generator().manual_seed(config.seed)
        hidden = embeddings.weight.shape[1]
        self.noise = torch.zeros(len(facts), config.num_samples, self.width, hidden)
        for i, fact in enumerate(facts):
            draws = torch.randn(config.num_samples, len(fact.subject_positions), hidden, generator=generator)
            self.noise[i][:, fact.subject_positions] = config.noise_multiplier * self.noise_std * draws
        self.clean_states: dict[tuple[str, int], torch.Tensor] = {}
        self.clean_probs = self._clean_run()

    def _clean_run(self) -> torch.Tensor:
        def record(key):
            def hook(module, args, output):
                self.clean_states[key] = _first(output).detach()
            return hook

        keys = [(kind, layer) for kind in self.config.kinds for layer in range(len(self.layers))]
        with forward_hooks([(layer_submodule(self.layers[layer], kind), record((kind, layer))) for kind, layer in keys]):
            logits = self.model(input_ids=self.input_ids, attention_mask=self.attention_mask).logits
        return self._target_probs(logits, torch.arange(len(self.facts)))

    def _target_probs(self, logits: torch.Tensor, fact_index: torch.Tensor) -> torch.Tensor:
        log_probs = logits.float().log_softmax(-1)
        probs = []
        for row, f in enumerate(fact_index.tolist()):
            positions = torch.tensor(self.facts[f].target_positions, device=logits.device)
            targets = self.input_ids[f, positions]
            probs.append(log_probs[row, positions - 1].gather(-1, targets.unsqueeze(-1)).mean().exp())
        return torch.stack(probs).double().cpu()

    def probs(self, plan: list[tuple[str, int]], token: str) -> torch.Tensor:
        """Per-fact p under noise (mean over draws) with the states of `plan` restored at `token` positions."""
        return self.probs_many([plan], token)[0]

    def probs_many(self, plans: list[list[tuple[str, int]]], token: str) -> list[torch.Tensor]:
        num_facts, samples = len(self.facts), self.config.num_samples
        rows = [(p, f, s) for p in range(len(plans)) for f in range(num_facts) for s in range(samples)]
        totals = torch.zeros(len(plans), num_facts, dtype=torch.float64)
        restore_mask = torch.zeros(num_facts, self.width, dtype=torch.bool)
        for f, fact in enumerate(self.facts):
            restore_mask[f, fact.restore_positions[token]] = True
        restore_mask = restore_mask.to(self.device)
        for start in range(0, len(rows), self.config.batch_size):
            chunk = rows[start : start + self.config.batch_size]
            plan_index = torch.tensor([p for p, _, _ in chunk])
            fact_index = torch.tensor([f for _, f, _ in chunk])
            noise = self.noise[fact_index, torch.tensor([s for _, _, s in chunk])].to(self.device)
            registrations = [(self.model.get_input_embeddings(), self._add_noise(noise))]
            for key in {key for p in set(plan_index.tolist()) for key in plans[p]}:
                rows_restoring = torch.tensor([key in plans[p] for p in plan_index.tolist()], device=self.device)
                mask = restore_mask[fact_index.to(self.device)] & rows_restoring[:, None]
                registrations.append((layer_submodule(self.layers[key[1]], key[0]), self._restore(key, fact_index, mask)))
            with forward_hooks(registrations):
                logits = self.model(input_ids=self.input_ids[fact_index.to(self.device)],
                                    attention_mask=self.attention_mask[fact_index.to(self.device)]).logits
            probs = self._target_probs(logits, fact_index)
            for (p, f, _), prob in zip(chunk, probs):
                totals[p, f] += prob
        return list(totals / samples)

    @staticmethod
    def _add_noise(noise: torch.Tensor):
        def hook(module, args, output):
            return output + noise.to(output.dtype)
        return hook

    def _restore(self, key, fact_index: torch.Tensor, mask: torch.Tensor):
        clean = self.clean_states[key][fact_index.to(self.device)]

        def hook(module, args, output):
            value = _first(output)
            return _replace_first(output, torch.where(mask.unsqueeze(-1), clean.to(value.dtype), value))
        return hook


@torch.no_grad()
def restored_probability(
    model, tokenizer, facts: Sequence[Fact], plan: list[tuple[str, int]], config: CausalTraceConfig | None = None
) -> dict[str, torch.Tensor]:
    """Per-fact clean, corrupted and restored p for one restoration `plan` (a list of (kind, layer)) at the
    `config.token` positions. For checks and ablations."""
    config = config or CausalTraceConfig()
    with eval_mode(model):
        tracer = _Tracer(model, tokenizer, [_tokenize_fact(tokenizer, f) for f in facts], check_layer_submodules(model, "Causal tracing"), config)
        return {"clean": tracer.clean_probs, "corrupted": tracer.probs([], config.token),
                "restored": tracer.probs(plan, config.token)}


# ----- facts from QA rows ------------------------------------------------------------------------------------------
def qa_fact(tokenizer, question: str, answer: str, subject: str, target: str | None = None) -> Fact:
    """A fact from a question/answer pair, formatted as the package trains and evaluates (`format_prompt`).

    With `target` (a substring of the answer, e.g. the attribute value; its last occurrence), the prompt is the
    question plus the answer up to the target; without it the whole answer is the target.
    """
    prompt = format_prompt(tokenizer, question)
    answer = answer if uses_chat_template(tokenizer) else " " + answer.lstrip()
    if target is None:
        return Fact(prompt, subject, answer)
    cut = answer.rfind(target)
    if cut < 0:
        raise ValueError(f"The target {target!r} does not occur in the answer {answer!r}.")
    prefix = answer[:cut]
    if prefix.endswith(" "):  # the space belongs to the target's first token in byte-level BPE tokenizers
        prefix, target = prefix[:-1], " " + target
    return Fact(prompt + prefix, subject, target)


def embedded_facts(tokenizer, rows: Sequence[dict]) -> list[Fact]:
    """Facts of the embedded benchmark's QA rows: the author's name is the subject, the attribute value the
    target. Rows that do not match the world's canonical phrasings are skipped."""
    from ..benchmarks.embedded_world import ATTRIBUTES

    patterns = []
    for spec in ATTRIBUTES.values():
        question = re.compile("^" + re.escape(spec["questions"][0]).replace(re.escape("{name}"), "(?P<name>.+)") + "$")
        answer = re.compile("^" + re.escape(spec["answers"][0]).replace(re.escape("{name}"), "(?P<name>.+?)")
                            .replace(re.escape("{value}"), "(?P<value>.+?)") + "$")
        patterns.append((question, answer))
    facts = []
    for row in rows:
        for question_pattern, answer_pattern in patterns:
            q, a = question_pattern.match(row["question"]), answer_pattern.match(row["answer"])
            if q and a and q["name"] == a["name"]:
                facts.append(qa_fact(tokenizer, row["question"], row["answer"], q["name"], a["value"]))
                break
    return facts
