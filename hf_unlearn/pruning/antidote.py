"""Antidote: one-shot pruning of the weights that carry harmful behaviour after harmful fine-tuning.

Huang et al., 2024, "Antidote: Post-fine-tuning Safety Alignment for Large Language Models against Harmful
Fine-tuning". Each weight of the chosen linear layers gets the Wanda score (Sun et al., 2024)

    S_ij = |W_ij| * ||X_j||_2,

where X_j is input feature j of the layer over every token of a re-alignment set of harmful prompts with harmful
answers; in each output row the top `dense_ratio` fraction of scores is zeroed (Wanda zeroes the lowest scores to
compress a model; Antidote zeroes the highest, the weights most active on harmful data). One shot, no retraining.

By default the layers are the LoRA adapter's `lora_A`/`lora_B` on q/k/v when the model is a PEFT model (the pruned
adapter is the deliverable: `model.save_pretrained(...)` saves it), and the full q/k/v weights otherwise. With
`sequential=True` the decoder layers are calibrated in order, each on the outputs of the already pruned earlier
layers, as Wanda does. Only squared feature norms are accumulated, so memory does not grow with the calibration set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.formatting import ensure_pad_token, pad_examples, tokenize_qa
from ..layout import decoder_layer_index, forward_hooks
from ..modeling import eval_mode


SCORES = ("wanda", "magnitude", "random")
PRUNE_COUNTS = ("floor", "release")


@dataclass
class AntidoteConfig:
    r"""
    Configuration of `antidote_prune`.

    Parameters that control what is pruned:
        dense_ratio (`float`, defaults to `0.1`):
            Fraction of each output row's weights to zero: the `floor(dense_ratio * in_features)` highest scores
            (see `prune_count`).
        prune_count (`str`, defaults to `"floor"`):
            How many weights per row `dense_ratio` means. `"floor"`: floor(dense_ratio * columns). `"release"`: the
            authors' release, columns - int(columns * (1 - dense_ratio)), one more weight whenever the product is
            fractional (a rank-8 `lora_B` row: 1 of 8 at 0.1 instead of 0). `"floor"` is the default on purpose:
            with `"release"` on SmolLM2-135M (552000 of 4884480 LoRA weights at 0.1 instead of 393120) pruning by
            magnitude alone brought the harmful score from 1.00 to 0.58, so the data-free baseline no longer
            separates from Antidote.
        score (`str`, defaults to `"wanda"`):
            `"wanda"` (|W_ij| * ||X_j||_2 on the re-alignment data, Antidote), or the baselines `"magnitude"` (|W_ij|,
            no data) and `"random"` (uniform random scores: random pruning of the same number of weights per row).
        target_modules (`list[str]`, defaults to `["q_proj", "k_proj", "v_proj"]`):
            Names (last component) of the linear layers to prune. On a PEFT model their LoRA `lora_A` and `lora_B`
            are pruned, on a plain model their full weights.
        adapter_name (`str`, *optional*):
            The LoRA adapter to prune on a PEFT model; defaults to the active one.

    Parameters that control the calibration (`score="wanda"` only):
        batch_size (`int`, defaults to `8`):
            Re-alignment examples per forward pass.
        max_length (`int`, defaults to `256`):
            Maximum tokens of prompt plus answer; longer answers are truncated.
        sequential (`bool`, defaults to `True`):
            Calibrate and prune decoder layer by decoder layer, each on the outputs of the pruned earlier layers
            (one pass over the data per layer); `False` calibrates every layer in one pass on the unpruned model,
            as the authors' release computes every mask.
        progress (`bool`, defaults to `True`):
            Show a progress bar over the calibration batches.

    Other parameters:
        seed (`int`, defaults to `0`):
            Seed of the random scores.
    """

    dense_ratio: float = field(default=0.1, metadata={"help": "Fraction of each output row's weights to zero."})
    score: str = field(default="wanda", metadata={"help": "wanda (Antidote), magnitude or random."})
    prune_count: str = field(default="floor", metadata={"help": "Weights per row: floor or release (the authors')."})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj"], metadata={"help": "Linear layers to prune."}
    )
    adapter_name: str | None = field(default=None, metadata={"help": "LoRA adapter to prune (default: active)."})
    batch_size: int = field(default=8, metadata={"help": "Re-alignment examples per forward pass."})
    max_length: int = field(default=256, metadata={"help": "Maximum tokens of prompt plus answer."})
    sequential: bool = field(default=True, metadata={"help": "Calibrate and prune decoder layer by layer."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar over calibration batches."})
    seed: int = field(default=0, metadata={"help": "Seed of the random scores."})

    def __post_init__(self):
        if not 0.0 <= self.dense_ratio < 1.0:
            raise ValueError(
                f"dense_ratio must be in [0, 1), got {self.dense_ratio}: it is the fraction of each row to zero."
            )
        if self.prune_count not in PRUNE_COUNTS:
            raise ValueError(f"prune_count must be one of {PRUNE_COUNTS}, got {self.prune_count!r}.")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}.")
        if not self.target_modules:
            raise ValueError("target_modules is empty: name the linear layers to prune, e.g. ['q_proj', 'v_proj'].")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AntidoteSummary:
    """What `antidote_prune` zeroed: weights per module (`pruned`) out of the module's weights (`total`)."""

    score: str
    dense_ratio: float
    pruned: dict[str, int]
    total: dict[str, int]
    calibration_tokens: int

    @property
    def num_pruned(self) -> int:
        return sum(self.pruned.values())

    @property
    def num_total(self) -> int:
        return sum(self.total.values())

    @property
    def layers(self) -> list[int]:
        """Indices of the decoder layers that lost weights."""
        return sorted({i for name, n in self.pruned.items() if n and (i := decoder_layer_index(name)) is not None})

    def to_dict(self) -> dict:
        return {**asdict(self), "num_pruned": self.num_pruned, "num_total": self.num_total, "layers": self.layers}


# ---- scores and masks: pure functions over tensors ---------------------------------------------------------------


def squared_feature_norms(inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """sum_t X_tj^2 over the tokens t of `inputs` (..., in_features) where `mask` (...) is nonzero."""
    flat = inputs.reshape(-1, inputs.shape[-1]).float()
    if mask is not None:
        flat = flat[mask.reshape(-1).bool()]
    return flat.pow(2).sum(dim=0)


def wanda_scores(weight: torch.Tensor, squared_norms: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| * ||X_j||_2, from `weight` (out, in) and the summed squared input norms (in,)."""
    if squared_norms.shape != weight.shape[1:]:
        raise ValueError(
            f"A weight of shape {tuple(weight.shape)} needs {weight.shape[1]} input norms, "
            f"got {tuple(squared_norms.shape)}."
        )
    return weight.abs().float() * squared_norms.float().sqrt().unsqueeze(0)


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij|."""
    return weight.abs().float()


def random_scores(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """S_ij ~ U(0, 1), independent of the weight: pruning the top fraction of them is random pruning."""
    return torch.rand(weight.shape, generator=generator)


def num_pruned_per_row(columns: int, ratio: float, rule: str = "floor") -> int:
    """Weights zeroed per row: floor(ratio * columns) (`"floor"`), or the Antidote release's
    columns - int(columns * (1 - ratio)) (`"release"`)."""
    if rule == "floor":
        return math.floor(ratio * columns + 1e-9)
    if rule == "release":
        return columns - int(columns * (1 - ratio))
    raise ValueError(f"rule must be one of {PRUNE_COUNTS}, got {rule!r}.")


def top_fraction_mask(scores: torch.Tensor, ratio: float, rule: str = "floor") -> torch.Tensor:
    """Boolean mask of the `num_pruned_per_row(columns, ratio, rule)` highest scores in each row (ties broken by
    position)."""
    num = num_pruned_per_row(scores.shape[1], ratio, rule)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if num:
        mask.scatter_(1, scores.topk(num, dim=1).indices, True)
    return mask


# ---- model side ---------------------------------------------------------------------------------------------------


def find_prunable_linears(model: nn.Module, config: AntidoteConfig) -> dict[str, nn.Linear]:
    """The linear layers `antidote_prune` prunes, by module name: the LoRA `lora_A`/`lora_B` of the targeted layers
    on a PEFT model, their full weights otherwise."""
    from peft.tuners.lora import LoraLayer

    targets = set(config.target_modules)
    lora_layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    found: dict[str, nn.Linear] = {}
    if lora_layers:
        for name, layer in lora_layers.items():
            if name.rsplit(".", 1)[-1] not in targets:
                continue
            adapter = config.adapter_name or layer.active_adapters[0]
            if adapter not in layer.lora_A:
                raise ValueError(
                    f"{name} has no LoRA adapter {adapter!r} (it has {list(layer.lora_A)}); set adapter_name."
                )
            if layer.merged:
                raise ValueError(
                    f"The LoRA adapter of {name} is merged into the base weights, so its lora_A/lora_B see no inputs. "
                    "Unmerge it (`model.unmerge_adapter()`), or `merge_and_unload()` and prune the full weights."
                )
            found[f"{name}.lora_A.{adapter}"] = layer.lora_A[adapter]
            found[f"{name}.lora_B.{adapter}"] = layer.lora_B[adapter]
    else:
        found = {
            n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets
        }
    if not found:
        kinds = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        where = "LoRA-adapted layers" if lora_layers else "linear layers"
        raise ValueError(
            f"Antidote found no {where} named {sorted(targets)} in {type(model).__name__}. Set "
            f"AntidoteConfig.target_modules to some of its linear layers: {kinds}."
        )
    return found


def calibration_batches(tokenizer, rows: Iterable[dict], config: AntidoteConfig, device) -> Iterator[dict]:
    """Padded batches of `config.batch_size` question/answer rows, tokenized as in training only when the batch is
    needed: one batch of tokens is alive at a time, whatever the number of rows."""
    chunk = []
    for row in rows:
        chunk.append(tokenize_qa(tokenizer, row["question"], row["answer"], config.max_length))
        if len(chunk) == config.batch_size:
            yield _pad(chunk, tokenizer, device)
            chunk = []
    if chunk:
        yield _pad(chunk, tokenizer, device)


def _pad(examples: list[dict], tokenizer, device) -> dict:
    batch = pad_examples(examples, tokenizer.pad_token_id, padding_side="right")
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


class _InputsCollected(Exception):
    """Ends a calibration forward pass once every calibrated module has seen its input."""


@torch.no_grad()
def collect_squared_input_norms(
    model: nn.Module, modules: dict[str, nn.Linear], tokenizer, rows: Iterable[dict], config: AntidoteConfig
) -> tuple[dict[str, torch.Tensor], int]:
    """Summed squared input features of each of `modules` over every non-padding token of `rows` (question/answer
    pairs, formatted as in training), streamed in batches; returns them and the number of tokens. Only the sums
    (one vector of `in_features` per module) outlive a batch. Each forward pass stops as soon as every module has
    seen its input (calibrating layer l runs layers 0..l only)."""
    sums = {n: torch.zeros(m.in_features, dtype=torch.float32, device=m.weight.device) for n, m in modules.items()}
    current = {"seen": set()}

    def hook(name):
        def accumulate(module, args):
            sums[name] += squared_feature_norms(args[0], current["mask"].to(args[0].device))
            current["seen"].add(name)
            if len(current["seen"]) == len(modules):
                raise _InputsCollected

        return accumulate

    device = next(model.parameters()).device
    num_tokens = 0
    with forward_hooks(((m, hook(name)) for name, m in modules.items()), pre=True):
        batches = calibration_batches(tokenizer, rows, config, device)
        total = math.ceil(len(rows) / config.batch_size) if hasattr(rows, "__len__") else None
        for batch in tqdm(batches, total=total, desc="Antidote calibration", disable=not config.progress, leave=False):
            current["mask"], current["seen"] = batch["attention_mask"], set()
            try:
                model(**batch, use_cache=False)
            except _InputsCollected:
                pass
            num_tokens += int(batch["attention_mask"].sum())
    return sums, num_tokens


def _groups(modules: dict[str, nn.Linear], sequential: bool) -> list[dict[str, nn.Linear]]:
    """Modules grouped by decoder layer in model order (one group when not sequential)."""
    if not sequential:
        return [modules]
    groups: dict[int | None, dict[str, nn.Linear]] = {}
    for name, module in modules.items():
        groups.setdefault(decoder_layer_index(name), {})[name] = module
    return list(groups.values())


@torch.no_grad()
def antidote_prune(
    model, tokenizer=None, realignment_data: Iterable[dict] | None = None, config: AntidoteConfig | None = None
):
    """Prune `model` in place with Antidote and return `(model, AntidoteSummary)`.

    `realignment_data` are `question`/`answer` rows (harmful prompt, harmful answer): a list, a `datasets.Dataset`
    or `IterableDataset` with those columns (iterated once per decoder layer when `sequential`, so not a one-shot
    generator); rows are tokenized batch by batch. The Wanda score needs them and `tokenizer`, the magnitude and
    random baselines need neither.
    """
    config = config or AntidoteConfig()
    modules = find_prunable_linears(model, config)
    rows = realignment_data
    if config.score == "wanda":
        if rows is not None and iter(rows) is rows:
            raise ValueError(
                "realignment_data is a one-shot iterator, but the calibration may read it once per decoder layer: "
                "pass a list, a datasets.Dataset or an IterableDataset."
            )
        first = next(iter(rows), None) if rows is not None else None
        if tokenizer is None or first is None:
            raise ValueError(
                "The Wanda score needs re-alignment data (harmful prompt + harmful answer rows with 'question' and "
                "'answer') and the tokenizer: pass both, or use score='magnitude' / 'random'."
            )
        missing = {"question", "answer"} - set(first)
        if missing:
            raise ValueError(f"Re-alignment rows need 'question' and 'answer' columns; missing {sorted(missing)}.")
        ensure_pad_token(tokenizer)
    generator = torch.Generator().manual_seed(config.seed)
    pruned, total, num_tokens = {}, {}, 0
    with eval_mode(model):
        for group in _groups(modules, config.sequential and config.score == "wanda"):
            if config.score == "wanda":
                norms, num_tokens = collect_squared_input_norms(model, group, tokenizer, rows, config)
            for name, module in group.items():
                weight = module.weight
                if config.score == "wanda":
                    scores = wanda_scores(weight, norms[name])
                elif config.score == "magnitude":
                    scores = magnitude_scores(weight)
                else:
                    scores = random_scores(weight, generator)
                mask = top_fraction_mask(scores, config.dense_ratio, config.prune_count).to(weight.device)
                weight.masked_fill_(mask, 0.0)
                pruned[name], total[name] = int(mask.sum()), weight.numel()
    return model, AntidoteSummary(config.score, config.dense_ratio, pruned, total, num_tokens)
