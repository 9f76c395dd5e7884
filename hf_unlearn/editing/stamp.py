"""STAMP: training-free unlearning by a closed-form edit of MLP down-projections.

Only the paper's abstract is public ("redirects MLP activations toward a refusal subspace via closed-form
pseudoinverse updates", with a low-rank variant of cost O(r^3 + r^2 d)); this is our formulation of it.

At a chosen layer the MLP down-projection W maps keys k (its inputs) to values v = W k. We read the keys K_f at
the tokens that produce the forget answer, the keys K_r on a small retain buffer, and the values the model writes
while it reads refusal answers (the refusal subspace: their mean mu and top principal directions U). The forget
targets are v*_f = mu + U U^T (W k_f - mu) (the forget values projected into the refusal subspace), the retain
targets are the current values W k_r, and the edit is the ridge-regularised least-squares solution

    dW = argmin ||dW K - R||^2 + lambda ||dW||^2 = R K^T (K K^T + lambda I)^-1,   K = [K_f, K_r], R = [V*_f - W K_f, 0]

(dW = R K^+ as lambda -> 0). R is zero on the retain columns, so dW = R_f K_f^T (K K^T + lambda I)^-1 has rank at
most the number of forget tokens and is delivered exactly as a LoRA adapter of that rank (or added to W in place).
The low-rank variant keeps the top r singular directions of the retain keys and replaces the rest of their second
moment by its mean (see `low_rank_ridge_edit`).
"""

from __future__ import annotations

import random
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.formatting import IGNORE_INDEX, ensure_pad_token, pad_examples, tokenize_qa
from ..data.tofu import load_refusal_templates
from ..layout import forward_hooks, mlp_down_projections
from ..modeling import eval_mode


# ----- the linear algebra ------------------------------------------------------------------------------------------
def ridge_edit(
    forget_keys: torch.Tensor, forget_residuals: torch.Tensor, retain_keys: torch.Tensor | None, ridge: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The edit dW = argmin ||dW K_f - R_f||^2 + ||dW K_r||^2 + lambda ||dW||^2 = R_f K_f^T (K K^T + lambda I)^-1.

    Args:
        forget_keys: K_f, shape (d_in, n_f).
        forget_residuals: R_f = V*_f - W K_f, shape (d_out, n_f).
        retain_keys: K_r, shape (d_in, n_r), whose outputs must not change (`None`: no retain columns).
        ridge: lambda >= 0 (0 gives R K^+, which needs K K^T or K^T K invertible).

    Returns:
        (B, A) with dW = B @ A: B = R_f (d_out, n_f) and A = K_f^T (K K^T + lambda I)^-1 (n_f, d_in), computed from
        the n x n (dual, (K^T K + lambda I)^-1 K^T) or the d_in x d_in (primal) system, whichever is smaller.
    """
    keys = _keys(forget_keys, forget_residuals, retain_keys, ridge)
    d_in, n = keys.shape
    n_f = forget_keys.shape[1]
    if n <= d_in:
        gram = keys.T @ keys + ridge * torch.eye(n, dtype=keys.dtype, device=keys.device)
        solve = torch.linalg.solve(gram, keys.T)  # (K^T K + lambda I)^-1 K^T, (n, d_in)
        return forget_residuals, solve[:n_f]
    second_moment = keys @ keys.T + ridge * torch.eye(d_in, dtype=keys.dtype, device=keys.device)
    solve = torch.linalg.solve(second_moment, forget_keys)  # (K K^T + lambda I)^-1 K_f; the matrix is symmetric
    return forget_residuals, solve.T


def low_rank_ridge_edit(
    forget_keys: torch.Tensor,
    forget_residuals: torch.Tensor,
    retain_keys: torch.Tensor | None,
    ridge: float,
    rank: int,
    oversample: int = 8,
    niter: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`ridge_edit` with the retain second moment K_r K_r^T replaced by its rank-r truncated SVD plus the mean of
    the rest on the remaining directions: C_r = U_r (S_r^2 - sigma) U_r^T + sigma I, sigma = (||K_r||_F^2 -
    ||S_r||^2) / (d_in - r). With D = C_r + lambda I (inverted in closed form on the r directions),

        dW = R_f (I + K_f^T D^-1 K_f)^-1 K_f^T D^-1                                (Woodbury)

    which equals `ridge_edit` once r >= rank(K_r). Cost: the randomised truncated SVD (`torch.svd_lowrank`,
    O(d_in n_r q) for q = r + oversample, plus O(q^2 (d_in + n_r))), then O(d_in r n_f + d_in n_f^2 + n_f^3): no
    d_in x d_in or n_r x n_r system. The forget columns are kept exactly: truncating the whole of K instead drops
    forget-specific directions, and at r = 16 a memorised answer survives half (`benchmarks/stamp_low_rank.py`).
    """
    keys = _keys(forget_keys, forget_residuals, retain_keys, ridge)
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}.")
    d_in = keys.shape[0]
    eye = torch.eye(forget_keys.shape[1], dtype=keys.dtype, device=keys.device)
    if retain_keys is None or retain_keys.shape[1] == 0:
        if ridge == 0:
            raise ValueError("The edit without retain keys needs ridge > 0.")
        d_inv_forget = forget_keys / ridge
    else:
        rank = min(rank, *retain_keys.shape)
        q = min(rank + oversample, *retain_keys.shape)
        if q == min(retain_keys.shape):
            u, s, _ = torch.linalg.svd(retain_keys, full_matrices=False)
        else:
            u, s, _ = torch.svd_lowrank(retain_keys, q=q, niter=niter)
        u, s = u[:, :rank], s[:rank]
        tail = float((retain_keys**2).sum() - (s**2).sum())
        sigma = tail / max(d_in - rank, 1) if tail > 1e-6 * float((s**2).sum()) else 0.0
        if ridge + sigma == 0:
            raise ValueError("The low-rank edit needs ridge > 0 when the retain keys have rank < d_in.")
        # D^-1 = (I - U diag((s^2 - sigma) / (s^2 + lambda)) U^T) / (lambda + sigma)
        shrink = (s**2 - sigma) / (s**2 + ridge)
        d_inv_forget = (forget_keys - u @ (shrink[:, None] * (u.T @ forget_keys))) / (ridge + sigma)
    inner = eye + forget_keys.T @ d_inv_forget  # I + K_f^T D^-1 K_f, symmetric
    return torch.linalg.solve(inner, forget_residuals.T).T, d_inv_forget.T


def compress_factors(b: torch.Tensor, a: torch.Tensor, rtol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact minimal-rank factors of B @ A: with B = Q_b R_b and A^T = Q_a R_a, the SVD R_b R_a^T = U S V^T gives
    B' = Q_b U_p S_p and A' = V_p^T Q_a^T, p = the number of singular values above rtol * the largest."""
    if b.shape[1] == 0:
        return b, a
    q_b, r_b = torch.linalg.qr(b)
    q_a, r_a = torch.linalg.qr(a.T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)
    p = int((s > rtol * s[0]).sum()) if s[0] > 0 else 0
    return q_b @ (u[:, :p] * s[:p]), vh[:p] @ q_a.T


def refusal_targets(values: torch.Tensor, refusal_values: torch.Tensor, num_directions: int = 0) -> torch.Tensor:
    """Targets v* = mu + U U^T (v - mu): each column of `values` (d, n) projected into the affine refusal subspace
    spanned by the mean mu of `refusal_values` (d, m) and their top `num_directions` principal directions U
    (0: every target is mu)."""
    mean = refusal_values.mean(dim=1, keepdim=True)
    targets = mean.expand_as(values).clone()
    if num_directions > 0:
        u = torch.linalg.svd(refusal_values - mean, full_matrices=False)[0][:, :num_directions]
        targets += u @ (u.T @ (values - mean))
    return targets


def refusal_separation(forget_values: torch.Tensor, refusal_values: torch.Tensor, stream_norms: torch.Tensor) -> float:
    """mean_j ||v_j - mu|| / mean_j ||h_j||: how far the forget values v_j (d, n) lie from the refusal mean mu, in
    units of the residual stream norms ||h_j|| (n,) after the layer at the same tokens. The larger it is, the more
    redirecting this layer's values moves what the model computes there."""
    mean = refusal_values.mean(dim=1, keepdim=True)
    return float((forget_values - mean).norm(dim=0).mean() / stream_norms.mean())


def _keys(forget_keys, forget_residuals, retain_keys, ridge) -> torch.Tensor:
    """K = [K_f, K_r], after checking the shapes."""
    if forget_keys.dim() != 2 or forget_residuals.dim() != 2 or forget_keys.shape[1] != forget_residuals.shape[1]:
        raise ValueError(
            f"forget_keys must be (d_in, n_f) and forget_residuals (d_out, n_f) with the same n_f; got "
            f"{tuple(forget_keys.shape)} and {tuple(forget_residuals.shape)}."
        )
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}.")
    if retain_keys is None:
        return forget_keys
    if retain_keys.dim() != 2 or retain_keys.shape[0] != forget_keys.shape[0]:
        raise ValueError(
            f"retain_keys must be (d_in, n_r) with d_in = {forget_keys.shape[0]}; got {tuple(retain_keys.shape)}."
        )
    return torch.cat([forget_keys, retain_keys], dim=1)


# ----- configuration and result ------------------------------------------------------------------------------------
@dataclass
class StampConfig:
    r"""
    Configuration for `stamp_edit` / `forget`.

    Parameters that control where the model is edited:
        layers (`str`, defaults to `"auto"`):
            Layers whose MLP down-projection is edited: `"auto"` or comma-separated indices (`"0,3"`; a list
            `[0, 3]` is accepted too and stored as `"0,3"`). `"auto"` takes the `num_auto_layers` layers with the
            largest `refusal_separation`. Several
            layers are edited one after the other, earliest first, each reading the activations of the model with
            the previous edits in place.
        num_auto_layers (`int`, defaults to `1`):
            How many layers `"auto"` picks.
        forget_positions (`str`, defaults to `"answer"`):
            Forget tokens whose keys are redirected: `"answer"` (the last prompt token and the answer tokens, i.e.
            the tokens that produce the answer), `"answer_only"` (without the last prompt token, which a chat
            template makes the same for every prompt) or `"all"` (prompt and answer).

    Parameters that control the edit:
        ridge (`float`, defaults to `0.01`):
            lambda, in units of the mean squared norm of the key columns (so it does not depend on the model's
            activation scale).
        forget_weight (`float`, defaults to `3.0`):
            Weight of each forget column against each retain column in the least squares (the forget columns of K
            and R are multiplied by it); larger forgets harder and disturbs retain outputs more.
        rank (`int`, *optional*):
            Rank r of the truncated SVD of the retain keys K_r for the low-rank edit (`low_rank_ridge_edit`; no
            d_in x d_in or n x n system); `None` solves the full ridge problem (`ridge_edit`).
        num_refusal_directions (`int`, defaults to `0`):
            Principal directions of the refusal values spanning the target subspace; `0` sends every forget value
            to the refusal mean.

    Parameters that control the data:
        retain_buffer_size (`int`, defaults to `128`):
            At most this many retain pairs are used (a seeded random subset of those given).
        refusal_templates (`str`, *optional*):
            File of refusal answers (one per line, as TOFU's `idontknow.jsonl`) used when `refusals` is not given;
            `None` uses the package's templates.
        retain_answer_tokens (`int`, defaults to `64`):
            When retain data are questions only, the model's own greedy answers of up to this many tokens are used.
        max_length (`int`, defaults to `256`):
            Maximum tokens of a prompt plus answer.
        batch_size (`int`, defaults to `16`):
            Examples per forward pass while reading activations.
        seed (`int`, defaults to `0`):
            Seed of the retain subset.

    Parameters that control the delivery:
        delivery (`str`, defaults to `"inplace"`):
            `"inplace"` adds dW to the weights; `"adapter"` returns a `peft.PeftModel` with a LoRA adapter on the
            edited down-projections holding exactly dW (reversible with `disable_adapter()`, works on a quantized
            base).
        adapter_name (`str`, defaults to `"default"`):
            Name of the LoRA adapter.
    """

    layers: str = field(default="auto", metadata={"help": "'auto' or comma-separated layer indices, e.g. '0,3'."})
    num_auto_layers: int = field(default=1, metadata={"help": "How many layers 'auto' picks."})
    forget_positions: str = field(default="answer", metadata={"help": "Forget tokens: answer, answer_only, all."})
    ridge: float = field(default=0.01, metadata={"help": "Ridge lambda, in units of the mean squared key norm."})
    forget_weight: float = field(default=3.0, metadata={"help": "Weight of forget against retain columns."})
    rank: int | None = field(default=None, metadata={"help": "Rank of the low-rank edit (default: full edit)."})
    num_refusal_directions: int = field(default=0, metadata={"help": "Principal refusal directions (0: mean)."})
    retain_buffer_size: int = field(default=128, metadata={"help": "At most this many retain pairs are used."})
    refusal_templates: str | None = field(default=None, metadata={"help": "File of refusal answers."})
    retain_answer_tokens: int = field(default=64, metadata={"help": "Length of the model's own retain answers."})
    max_length: int = field(default=256, metadata={"help": "Maximum tokens of prompt plus answer."})
    batch_size: int = field(default=16, metadata={"help": "Examples per forward pass."})
    seed: int = field(default=0, metadata={"help": "Seed of the retain subset."})
    delivery: str = field(default="inplace", metadata={"help": "inplace or adapter (a LoRA on down_proj)."})
    adapter_name: str = field(default="default", metadata={"help": "Name of the LoRA adapter."})

    @property
    def layer_indices(self) -> list[int] | None:
        """The explicit layer indices, or None for `"auto"`."""
        if self.layers.strip() == "auto":
            return None
        try:
            indices = [int(part) for part in self.layers.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"layers must be 'auto' or layer indices like '0,3', got {self.layers!r}.") from None
        if not indices:
            raise ValueError("layers is empty; give layer indices like '0,3' or 'auto'.")
        return indices

    def __post_init__(self):
        if isinstance(self.layers, (list, tuple)):
            self.layers = ",".join(str(i) for i in self.layers)
        self.layer_indices  # noqa: B018 - validates the string
        if self.delivery not in ("inplace", "adapter"):
            raise ValueError(f"delivery must be 'inplace' or 'adapter', got {self.delivery!r}.")
        if self.forget_positions not in ("answer", "answer_only", "all"):
            raise ValueError(
                f"forget_positions must be 'answer', 'answer_only' or 'all', got {self.forget_positions!r}."
            )
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be a positive integer or None (full edit), got {self.rank}.")
        if self.ridge < 0 or self.forget_weight <= 0 or self.num_auto_layers < 1 or self.num_refusal_directions < 0:
            raise ValueError(
                "Need ridge >= 0, forget_weight > 0, num_auto_layers >= 1 and num_refusal_directions >= 0; got "
                f"{self.ridge}, {self.forget_weight}, {self.num_auto_layers}, {self.num_refusal_directions}."
            )


@dataclass
class LayerEdit:
    """One layer's edit dW = B @ A (rank = B's columns), the layer's `refusal_separation` as it was edited, and how
    well the edit met its goals: `target_reached` = 1 - ||(W + dW) K_f - V*_f|| / ||W K_f - V*_f|| (1: the forget
    values reach their refusal targets) and `retain_change` = ||dW K_r|| / ||W K_r|| (0: retain outputs intact)."""

    layer: int
    module_name: str
    lora_b: torch.Tensor
    lora_a: torch.Tensor
    separation: float
    target_reached: float
    retain_change: float | None

    @property
    def rank(self) -> int:
        return self.lora_a.shape[0]

    @property
    def delta(self) -> torch.Tensor:
        return self.lora_b @ self.lora_a


@dataclass
class StampResult:
    """The edited model (the same object for in-place delivery, a `PeftModel` for adapter delivery), the layer
    edits, the layer scores `refusal_separation` (every layer for `layers="auto"`), the number of forget/retain
    key columns, the wall time of the whole edit and its peak memory (CUDA: peak allocated bytes above the start;
    CPU: peak resident set size above the start, read from /proc)."""

    model: nn.Module
    edits: list[LayerEdit]
    layer_scores: dict[int, float]
    num_forget_tokens: int
    num_retain_tokens: int
    time_s: float
    peak_memory_mb: float | None
    memory_measure: str
    config: StampConfig = field(repr=False)

    @property
    def layers(self) -> list[int]:
        return [edit.layer for edit in self.edits]

    def summary(self) -> dict:
        """JSON-ready numbers of the edit."""
        return {
            "layers": self.layers,
            "ranks": {e.layer: e.rank for e in self.edits},
            "target_reached": {e.layer: round(e.target_reached, 4) for e in self.edits},
            "retain_change": {
                e.layer: None if e.retain_change is None else round(e.retain_change, 4) for e in self.edits
            },
            "layer_scores": {k: round(v, 4) for k, v in self.layer_scores.items()},
            "num_forget_tokens": self.num_forget_tokens,
            "num_retain_tokens": self.num_retain_tokens,
            "time_s": round(self.time_s, 4),
            "peak_memory_mb": None if self.peak_memory_mb is None else round(self.peak_memory_mb, 2),
            "memory_measure": self.memory_measure,
        }


# ----- reading keys and values from a model -----------------------------------------------------------------------
def find_down_projections(model: nn.Module) -> dict[int, tuple[str, nn.Module]]:
    """The MLP down-projections STAMP edits, by layer index: {i: (module name, module)} (`layout.mlp_down_projections`)."""
    return mlp_down_projections(model, "STAMP")


def token_positions(batch: dict[str, torch.Tensor], which: str) -> torch.Tensor:
    """Boolean (batch, length) mask of the tokens whose keys and values are read:
    `"answer"`: the tokens that produce the answer (the last prompt token and every answer token but the last);
    `"answer_only"`: answer tokens that produce another answer token (the last prompt token excluded);
    `"all"`: every non-padding token."""
    if which == "all":
        return batch["attention_mask"].bool()
    producing = torch.zeros_like(batch["labels"], dtype=torch.bool)
    producing[:, :-1] = batch["labels"][:, 1:] != IGNORE_INDEX
    if which == "answer":
        return producing
    if which == "answer_only":
        return producing & (batch["labels"] != IGNORE_INDEX)
    raise ValueError(f"Unknown token positions {which!r}; expected 'answer', 'answer_only' or 'all'.")


@dataclass
class Activations:
    """Down-projection keys (d_in, n) and values (d_out, n), and residual-stream norms (n,) after the layer, in
    float32 on the model's device, at the selected tokens."""

    keys: torch.Tensor
    values: torch.Tensor
    stream_norms: torch.Tensor


@torch.no_grad()
def collect_activations(
    model: nn.Module,
    examples: list[dict],
    pad_token_id: int,
    layers: Sequence[int],
    positions: str,
    batch_size: int = 16,
) -> dict[int, Activations]:
    """Run tokenized examples (`input_ids`, `attention_mask`, `labels`) through the model and read, per layer, the
    down-projection keys and values and the residual stream norms at the `positions` tokens (`token_positions`)."""
    projections = find_down_projections(model)
    missing = [i for i in layers if i not in projections]
    if missing:
        raise ValueError(f"The model has no down_proj at layer(s) {missing}; it has layers 0..{max(projections)}.")
    device = next(model.parameters()).device
    read: dict[int, dict[str, list[torch.Tensor]]] = {i: {"keys": [], "values": [], "stream": []} for i in layers}
    mask = None

    def read_projection(layer):
        def hook(module, args, output):
            read[layer]["keys"].append(args[0][mask].float())
            read[layer]["values"].append(output[mask].float())

        return hook

    def read_stream(layer):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            read[layer]["stream"].append(hidden[mask].float().norm(dim=-1))

        return hook

    registrations = []
    for i in layers:
        name, module = projections[i]
        registrations.append((module, read_projection(i)))
        registrations.append((model.get_submodule(name.rsplit(".mlp.", 1)[0]), read_stream(i)))
    with forward_hooks(registrations), eval_mode(model):
        for start in range(0, len(examples), batch_size):
            batch = pad_examples(examples[start : start + batch_size], pad_token_id, padding_side="right")
            mask = token_positions(batch, positions).to(device)
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    return {
        i: Activations(
            keys=torch.cat(read[i]["keys"]).T.contiguous(),
            values=torch.cat(read[i]["values"]).T.contiguous(),
            stream_norms=torch.cat(read[i]["stream"]),
        )
        for i in layers
    }


# ----- the edit on a model ------------------------------------------------------------------------------------------
def _qa_rows(data, name: str) -> list[dict]:
    """Rows {"question", "answer"} from dicts (with `question`/`prompt` and `answer`) or (question, answer) pairs."""
    if isinstance(data, (dict, tuple)):
        data = [data]
    rows = []
    for item in data:
        if isinstance(item, dict):
            question = item.get("question", item.get("prompt"))
            answer = item.get("answer")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            question, answer = item
        else:
            question = answer = None
        if not isinstance(question, str) or not isinstance(answer, str):
            raise ValueError(
                f"Each {name} item must be a (question, answer) pair of strings or a dict with 'question' (or "
                f"'prompt') and 'answer'; got {item!r}."
            )
        if not question.strip() or (name == "forget" and not answer.strip()):
            empty = "question" if not question.strip() else "answer"
            raise ValueError(f"A {name} item has an empty {empty} ({item!r}); STAMP edits the model's answer to a "
                             "question, so give both (an empty answer would teach the model to answer nothing).")
        rows.append({"question": question, "answer": answer})
    if not rows:
        raise ValueError(f"The {name} set is empty.")
    return rows


def _retain_rows(model, tokenizer, retain, config: StampConfig) -> list[dict]:
    """Retain pairs, subsampled to the buffer size; questions given alone are answered by the model (greedy)."""
    if retain is None:
        return []
    items = [retain] if isinstance(retain, (str, dict, tuple)) else list(retain)
    if len(items) > config.retain_buffer_size:
        items = random.Random(config.seed).sample(items, config.retain_buffer_size)
    questions = [item for item in items if isinstance(item, str)]
    pairs = [item for item in items if not isinstance(item, str)]
    rows = _qa_rows(pairs, "retain") if pairs else []
    if questions:
        from ..eval.generation import generate_answers

        answers = generate_answers(model, tokenizer, questions, max_new_tokens=config.retain_answer_tokens)
        rows += [{"question": q, "answer": a} for q, a in zip(questions, answers)]
    return rows


def _check_editable(model, delivery: str, projections: dict[int, tuple[str, nn.Module]], layers) -> None:
    from peft import PeftModel

    if isinstance(model, PeftModel):
        raise ValueError(
            "STAMP edits a plain transformers model, and this one is already a PeftModel. Merge its adapter first "
            "(`model = model.merge_and_unload()`), or give all forget pairs to one STAMP call."
        )
    if delivery == "inplace":
        for layer in layers:
            weight = projections[layer][1].weight
            if not weight.dtype.is_floating_point:
                raise ValueError(
                    f"Layer {layer}'s down_proj holds {weight.dtype} (quantized) weights, which cannot be edited in "
                    "place. Use delivery='adapter': the edit then sits in a LoRA adapter on the quantized base."
                )


def _applied(edits: dict[int, LayerEdit], projections: dict[int, tuple[str, nn.Module]]):
    """Inside it the edits act on the model through forward hooks (output += x A^T B^T); nothing is changed after."""

    def add_delta(edit: LayerEdit):
        def hook(module, args, output):
            delta = (args[0].float() @ edit.lora_a.T) @ edit.lora_b.T
            return output + delta.to(output.dtype)

        return hook

    return forward_hooks((projections[layer][1], add_delta(edit)) for layer, edit in edits.items())


class _PeakMemory:
    """Peak memory above the starting point: CUDA allocated bytes, or on CPU the resident set size (Linux /proc,
    where the high-water mark can be reset)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb: float | None = None
        self.measure = "unavailable"

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
                self.start = self._status("VmRSS")
            except OSError:
                self.start = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
            self.measure = "cuda_max_allocated_above_start"
        elif self.start is not None:
            self.peak_mb = (self._status("VmHWM") - self.start) / 1024
            self.measure = "cpu_peak_rss_above_start"

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])  # kB
        raise OSError(f"/proc/self/status has no {key}")


def stamp_edit(
    model: nn.Module,
    tokenizer,
    forget,
    retain=None,
    refusals: Sequence[str] | None = None,
    config: StampConfig | None = None,
) -> StampResult:
    """Make the model forget `forget` (question/answer pairs) with the closed-form STAMP edit (see the module doc).

    Args:
        model: a causal LM with `layers.<i>.mlp.down_proj` modules (a quantized one needs `delivery="adapter"`).
        tokenizer: its tokenizer; prompts are formatted as in training (`hf_unlearn.data.tokenize_qa`).
        forget: one or more (question, answer) pairs or dicts with `question`/`answer`.
        retain: pairs the model must keep answering as now, or plain questions (answered by the model itself).
            Without retain data only the ridge term protects the rest of the model, and much of it suffers.
        refusals: refusal answers defining the refusal subspace (read with the forget questions); default: the
            package's refusal templates or `config.refusal_templates`.
        config: a `StampConfig`.
    """
    config = config or StampConfig()
    ensure_pad_token(tokenizer)
    projections = find_down_projections(model)
    explicit = config.layer_indices
    if explicit is not None and any(i not in projections for i in explicit):
        raise ValueError(f"layers {explicit} are not all in the model's layers 0..{max(projections)}.")
    _check_editable(model, config.delivery, projections, explicit or list(projections))
    device = next(model.parameters()).device
    start = time.perf_counter()
    with _PeakMemory(device) as memory:
        forget_rows = _qa_rows(forget, "forget")
        retain_rows = _retain_rows(model, tokenizer, retain, config)
        if not retain_rows:
            warnings.warn(
                "STAMP without retain data: only the ridge term protects the model's other answers, and many of "
                "them change. Pass retain=[...] (question/answer pairs, or just questions the model answers well)."
            )
        refusal_answers = list(refusals) if refusals is not None else load_refusal_templates(config.refusal_templates)
        tokenize = lambda q, a: tokenize_qa(tokenizer, q, a, config.max_length)  # noqa: E731
        forget_examples = [tokenize(r["question"], r["answer"]) for r in forget_rows]
        retain_examples = [tokenize(r["question"], r["answer"]) for r in retain_rows]
        refusal_examples = [tokenize(r["question"], answer) for r in forget_rows for answer in refusal_answers]

        def read(examples, layers, positions):
            return collect_activations(model, examples, tokenizer.pad_token_id, layers, positions, config.batch_size)

        layer_scores = {}
        if explicit is None:
            every = list(projections)
            forget_acts = read(forget_examples, every, config.forget_positions)
            refusal_acts = read(refusal_examples, every, "answer_only")
            layer_scores = {
                i: refusal_separation(forget_acts[i].values, refusal_acts[i].values, forget_acts[i].stream_norms)
                for i in every
            }
            layers = sorted(sorted(every, key=layer_scores.get, reverse=True)[: config.num_auto_layers])
        else:
            layers = sorted(set(explicit))

        edits: dict[int, LayerEdit] = {}
        num_retain_tokens = 0
        for layer in layers:
            # Each layer reads the model with the earlier layers' edits applied (by hooks, so a quantized base works).
            with _applied(edits, projections):
                if edits or explicit is not None:
                    forget_act = read(forget_examples, [layer], config.forget_positions)[layer]
                    refusal_act = read(refusal_examples, [layer], "answer_only")[layer]
                else:  # the first "auto" layer: the unedited activations read to score the layers
                    forget_act, refusal_act = forget_acts[layer], refusal_acts[layer]
                retain_act = read(retain_examples, [layer], "all")[layer] if retain_examples else None
            edits[layer] = _layer_edit(layer, projections[layer][0], forget_act, refusal_act, retain_act, config)
            layer_scores.setdefault(layer, edits[layer].separation)
            num_retain_tokens = 0 if retain_act is None else retain_act.keys.shape[1]
        model = _deliver(model, edits, projections, config)
    return StampResult(
        model=model,
        edits=list(edits.values()),
        layer_scores=dict(sorted(layer_scores.items())),
        num_forget_tokens=forget_act.keys.shape[1],
        num_retain_tokens=num_retain_tokens,
        time_s=time.perf_counter() - start,
        peak_memory_mb=memory.peak_mb,
        memory_measure=memory.measure,
        config=config,
    )


def _layer_edit(
    layer: int,
    module_name: str,
    forget: Activations,
    refusal: Activations,
    retain: Activations | None,
    config: StampConfig,
) -> LayerEdit:
    """Solve one layer's edit with the forget columns weighted by w: K_f -> w K_f, R_f -> w (V*_f - W K_f)."""
    targets = refusal_targets(forget.values, refusal.values, config.num_refusal_directions)
    forget_residuals = targets - forget.values  # V*_f - W K_f
    retain_keys = None if retain is None else retain.keys
    squared_norm = forget.keys.square().sum() + (0.0 if retain is None else retain.keys.square().sum())
    num_columns = forget.keys.shape[1] + (0 if retain is None else retain.keys.shape[1])
    ridge = config.ridge * float(squared_norm / num_columns)  # times the mean squared key norm
    weight = config.forget_weight
    if config.rank is None:
        lora_b, lora_a = ridge_edit(forget.keys * weight, forget_residuals * weight, retain_keys, ridge)
    else:
        lora_b, lora_a = low_rank_ridge_edit(
            forget.keys * weight, forget_residuals * weight, retain_keys, ridge, config.rank
        )
    lora_b, lora_a = compress_factors(lora_b, lora_a)
    missed = (lora_b @ (lora_a @ forget.keys) - forget_residuals).norm() / forget_residuals.norm().clamp_min(1e-12)
    retain_change = None
    if retain is not None:
        retain_change = float((lora_b @ (lora_a @ retain.keys)).norm() / retain.values.norm().clamp_min(1e-12))
    return LayerEdit(
        layer=layer,
        module_name=module_name,
        lora_b=lora_b,
        lora_a=lora_a,
        separation=refusal_separation(forget.values, refusal.values, forget.stream_norms),
        target_reached=float(1 - missed),
        retain_change=retain_change,
    )


def _deliver(model, edits: dict[int, LayerEdit], projections, config: StampConfig):
    """Add the edits to the weights, or wrap the model in a LoRA adapter holding them exactly (alpha = r, so the
    LoRA scaling is 1 and B A = dW)."""
    if config.delivery == "inplace":
        with torch.no_grad():
            for layer, edit in edits.items():
                weight = projections[layer][1].weight
                weight += edit.delta.to(weight.device, weight.dtype)
        return model
    from peft import LoraConfig, get_peft_model

    names = {edit.module_name: max(edit.rank, 1) for edit in edits.values()}
    lora_config = LoraConfig(
        r=max(names.values()),
        lora_alpha=max(names.values()),
        target_modules=list(names),
        rank_pattern={re.escape(name): rank for name, rank in names.items()},
        alpha_pattern={re.escape(name): rank for name, rank in names.items()},
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, lora_config, adapter_name=config.adapter_name)
    peft_model.eval()
    with torch.no_grad():
        for edit in edits.values():
            module = peft_model.base_model.model.get_submodule(edit.module_name)
            lora_a = module.lora_A[config.adapter_name].weight
            lora_b = module.lora_B[config.adapter_name].weight
            if edit.rank == 0:  # nothing to forget at this layer: a zero adapter of rank 1
                lora_a.zero_()
                lora_b.zero_()
                continue
            lora_a.copy_(edit.lora_a.to(lora_a.device, lora_a.dtype))
            lora_b.copy_(edit.lora_b.to(lora_b.device, lora_b.dtype))
    return peft_model


def forget(model: nn.Module, tokenizer, prompt: str, answer: str, retain=None, **config) -> StampResult:
    """Forget one sample: `stamp_edit(model, tokenizer, [(prompt, answer)], retain, config=StampConfig(**config))`.

    `retain` may be a few unrelated question/answer pairs or just questions (the model answers them itself, and
    the edit keeps those answers); without it the edit is protected only by the ridge term and other answers
    suffer (see `stamp_edit`).
    """
    return stamp_edit(model, tokenizer, [(prompt, answer)], retain=retain, config=StampConfig(**config))


# ----- a quick check of what the model answers ----------------------------------------------------------------------
@torch.no_grad()
def answer_scores(model, tokenizer, rows, max_new_tokens: int = 48, batch_size: int = 32) -> dict[str, list]:
    """Per QA row: `probability` = exp(mean log p(answer token)) under teacher forcing, the greedy `answer` and its
    `rouge_l_recall` against the reference answer. A quick before/after check; `hf_unlearn.eval` has the full
    TOFU evaluation."""
    from ..eval.generation import generate_answers
    from ..eval.rouge import rouge_l_recall
    from ..eval.scoring import answer_probability, score_answers

    rows = _qa_rows(rows, "scored")
    ensure_pad_token(tokenizer)
    questions = [r["question"] for r in rows]
    scores = score_answers(model, tokenizer, questions, [r["answer"] for r in rows], batch_size, max_length=512)
    probabilities = [answer_probability(s["logprobs"]) for s in scores]
    answers = generate_answers(model, tokenizer, questions, max_new_tokens, batch_size)
    recalls = rouge_l_recall(answers, [r["answer"] for r in rows])
    return {"probability": probabilities, "rouge_l_recall": recalls, "answer": answers}
