"""`UnlearnConfig` and `UnlearnTrainer`: what every unlearning method shares.

The base trainer takes forget (and, where the method uses it, retain) data as `question`/`answer` rows, tokenizes
them with answer-only labels, pairs every forget example with a retain example drawn per process, keeps a frozen
reference model when the method needs one (the adapter-disabled base for a PEFT model, never a second copy), and
evaluates with the TOFU evaluation core. A method subclasses it with its config and `unlearning_loss`.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments, set_seed

from ..compatibility import fit_max_length
from ..data.formatting import ensure_pad_token, tokenize_qa
from ..data.pairing import ForgetRetainDataset, UnlearnDataCollator
from ..data.tofu import load_refusal_templates
from ..eval.tofu import TOFU_MAX_LENGTH, TOFU_MAX_NEW_TOKENS
from ..modeling import eval_mode, load_causal_lm
from .losses import KL_POSITIONS, kl_to_reference, nll


@dataclass
class UnlearnConfig(TrainingArguments):
    r"""
    Configuration shared by every unlearning trainer; a subclass of `transformers.TrainingArguments`, so every
    training argument applies (learning rate, epochs, batch size, gradient checkpointing, saving, ...).

    Parameters that control the model:
        model_init_kwargs (`dict`, *optional*):
            Keyword arguments for `load_causal_lm` when the trainer is given a model name or path.

    Parameters that control the data:
        max_length (`int`, defaults to `256`):
            Maximum tokens of a prompt plus answer; longer answers are truncated, a longer prompt is an error. Clipped
            to the model's context (`max_position_embeddings`), with a warning when set above it.

    Parameters that control evaluation (with `hf_unlearn.eval.evaluate_tofu`):
        eval_data (`str`, *optional*):
            TOFU-schema data (local folder or Hub name) to evaluate on; required for `evaluate()` and `eval_strategy`.
        eval_forget_split (`str`, defaults to `"forget10"`):
            Forget split evaluated (its `_perturbed` split gives the truth ratios).
        eval_holdout_split (`str`, *optional*):
            Split of never-trained examples for membership-inference AUCs.
        eval_reference (`str`, *optional*):
            Path to the retain model's saved evaluation JSON, for forget quality and PrivLeak.
        eval_max_new_tokens (`int`, defaults to `200`):
            Generation length for ROUGE (answers end at EOS; 200 as open-unlearning, `TOFU_MAX_NEW_TOKENS`).
        eval_max_items (`int`, *optional*):
            Evaluate only the first N items of every set (quick runs); all items when unset.

    Parameters that control when training ends (any method; `hf_unlearn.trainers.stopping`):
        stop_at_forget_prob (`float`, *optional*):
            Train until forgotten: end training at the first check where the forget rows' mean answer probability
            (exp(-mean token NLL), TOFU's `forget_prob`) is at or below this value; the epochs and steps are then
            an upper bound. Off when unset.
        stop_check_steps (`int`, defaults to `1`):
            Optimizer steps between two checks (each check is one scoring pass over the forget rows).

    Parameters that control SURE (`hf_unlearn.trainers.sure`, any method):
        sure_percentile (`float`, *optional*):
            Train only the modules whose forget-loss saliency at the original weights is at or above this percentile
            of all modules' saliencies (90: the top tenth); off when unset. Use with a larger learning rate.
    """

    model_init_kwargs: dict | None = field(default=None, metadata={"help": "Keyword arguments for loading a model."})
    max_length: int = field(default=TOFU_MAX_LENGTH, metadata={"help": "Maximum tokens of prompt plus answer."})
    eval_data: str | None = field(default=None, metadata={"help": "TOFU-schema data to evaluate on."})
    eval_forget_split: str = field(default="forget10", metadata={"help": "Forget split evaluated."})
    eval_holdout_split: str | None = field(default=None, metadata={"help": "Holdout split for MIA AUCs."})
    eval_reference: str | None = field(default=None, metadata={"help": "Retain model's saved evaluation JSON."})
    eval_max_new_tokens: int = field(default=TOFU_MAX_NEW_TOKENS, metadata={"help": "Generation length for ROUGE."})
    eval_max_items: int | None = field(default=None, metadata={"help": "Evaluate only the first N items of a set."})
    stop_at_forget_prob: float | None = field(
        default=None, metadata={"help": "End training once the forget rows' mean answer probability is at most this."}
    )
    stop_check_steps: int = field(default=1, metadata={"help": "Steps between two stop_at_forget_prob checks."})
    sure_percentile: float | None = field(
        default=None, metadata={"help": "SURE: train only modules at or above this forget-saliency percentile."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: unlearning batches are nested forget/retain dicts."}
    )

    def __post_init__(self):
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
            # Launched with several processes on a machine without GPUs: use accelerate's multi-CPU (gloo) mode;
            # otherwise every process would silently train alone on its own copy of the data.
            self.use_cpu = True
        if self.stop_at_forget_prob is not None and not 0 < self.stop_at_forget_prob < 1:
            raise ValueError(
                f"stop_at_forget_prob must be in (0, 1), got {self.stop_at_forget_prob}; e.g. 0.3 ends training once "
                "the forget answers' mean probability is at most 0.3."
            )
        if self.stop_check_steps < 1:
            raise ValueError(f"stop_check_steps must be at least 1, got {self.stop_check_steps}.")
        if self.sure_percentile is not None and not 0 <= self.sure_percentile < 100:
            raise ValueError(f"sure_percentile must be in [0, 100), got {self.sure_percentile}; 90 keeps the top tenth.")
        # Training arguments that transformers' TrainingArguments accepts as they are (a negative epoch count trains
        # 0 steps and "succeeds"; a negative learning rate is found only by the optimizer): refused here, at once.
        # (`not x > 0` rather than `x <= 0`, so NaN is refused too.)
        if not (self.max_steps > 0 or self.max_steps == -1):
            raise ValueError(
                f"max_steps must be a positive number of optimizer steps or -1 (unset: num_train_epochs decides), got "
                f"{self.max_steps}; e.g. 100 ends training after 100 optimizer steps."
            )
        if self.max_steps == -1 and not self.num_train_epochs > 0:
            raise ValueError(
                f"num_train_epochs must be > 0 (unless max_steps > 0 sets the length), got {self.num_train_epochs}; "
                "e.g. 5 trains five passes over the forget set."
            )
        if not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be > 0, got {self.learning_rate}; e.g. 1e-5 for the full model (open-unlearning's "
                "TOFU setting) or 1e-4 for a LoRA adapter."
            )
        if not self.per_device_train_batch_size >= 1:
            raise ValueError(
                f"per_device_train_batch_size must be >= 1, got {self.per_device_train_batch_size}; e.g. 4 forget "
                "examples (each with a retain partner) per device and step."
            )
        if not self.gradient_accumulation_steps >= 1:
            raise ValueError(
                f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}; e.g. 4 makes one "
                "optimizer step of 4 batches (1: a step per batch)."
            )
        if not self.max_length >= 2:
            raise ValueError(
                f"max_length must be >= 2 (a prompt token and an answer token), got {self.max_length}; e.g. 256 holds "
                "TOFU's questions and answers."
            )
        if not self.eval_max_new_tokens >= 1:
            raise ValueError(
                f"eval_max_new_tokens must be >= 1, got {self.eval_max_new_tokens}; e.g. 200 (open-unlearning's TOFU "
                "generation length)."
            )
        if self.eval_max_items is not None and not self.eval_max_items >= 1:
            raise ValueError(
                f"eval_max_items must be unset (every item) or >= 1, got {self.eval_max_items}; e.g. 8 for a quick "
                "evaluation."
            )
        super().__post_init__()

    def __getstate__(self) -> dict:
        """Pickled without `hub_token`: `Trainer` saves its arguments as `training_args.bin` in the model folder and
        in every checkpoint, and a push uploads that folder; a token must never reach a disk or the Hub. The live
        config keeps it (so does `HF_TOKEN` or `hf auth login`, where a token belongs)."""
        state = self.__dict__.copy()
        state["hub_token"] = None
        return state


RETAIN_LOSS_TYPES = ("nll", "kl")


@dataclass
class RetainTermConfig(UnlearnConfig):
    r"""
    The retain term's options, shared by GradDiff, NPO, SimNPO and IdkDPO (see `UnlearnTrainer.with_retain_term`).

    Parameters:
        retain_loss_type (`str`, defaults to `"nll"`): the retain term R. `"nll"`: the retain answers' mean token NLL
            (open-unlearning's `NLL`); `"kl"`: KL(pi_ref || pi_theta) to the frozen reference on the retain batch
            (open-unlearning's `KL`; needs the reference model).
        kl_positions (`str`, defaults to `"all"`): where the `"kl"` retain term is taken. `"all"`, as open-unlearning's
            `compute_kl_divergence`: every position of the padded retain batch (prompt and padding included), summed
            over the vocabulary and divided by batch x length; `"answer"`: averaged over the positions that predict
            an answer token only (see `losses.kl_to_reference`).
    """

    retain_loss_type: str = field(default="nll", metadata={"help": "Retain term: nll or kl."})
    kl_positions: str = field(
        default="all", metadata={"help": "KL retain term over all positions (reference) or answer positions."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.retain_loss_type not in RETAIN_LOSS_TYPES:
            raise ValueError(f"retain_loss_type must be 'nll' or 'kl', got {self.retain_loss_type!r}.")
        if self.kl_positions not in KL_POSITIONS:
            raise ValueError(f"kl_positions must be 'all' or 'answer', got {self.kl_positions!r}.")


def check_forget_and_retain_weights(config) -> None:
    """The forget weight `gamma` must be > 0 (0 trains no forgetting; a negative one learns the forget set) and the
    retain weight `alpha` >= 0 (0: forget set only); shared by GradDiff, NPO, SimNPO and IdkDPO, whose defaults are
    open-unlearning's."""
    defaults = type(config).__dataclass_fields__
    if not config.gamma > 0:
        raise ValueError(
            f"gamma (the forget term's weight) must be > 0, got {config.gamma}; e.g. {defaults['gamma'].default}, "
            "open-unlearning's setting for this method."
        )
    if not config.alpha >= 0:
        raise ValueError(
            f"alpha (the retain term's weight) must be >= 0 (0: forget set only), got {config.alpha}; e.g. "
            f"{defaults['alpha'].default}, open-unlearning's setting for this method."
        )


class _EpochCallback(TrainerCallback):
    """Tells the paired data set the epoch, so each epoch draws new retain partners."""

    def __init__(self, dataset: ForgetRetainDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


def question_answer_rows(data: Dataset | Sequence[dict] | None, name: str) -> list[dict] | None:
    """The rows of a forget/retain set, each checked to have a `question` and a non-empty `answer` string (every
    row, not only the first: a bad row far down would otherwise fail mid-training)."""
    if data is None:
        return None
    rows = data.to_list() if isinstance(data, Dataset) else list(data)
    if not rows:
        raise ValueError(f"The {name} set is empty; it needs question/answer rows.")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"Row {index} of the {name} set is a {type(row).__name__}, not a question/answer dict.")
        missing = {key for key in ("question", "answer") if row.get(key) is None}  # absent (None in a Dataset)
        if missing:
            raise ValueError(
                f"Row {index} of the {name} set lacks {sorted(missing)}; every row needs "
                "`question` and `answer` fields (rename the columns, e.g. dataset.rename_column('prompt', 'question'))."
            )
        for key in ("question", "answer"):
            if not isinstance(row[key], str):
                raise ValueError(f"Row {index} of the {name} set: `{key}` is a {type(row[key]).__name__}, not text.")
        if not row["answer"].strip():
            raise ValueError(f"Row {index} of the {name} set has an empty answer: there is nothing to learn or forget; "
                             "drop the row.")
    return rows


_WARNED_OVERLAPS: set[int] = set()


def check_forget_retain_overlap(forget_rows: list[dict], retain_rows: list[dict] | None) -> None:
    """Refuse a retain set equal to the forget set (every step would undo itself) and warn about rows in both."""
    if not retain_rows:
        return
    forget_pairs = {(r["question"], r["answer"]) for r in forget_rows}
    retain_pairs = {(r["question"], r["answer"]) for r in retain_rows}
    if retain_pairs == forget_pairs:
        raise ValueError("The retain set is the forget set; pass the rows to keep as retain data (on TOFU, the "
                         "complement split: forget10 -> retain90).")
    shared = sorted(forget_pairs & retain_pairs)
    key = hash((frozenset(forget_pairs), frozenset(retain_pairs)))
    if shared and key not in _WARNED_OVERLAPS:  # once per pair of data sets: the pipeline checks before the trainer
        _WARNED_OVERLAPS.add(key)
        warnings.warn(
            f"{len(shared)} of the {len(retain_pairs)} distinct retain rows are also forget rows (first: "
            f"{shared[0][0][:60]!r}); the method is asked to forget and keep them at once.",
            stacklevel=3,
        )


class UnlearnTrainer(Trainer):
    """Base trainer for unlearning. Subclasses set `requires_retain`/`requires_reference` (or override
    `uses_retain`/`uses_reference` when it depends on the config) and implement
    `unlearning_loss(model, inputs) -> (loss, metrics)`; they may add views of each forget example in
    `forget_views`."""

    config_class = UnlearnConfig
    requires_retain = True
    requires_reference = False

    def __init__(
        self,
        model: PreTrainedModel | str,
        args: UnlearnConfig | None = None,
        forget_dataset: Dataset | Sequence[dict] | None = None,
        retain_dataset: Dataset | Sequence[dict] | None = None,
        processing_class=None,
        ref_model: PreTrainedModel | None = None,
        peft_config=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
    ):
        args = args or self.config_class(output_dir="unlearn_output")
        if not isinstance(args, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(args).__name__}.")
        if isinstance(model, str):
            model, tokenizer = load_causal_lm(model, **(args.model_init_kwargs or {}))
            processing_class = processing_class or tokenizer
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model.config._name_or_path)
        ensure_pad_token(processing_class)
        args.max_length = fit_max_length(model, args.max_length, default=TOFU_MAX_LENGTH)  # at most the context

        forget_rows = question_answer_rows(forget_dataset, "forget")
        if forget_rows is None:
            raise ValueError(f"{type(self).__name__} needs a forget_dataset of question/answer rows.")
        retain_rows = question_answer_rows(retain_dataset, "retain") if self.uses_retain(args) else None
        if self.uses_retain(args) and retain_rows is None:
            raise ValueError(
                f"{type(self).__name__} with these settings needs a retain_dataset (question/answer rows)."
            )
        check_forget_retain_overlap(forget_rows, retain_rows)

        from peft import PeftModel, get_peft_model

        if peft_config is not None:
            if isinstance(model, PeftModel):
                raise ValueError("The model is already a PEFT model; pass either a PeftModel or a peft_config.")
            set_seed(args.seed)  # the adapter's initialisation, before Trainer seeds: not whatever RNG state came before
            model = get_peft_model(model, peft_config)
        self.is_peft = isinstance(model, PeftModel)
        if self.is_peft and args.gradient_checkpointing:
            # With frozen embeddings and checkpointing, no input requires grad and the LoRA weights get none.
            model.enable_input_require_grads()

        self.ref_model = None
        if self.uses_reference(args) and not self.is_peft:
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
            self.ref_model.requires_grad_(False).eval()

        self.tokenizer = processing_class
        self.prepare_method(model, args, forget_rows, retain_rows)
        self.saliency_map = None
        if args.sure_percentile is not None:
            from .sure import apply_sure

            if getattr(model, "hf_device_map", None) is None:
                model.to(args.device)  # rank on the training device (the Trainer moves it there next anyway)
            self.saliency_map = apply_sure(model, processing_class, forget_rows, args.sure_percentile, args.max_length)
        forget_views = [self.forget_views(row, i, args) for i, row in enumerate(forget_rows)]
        retain_examples = (
            [tokenize_qa(processing_class, r["question"], r["answer"], args.max_length) for r in retain_rows]
            if retain_rows is not None
            else None
        )
        train_dataset = ForgetRetainDataset(forget_views, retain_examples, seed=args.seed, process_index=args.process_index)
        eval_dataset = self.evaluation_dataset(args) if args.eval_data is not None else None
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=UnlearnDataCollator(processing_class.pad_token_id),
            processing_class=processing_class,
            callbacks=[*(callbacks or []), _EpochCallback(train_dataset)],
            optimizers=optimizers,
        )
        if self.ref_model is not None:
            self.ref_model = self._prepare_reference(self.ref_model)
        self._logged = defaultdict(list)
        self.last_evaluation: dict | None = None
        self.stopped_when_forgotten: dict | None = None  # {"step", "forget_prob"} when stop_at_forget_prob ended it
        if args.stop_at_forget_prob is not None:
            from .stopping import StopWhenForgottenCallback

            self.add_callback(StopWhenForgottenCallback(self, forget_rows))

    # ----- hooks for methods -------------------------------------------------------------------------------------
    def uses_retain(self, args: UnlearnConfig) -> bool:
        """Whether this method, with these settings, trains on retain data."""
        return self.requires_retain

    def uses_reference(self, args: UnlearnConfig) -> bool:
        """Whether this method, with these settings, needs the frozen reference model."""
        return self.requires_reference

    def with_retain_term(self, model, inputs, forget_term: torch.Tensor, metrics: dict, always: bool = False):
        """`(loss, metrics)` with loss = gamma * forget_term + alpha * R(D_r), the combination GradDiff, NPO, SimNPO
        and IdkDPO share (`args.gamma`, `args.alpha`; open-unlearning's `gamma * forget_loss + alpha * retain_loss`).
        R, logged as `retain_loss`, is the retain answers' NLL (`retain_loss_type="nll"`) or KL(pi_ref || pi_theta)
        to the frozen reference (`"kl"`, over `args.kl_positions`); it is skipped at alpha = 0 unless `always`."""
        loss = self.args.gamma * forget_term
        if self.args.alpha > 0 or always:
            retain = inputs["retain"]
            logits = self.forward(model, retain).logits
            if self.args.retain_loss_type == "nll":
                retain_loss = nll(logits, retain["labels"])
            else:
                ref_logits = self.reference_forward(model, retain).logits
                retain_loss = kl_to_reference(logits, ref_logits, retain["labels"], positions=self.args.kl_positions)
            loss = loss + self.args.alpha * retain_loss
            metrics = {**metrics, "retain_loss": retain_loss}
        return loss, metrics

    def prepare_method(self, model, args, forget_rows: list[dict], retain_rows: list[dict] | None) -> None:
        """Method-specific set-up before the data are tokenized (e.g. choosing trainable parameters)."""

    def forget_views(self, row: dict, index: int, args: UnlearnConfig) -> dict[str, dict]:
        """Tokenized views of one forget example; the base gives the forget answer itself."""
        return {"forget": tokenize_qa(self.tokenizer, row["question"], row["answer"], args.max_length)}

    def unlearning_loss(self, model, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    # ----- shared machinery --------------------------------------------------------------------------------------
    def _prepare_reference(self, ref_model):
        if self.is_deepspeed_enabled:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(ref_model, self.accelerator)
        if self.is_fsdp_enabled:
            from trl.models.utils import prepare_fsdp

            return prepare_fsdp(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    def reference_context(self, model):
        """Inside it, `reference_forward` runs the frozen reference (the adapter-disabled base for PEFT)."""
        if self.ref_model is not None:
            return nullcontext()
        return self.accelerator.unwrap_model(model).disable_adapter()

    @torch.no_grad()
    def reference_forward(self, model, batch: dict, **kwargs):
        with self.reference_context(model):
            target = self.ref_model if self.ref_model is not None else model
            return target(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)

    @staticmethod
    def forward(model, batch: dict, **kwargs):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = self.unlearning_loss(model, inputs)
        for name, value in metrics.items():
            self._logged[name].append(float(value.detach()))
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._logged:
            logs.update({k: sum(v) / len(v) for k, v in self._logged.items()})
            self._logged.clear()
        super().log(logs, *args, **kwargs)

    def evaluation_dataset(self, args: UnlearnConfig):
        """The rows `Trainer` holds as `eval_dataset` (it requires one for an evaluation strategy); `evaluate` reads
        every split it needs from `args.eval_data` itself."""
        from ..data.tofu import load_tofu_split

        return load_tofu_split(args.eval_data, f"{args.eval_forget_split}_perturbed")

    def evaluation_result(self, model) -> dict:
        """The evaluation core's result for `model`: TOFU metrics on `args.eval_data`."""
        from ..eval.tofu import evaluate_tofu

        return evaluate_tofu(
            model,
            self.processing_class,
            self.args.eval_data,
            forget_split=self.args.eval_forget_split,
            holdout_split=self.args.eval_holdout_split,
            reference=self.args.eval_reference,
            max_new_tokens=self.args.eval_max_new_tokens,
            max_length=self.args.max_length,
            max_items=self.args.eval_max_items,
            progress=self.is_world_process_zero(),
            accelerator=self.accelerator,
        )

    def evaluation_model(self):
        """The model the evaluation core judges: the trained model itself, for most methods."""
        return self.accelerator.unwrap_model(self.model)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Evaluate with the TOFU evaluation core on `args.eval_data` (every process takes part)."""
        if self.args.eval_data is None:
            raise ValueError("Set `eval_data` in the config (a TOFU-schema folder or Hub name) to evaluate.")
        model = self.evaluation_model()
        with eval_mode(model):
            result = self.evaluation_result(model)
        self.last_evaluation = result
        metrics = {
            f"{metric_key_prefix}_{k}": float(v)
            for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics



class RefusalTemplateMixin:
    """Adds a "template" view to each forget example: its question answered with a refusal drawn per example
    (reproducibly from the seed) from `args.template_file` or the package's templates."""

    def prepare_method(self, model, args, forget_rows, retain_rows):
        self.templates = load_refusal_templates(args.template_file)

    def forget_views(self, row, index, args):
        template = self.templates[int(np.random.default_rng([args.seed, index]).integers(len(self.templates)))]
        return {
            "forget": tokenize_qa(self.tokenizer, row["question"], row["answer"], args.max_length),
            "template": tokenize_qa(self.tokenizer, row["question"], template, args.max_length),
        }
