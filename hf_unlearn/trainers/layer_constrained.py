"""Layer-constrained unlearning (SHA256; Agrawal & Huang, 2025, SemEval-2025 Task 4).

Causal tracing (`hf_unlearn.editing.causal_tracing`) finds the layers whose MLPs recall the facts; only those
modules are trained, everything else is frozen, with a joint loss that ascends on the forget set and descends on
the retain set with an adaptive weight:

    L = -CE(D_f) + alpha * CE(D_r),   alpha = clip(a * b^(Delta) + c, alpha_min, alpha_max)

where Delta = CE(D_r) - CE_0(D_r), the rise of the batch's retain loss over the mean retain loss of the first
epoch (during which alpha = alpha_min); a = 0.3, b = 6, c = 0.8, alpha_min = 1.2, alpha_max = 2.8 as in the paper
(the authors' release uses 2.3 and rounds alpha to one decimal). Delta is a rise in nats, so on a model whose
retain loss is near zero (the embedded 4-layer model: ~0.003) alpha stays at alpha_min; the embedded settings raise
the clip to [16, 24] (`hf_unlearn.pipeline.EMBEDDED_DEFAULTS`, measured there). The best checkpoint is kept by an evaluation
score (`selection_score`, see `LayerConstrainedTrainer.evaluate`) through the usual `load_best_model_at_end`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..layout import decoder_layers, layer_submodule
from .base import UnlearnConfig, UnlearnTrainer
from .losses import nll


MODULE_KINDS = ("mlp", "attention", "layer")


def layer_constrained_loss(forget_nll: torch.Tensor, retain_nll: torch.Tensor, alpha: float) -> torch.Tensor:
    """L = -CE(D_f) + alpha * CE(D_r) (SHA256's joint loss)."""
    return -forget_nll + alpha * retain_nll


def adaptive_alpha(
    retain_loss: float,
    baseline_retain_loss: float,
    scale: float = 0.3,
    base: float = 6.0,
    offset: float = 0.8,
    alpha_min: float = 1.2,
    alpha_max: float = 2.8,
) -> float:
    """alpha = clip(scale * base^(L_r - L_r0) + offset, alpha_min, alpha_max), L_r0 the first epoch's mean retain
    loss (SHA256's adaptive regularisation weight)."""
    return float(min(max(scale * base ** (retain_loss - baseline_retain_loss) + offset, alpha_min), alpha_max))


@dataclass
class LayerConstrainedConfig(UnlearnConfig):
    r"""
    Configuration for `LayerConstrainedTrainer`.

    Parameters that choose what is trained:
        layers (`list[int]`, *optional*): layers whose `module_kind` modules are trained; by default the layers that
            causal tracing of the forget set suggests (see `trace_num_facts`).
        module_kind (`str`, defaults to `"mlp"`): `"mlp"`, `"attention"` or `"layer"` (the whole decoder layer).
        trainable_modules (`list[str]`, *optional*): explicit module names (e.g. `model.layers.3.mlp.down_proj`;
            a name matches a module whose full name ends with it); overrides `layers`/`module_kind`.
        trace_num_facts (`int`, defaults to `32`): forget examples traced when `layers` is unset. Rows with a
            `subject` field are traced with that subject; otherwise the question is the corrupted span and the
            answer the target.
        trace_num_samples (`int`, defaults to `5`): noise draws per traced fact.

    Parameters of the adaptive retain weight (alpha = clip(a * b^Delta + c, alpha_min, alpha_max)):
        alpha_scale (`float`, defaults to `0.3`): a.
        alpha_base (`float`, defaults to `6.0`): b.
        alpha_offset (`float`, defaults to `0.8`): c.
        alpha_min (`float`, defaults to `1.2`): lower clip, and alpha during the first epoch.
        alpha_max (`float`, defaults to `2.8`): upper clip (the paper's; the authors' release uses 2.3).

    Parameters of the evaluation that picks the best checkpoint (with `load_best_model_at_end=True`):
        eval_benchmark (`str`, defaults to `"tofu"`): `"tofu"` (`eval_data` is TOFU-schema data; the score is the
            harmonic mean of 1 - forget ROUGE-L recall and model utility) or `"semeval"` (`eval_data` is a
            SemEval-2025 Task 4 folder; the score is the task aggregate).
        eval_semeval_split (`str`, defaults to `"validation"`): SemEval split evaluated.
        eval_prompt_format (`str`, defaults to `"qa"`): SemEval prompts as the package trains them (`"qa"`) or as
            raw text (`"raw"`, the task's official script).
        metric_for_best_model (`str`, defaults to `"selection_score"`).
    """

    layers: list[int] | None = field(default=None, metadata={"help": "Layers to train (default: traced)."})
    module_kind: str = field(default="mlp", metadata={"help": "mlp, attention or layer."})
    trainable_modules: list[str] | None = field(default=None, metadata={"help": "Explicit module names to train."})
    trace_num_facts: int = field(default=32, metadata={"help": "Forget examples traced when layers is unset."})
    trace_num_samples: int = field(default=5, metadata={"help": "Noise draws per traced fact."})
    alpha_scale: float = field(default=0.3, metadata={"help": "a in clip(a * b^Delta + c)."})
    alpha_base: float = field(default=6.0, metadata={"help": "b in clip(a * b^Delta + c)."})
    alpha_offset: float = field(default=0.8, metadata={"help": "c in clip(a * b^Delta + c)."})
    alpha_min: float = field(default=1.2, metadata={"help": "Lower clip of alpha (and alpha in the first epoch)."})
    alpha_max: float = field(default=2.8, metadata={"help": "Upper clip of alpha."})
    eval_benchmark: str = field(default="tofu", metadata={"help": "tofu or semeval."})
    eval_semeval_split: str = field(default="validation", metadata={"help": "SemEval split evaluated."})
    eval_prompt_format: str = field(default="qa", metadata={"help": "SemEval prompts: qa or raw."})
    metric_for_best_model: str | None = field(
        default="selection_score", metadata={"help": "Evaluation metric that picks the best checkpoint."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.module_kind not in MODULE_KINDS:
            raise ValueError(f"module_kind must be one of {MODULE_KINDS}, got {self.module_kind!r}.")
        if self.eval_benchmark not in ("tofu", "semeval"):
            raise ValueError(f"eval_benchmark must be 'tofu' or 'semeval', got {self.eval_benchmark!r}.")
        if not self.alpha_min <= self.alpha_max:
            raise ValueError(f"alpha_min ({self.alpha_min}) must not exceed alpha_max ({self.alpha_max}).")
        from ..eval.semeval import PROMPT_FORMATS

        if self.eval_prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"eval_prompt_format must be one of {PROMPT_FORMATS}, got {self.eval_prompt_format!r}; e.g. 'qa' (the "
                "package's training format; 'raw' is the task's official script)."
            )
        if self.eval_semeval_split not in ("train", "validation"):
            raise ValueError(
                f"eval_semeval_split must be 'train' or 'validation', got {self.eval_semeval_split!r}; e.g. "
                "'validation' (forget_validation and retain_validation are evaluated)."
            )
        if self.layers is not None and (not self.layers or not all(layer >= 0 for layer in self.layers)):
            raise ValueError(
                f"layers must be unset (traced) or a non-empty list of layer indices >= 0, got {self.layers}; e.g. "
                "[3, 4] trains the MLPs of layers 3 and 4."
            )
        for name in ("trace_num_facts", "trace_num_samples"):
            if not getattr(self, name) >= 1:
                raise ValueError(
                    f"{name} must be >= 1, got {getattr(self, name)}; e.g. "
                    f"{type(self).__dataclass_fields__[name].default} (the default)."
                )
        if not self.alpha_scale >= 0:
            raise ValueError(
                f"alpha_scale (a in clip(a * b^Delta + c)) must be >= 0 (0: a constant retain weight), got "
                f"{self.alpha_scale}; e.g. 0.3 (the paper's)."
            )
        if not self.alpha_base >= 1:
            raise ValueError(
                f"alpha_base (b in clip(a * b^Delta + c)) must be >= 1, so the retain weight grows as the retain loss "
                f"rises, got {self.alpha_base}; e.g. 6 (the paper's)."
            )
        if not math.isfinite(self.alpha_offset):
            raise ValueError(
                f"alpha_offset (c in clip(a * b^Delta + c)) must be a finite number, got {self.alpha_offset}; e.g. 0.8 "
                "(the paper's)."
            )
        if not self.alpha_min >= 0:
            raise ValueError(
                f"alpha_min (the retain weight's lower clip) must be >= 0, got {self.alpha_min}; e.g. 1.2 (the "
                "paper's)."
            )


class AdaptiveAlphaCallback(TrainerCallback, ExportableState):
    """Holds the adaptive-alpha state: the first epoch's retain-loss sum and count, then the frozen baseline.

    It is an `ExportableState`, so the state is written into every checkpoint's `trainer_state.json` and read
    back when training resumes from it.
    """

    def __init__(self, baseline_sum: float = 0.0, baseline_count: int = 0, baseline: float | None = None):
        self.baseline_sum = baseline_sum
        self.baseline_count = baseline_count
        self.baseline = baseline

    def state(self) -> dict:
        return {"args": {}, "attributes": {"baseline_sum": self.baseline_sum, "baseline_count": self.baseline_count,
                                           "baseline": self.baseline}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, list):
            saved = saved[0]
        if state.global_step > 0 and saved:  # resuming: take the state saved with the checkpoint
            for name, value in saved["attributes"].items():
                setattr(self, name, value)

    def alpha(self, retain_loss: float, epoch: float, args: LayerConstrainedConfig) -> tuple[float, float]:
        """(alpha, Delta) for a batch with this retain loss: alpha_min while the first epoch records the
        baseline, then the adaptive formula."""
        if epoch < 1:
            self.baseline_sum += retain_loss
            self.baseline_count += 1
            return args.alpha_min, 0.0
        if self.baseline is None:
            if self.baseline_count == 0:
                raise RuntimeError("No first-epoch retain loss was recorded, so alpha has no baseline.")
            self.baseline = self.baseline_sum / self.baseline_count
        rise = retain_loss - self.baseline
        alpha = adaptive_alpha(retain_loss, self.baseline, args.alpha_scale, args.alpha_base, args.alpha_offset,
                               args.alpha_min, args.alpha_max)
        return alpha, rise


def trainable_module_names(model, args: LayerConstrainedConfig) -> list[str]:
    """Full names of the modules `args` chooses (explicit names, or `module_kind` of `args.layers`)."""
    names = {module: name for name, module in model.named_modules()}
    if args.trainable_modules:
        chosen = [n for n in names.values() if any(n == t or n.endswith("." + t) for t in args.trainable_modules)]
        if not chosen:
            raise ValueError(f"No module of the model matches trainable_modules={args.trainable_modules}; names "
                             f"look like {next(n for n in names.values() if 'layers.0.' in n)!r}.")
        return chosen
    layers = decoder_layers(model, "The layer-constrained trainer")
    bad = [i for i in args.layers if not 0 <= i < len(layers)]
    if bad:
        raise ValueError(f"Layers {bad} are out of range: the model has {len(layers)} layers.")
    kind = {"mlp": "mlp", "attention": "attention", "layer": "hidden"}[args.module_kind]
    return [names[layer_submodule(layers[i], kind)] for i in sorted(set(args.layers))]


class LayerConstrainedTrainer(UnlearnTrainer):
    """SHA256: train only the chosen modules with -CE_f + alpha * CE_r and the adaptive alpha.

    After construction, `trainable_modules` lists the trained modules, `traced` holds the causal trace when the
    layers were chosen by tracing, and `alpha_schedule` the adaptive-alpha state.
    """

    config_class = LayerConstrainedConfig

    def __init__(self, model, args: LayerConstrainedConfig | None = None, *positional, callbacks=None, **kwargs):
        super().__init__(model, args, *positional, callbacks=[*(callbacks or []), AdaptiveAlphaCallback()], **kwargs)

    def evaluation_dataset(self, args: LayerConstrainedConfig):
        if args.eval_benchmark == "semeval":
            from ..eval.semeval import load_semeval_split

            return load_semeval_split(args.eval_data, f"forget_{args.eval_semeval_split}")
        return super().evaluation_dataset(args)

    @property
    def alpha_schedule(self) -> AdaptiveAlphaCallback:
        # looked up each time: resuming with `restore_callback_states_from_checkpoint` replaces the instance
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, AdaptiveAlphaCallback))

    def prepare_method(self, model, args, forget_rows, retain_rows):
        self.traced = None
        if args.layers is None and not args.trainable_modules:
            self.traced = self._trace(model, forget_rows, args)
            args.layers = list(self.traced.suggested_layers)
        self.trainable_modules = trainable_module_names(model, args)
        chosen = {name: module for name, module in model.named_modules() if name in self.trainable_modules}
        trainable = {id(p) for module in chosen.values() for n, p in module.named_parameters()
                     if not self.is_peft or "lora_" in n}
        if not trainable:
            raise ValueError(f"The modules {self.trainable_modules} have no parameters to train"
                             f"{' (no LoRA weights in them: target these modules with the adapter)' if self.is_peft else ''}.")
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in trainable)

    def _trace(self, model, rows, args):
        from ..editing.causal_tracing import CausalTraceConfig, causal_trace, qa_fact

        facts = [
            qa_fact(self.tokenizer, r["question"], r["answer"], r.get("subject") or r["question"])
            for r in rows[: args.trace_num_facts]
        ]
        device = args.device
        model.to(device)
        return causal_trace(model, self.tokenizer, facts,
                            CausalTraceConfig(num_samples=args.trace_num_samples, seed=args.seed))

    def unlearning_loss(self, model, inputs):
        forget, retain = inputs["forget"], inputs["retain"]
        forget_nll = nll(self.forward(model, forget).logits, forget["labels"])
        retain_nll = nll(self.forward(model, retain).logits, retain["labels"])
        alpha, rise = self.alpha_schedule.alpha(float(retain_nll.detach()), float(self.state.epoch or 0), self.args)
        loss = layer_constrained_loss(forget_nll, retain_nll, alpha)
        metrics = {"forget_nll": forget_nll, "retain_nll": retain_nll, "alpha": torch.tensor(alpha),
                   "retain_loss_rise": torch.tensor(rise)}
        return loss, metrics

    def evaluation_result(self, model) -> dict:
        """TOFU or SemEval evaluation (on `args.eval_data`) plus `selection_score`, which picks the best checkpoint:
        TOFU: harmonic mean of (1 - forget ROUGE-L recall, model utility); SemEval: the task aggregate."""
        if self.args.eval_benchmark == "semeval":
            return self._evaluate_semeval(model)
        from ..eval.tofu import harmonic_mean

        result = super().evaluation_result(model)
        result["selection_score"] = harmonic_mean([1 - result["forget_rougeL_recall"], result["model_utility"]])
        return result

    def _evaluate_semeval(self, model) -> dict:
        from ..eval.semeval import evaluate_semeval

        result = evaluate_semeval(
            model,
            self.processing_class,
            self.args.eval_data,
            split=self.args.eval_semeval_split,
            prompt_format=self.args.eval_prompt_format,
            max_new_tokens=self.args.eval_max_new_tokens,
            max_length=self.args.max_length,
            max_items_per_group=self.args.eval_max_items,
            progress=self.is_world_process_zero(),
            accelerator=self.accelerator,
        )
        result["selection_score"] = result["task_aggregate"]
        return result
