"""Publish an unlearned model: a model card rendered from the run's report, then an upload to the Hub.

A run folder (what the recipes and `hf-unlearn unlearn` write) holds `model/` (safetensors weights or a PEFT
adapter, with the tokenizer) and `report/evaluation*.json|md|png`. `push_unlearned` completes `model/` first (the
card as `README.md`, the evaluation files beside it) and uploads it afterwards, so a failed upload leaves a complete
local folder that can be pushed again with `hf-unlearn push`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import fields
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData

from . import __version__
from .eval.report import markdown_table
from .files import atomic_write


# The template ships in the package (in the source tree a link to its source, model_cards/unlearned_model_card.md).
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "templates" / "unlearned_model_card.md"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
KEY_TRAINING_SETTINGS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "lr_scheduler_type", "warmup_steps", "weight_decay", "optim", "seed", "max_length",
)


class PushError(RuntimeError):
    """The upload failed; the local folder is complete and the message says how to retry."""


def model_kind(model_dir: str | os.PathLike) -> str:
    """`"uld"` for a ULD assistant (adapter + `uld_config.json`), `"adapter"` for a PEFT adapter, `"model"` for full
    weights; raises if none is there."""
    folder = Path(model_dir)
    if (folder / "uld_config.json").is_file():
        return "uld"
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return "model"
    raise FileNotFoundError(
        f"{folder} holds no safetensors weights or PEFT adapter; point to the `model` folder of a finished run."
    )


def latest_report(run_dir: str | os.PathLike) -> Path:
    """The newest `report/evaluation[-N].json` of a run folder."""
    reports = list(Path(run_dir, "report").glob("evaluation*.json"))
    if not reports:
        raise FileNotFoundError(f"No report/evaluation*.json under {run_dir}; run an unlearning recipe first.")

    def number(path: Path) -> int:
        suffix = path.stem.removeprefix("evaluation").lstrip("-")
        return int(suffix) if suffix.isdigit() else 1

    return max(reports, key=number)


def render_model_card(
    run_dir: str | os.PathLike,
    repo_id: str | None = None,
    license: str = "other",
    base_model: str | None = None,
) -> ModelCard:
    """The model card of a run: Hub metadata header, what was forgotten, method and hyperparameters, the report's
    evaluation table and plot, limitations, and how to load the model."""
    from .trainers import METHODS, UnlearnConfig

    if not MODEL_CARD_TEMPLATE.is_file():
        raise FileNotFoundError(
            f"Model card template missing at {MODEL_CARD_TEMPLATE}: this hf_unlearn installation is incomplete; "
            "reinstall it (`pip install --force-reinstall hf-unlearn`, or `pip install -e .` in its source tree)."
        )
    run_dir = Path(run_dir)
    report_path = latest_report(run_dir)
    report = json.loads(report_path.read_text())
    run = report["settings"].get("run", {})
    training = report["settings"].get("training", {})
    method = run.get("method", "unknown")
    kind = model_kind(run_dir / "model")
    base_model = base_model or run.get("model_name_or_path") or "unknown"
    dataset = run.get("dataset") or "unknown"
    results = {label: result for label, result in report["results"].items() if label != "relapse"}

    method_settings = []
    if method in METHODS:
        base_fields = {f.name for f in fields(UnlearnConfig)}
        method_settings = [f.name for f in fields(METHODS[method][0]) if f.name not in base_fields]
    hyperparameters = [(name, training[name]) for name in (*method_settings, *KEY_TRAINING_SETTINGS) if name in training]
    if run.get("lora_r"):
        hyperparameters.append(("lora_r", run["lora_r"]))

    card_data = ModelCardData(
        base_model=base_model if HUB_ID.match(base_model) else None,
        datasets=[dataset] if HUB_ID.match(dataset) else None,
        library_name={"adapter": "peft", "uld": "hf_unlearn"}.get(kind, "transformers"),
        license=license,
        pipeline_tag="text-generation",
        tags=["unlearning", "hf_unlearn", method],
    )
    name = repo_id or run_dir.name
    plot = report_path.with_suffix(".png")
    return ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARD_TEMPLATE),
        model_name=name,
        summary=(
            f"`{base_model}` after unlearning the `{run.get('forget_split')}` split of `{dataset}` with "
            f"{method}, using [hf_unlearn](https://github.com/hf-unlearn/hf_unlearn)."
        ),
        dataset=dataset,
        forget_split=run.get("forget_split"),
        retain_split=run.get("retain_split"),
        base_model_name=base_model,
        method=method,
        library_version=__version__,
        hyperparameters=hyperparameters,
        all_settings=json.dumps(training, indent=2, sort_keys=True, default=str),
        evaluation_title=report.get("title", "Evaluation"),
        evaluation_table=markdown_table(results),
        plot_file="evaluation.png" if plot.is_file() else None,
        relapse_table=_relapse_table(report_path.parent),
        loading=_loading_snippet(kind, repo_id or str(run_dir / "model")),
    )


def _relapse_table(report_dir: Path) -> str | None:
    """The newest `relapse*.md` of the run's report folder (written by the recipes' relapse check), minus its title."""
    reports = sorted(report_dir.glob("relapse*.md"), key=lambda p: p.stat().st_mtime)
    if not reports:
        return None
    return "\n".join(line for line in reports[-1].read_text().splitlines() if not line.startswith("# ")).strip()


def _loading_snippet(kind: str, location: str) -> str:
    if kind == "uld":
        return (
            "A ULD assistant (LoRA adapter on the target's first layers) with its `alpha` and `tau` in "
            "`uld_config.json`; the unlearned model is the logit difference of the target and the assistant:\n\n"
            "```python\nfrom hf_unlearn import ULDModel\nfrom transformers import AutoTokenizer\n\n"
            f'model = ULDModel.from_pretrained("{location}")   # loads the target named in uld_config.json\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{location}")\n'
            'output = model.generate(**tokenizer("...", return_tensors="pt"), max_new_tokens=64)\n```'
        )
    if kind == "adapter":
        return (
            "A PEFT adapter on the base model (PEFT loads the base named in `adapter_config.json`):\n\n"
            "```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{location}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{location}")\nmodel = model.merge_and_unload()  # optional\n```'
        )
    return (
        "The full unlearned model:\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{location}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{location}")\n```'
    )


def write_model_card(run_dir: str | os.PathLike, repo_id: str | None = None, license: str = "other",
                     base_model: str | None = None) -> Path:
    """Render the card into `<run_dir>/model/README.md` with the report's JSON and plot beside it (atomically)."""
    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    card = render_model_card(run_dir, repo_id=repo_id, license=license, base_model=base_model)
    report = latest_report(run_dir)
    for source, target in ((report, "evaluation.json"), (report.with_suffix(".png"), "evaluation.png")):
        if source.is_file():
            atomic_write(model_dir / target, source.read_bytes())
    atomic_write(model_dir / "README.md", str(card).encode())
    return model_dir / "README.md"


def push_unlearned(
    run_dir: str | os.PathLike,
    repo_id: str,
    private: bool = True,
    token: str | None = None,
    license: str = "other",
    base_model: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Write the model card into the run's `model/` folder, then upload that folder to `repo_id` (private by default).

    The token comes from `token`, else the usual `HF_TOKEN` / `hf auth login`; it is never printed or saved.
    Returns the repository URL; raises `PushError` with the retry command if the upload fails.
    """
    if not HUB_ID.match(repo_id):
        raise ValueError(f"repo_id {repo_id!r} is not of the form 'user-or-org/name'.")
    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    write_model_card(run_dir, repo_id=repo_id, license=license, base_model=base_model)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=model_dir,
            commit_message=commit_message or f"Upload unlearned model ({model_kind(model_dir)}) with hf_unlearn",
        )
    except Exception as error:  # any network, auth or server failure: the local folder is what matters
        raise PushError(
            f"Upload of {model_dir} to {repo_id} failed ({type(error).__name__}: {error}). The local folder is "
            f"complete (weights, tokenizer, README.md card, evaluation files). Retry with:\n"
            f"    hf-unlearn push --run_dir {run_dir} --hub_model_id {repo_id}"
        ) from error
    return str(url)
