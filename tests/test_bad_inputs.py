"""Bad input through the command line, as a newcomer types it: each case must end in one line on stderr
(`hf-unlearn <command>: error: ...`, or argparse's usage line) that names the problem, with a non-zero exit, no
traceback, and, where the input can be checked up front, before any model's weights load (counted by wrapping
`from_pretrained`, not by timing).

The table is `CASES`: (case id, argv builder, expected message fragment, checked before any model loads). The
method hyperparameter ranges have their own table in `test_bad_inputs_config.py`; tokenizer and context checks
with models in `test_bad_inputs_models.py`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM

from hf_unlearn.cli import main as cli_main
from hf_unlearn.pipeline import parse_unlearn_args


pytestmark = pytest.mark.usefixtures("single_thread")

TOKEN = "hf_NeverOnDiskTestToken1234567890"


@pytest.fixture
def model_loads(monkeypatch):
    """The models whose weights were loaded (every `from_pretrained` of a causal LM or PEFT model)."""
    loads: list[str] = []
    for cls in (AutoModelForCausalLM, AutoPeftModelForCausalLM):
        original = cls.from_pretrained

        def counting(name, *args, _original=original, **kwargs):
            loads.append(str(name))
            return _original(name, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", counting)
    return loads


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of `hf-unlearn argv`, in this process."""
    try:
        status = cli_main(argv)
    except SystemExit as exit_:  # argparse usage errors and explicit refusals
        status = exit_.code if isinstance(exit_.code, int) else 1
        if isinstance(exit_.code, str):
            print(exit_.code, file=__import__("sys").stderr)
    return status, capsys.readouterr().err


# ----- small bad folders and files, built from the embedded benchmark's data -------------------------------------


@pytest.fixture
def bad(embedded, tmp_path):
    """Paths of bad inputs, created on demand: `bad.data(edit)` a copy of the embedded data with forget10 edited."""

    class Bad:
        model = str(embedded.finetuned_dir)
        data_dir = str(embedded.data_dir)

        @staticmethod
        def data(edit=None, name="data") -> str:
            folder = tmp_path / name
            shutil.copytree(embedded.data_dir, folder)
            if edit is not None:
                edit(folder / "forget10.json")
            return str(folder)

        @staticmethod
        def file(name: str, content: str | bytes) -> str:
            path = tmp_path / name
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
            return str(path)

        @staticmethod
        def folder(name: str, files: dict[str, str | bytes] | None = None) -> str:
            folder = tmp_path / name
            folder.mkdir(parents=True)
            for file_name, content in (files or {}).items():
                (folder / file_name).write_bytes(content if isinstance(content, bytes) else content.encode())
            return str(folder)

        out = str(tmp_path / "out")

    return Bad


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _drop_answer_of_row(index: int):
    def edit(path: Path) -> None:
        rows = _lines(path)
        del rows[index]["answer"]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    return edit


def _append(text: bytes):
    def edit(path: Path) -> None:
        with open(path, "ab") as handle:
            handle.write(text)

    return edit


def _real(b, *flags: str) -> list[str]:
    """An unlearn command on the embedded model and data named explicitly (a "real" run), with `flags`."""
    return ["unlearn", "--model_name_or_path", b.model, "--dataset", b.data_dir, "--output_dir", b.out,
            "--report_to", "none", *flags]


def _truncated_copy(b) -> str:
    """The embedded model's folder with its safetensors file cut short (an interrupted download)."""
    folder = Path(b.folder("truncated"))
    for path in Path(b.model).iterdir():
        if path.is_file():
            shutil.copy(path, folder / path.name)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return str(folder)


def _gpt2_config() -> str:
    from transformers import GPT2Config

    return GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100).to_json_string()

# (id, argv from the `bad` paths, message fragment, checked before any model loads)
CASES = [
    # --- unlearn: flags
    ("unknown method", lambda b: ["unlearn", "--method", "forgetall"], "Unknown method 'forgetall'", True),
    ("negative epochs", lambda b: _real(b, "--num_train_epochs", "-2"), "num_train_epochs", True),
    ("negative epochs, = spelling", lambda b: _real(b, "--num_train_epochs=-2"), "num_train_epochs", True),
    ("zero learning rate", lambda b: _real(b, "--learning_rate", "0"), "learning_rate", True),
    ("negative learning rate", lambda b: _real(b, "--learning_rate", "-1e-4"), "learning_rate", True),
    ("negative lora rank", lambda b: _real(b, "--lora_r", "-4"), "lora_r must be 0", True),
    ("unknown relapse precision", lambda b: _real(b, "--relapse_precisions", "nf5"), "Unsupported bit width", True),
    ("bad stop_at_forget_prob", lambda b: _real(b, "--stop_at_forget_prob", "1.5"), "stop_at_forget_prob", True),
    ("NPO negative beta", lambda b: _real(b, "--method", "npo", "--beta", "-1"), "beta", True),
    ("unknown flag", lambda b: _real(b, "--forget_weigth", "2"), "--forget_weigth", True),
    ("model without data", lambda b: ["unlearn", "--model_name_or_path", b.model, "--output_dir", b.out],
     "Name both --model_name_or_path and --dataset", True),
    # --- unlearn: output folder
    ("output folder holds an earlier run",
     lambda b: _real(b) [:-4] + ["--output_dir", b.folder("earlier", {"report.json": "{}"}), "--report_to", "none"],
     "already holds results", True),
    ("output folder is a file", lambda b: _real(b)[:-4] + ["--output_dir", b.file("a_file", "x"), "--report_to", "none"],
     "is a file", True),
    ("output folder cannot be created",
     lambda b: _real(b)[:-4] + ["--output_dir", b.file("a_file", "x") + "/run", "--report_to", "none"],
     "cannot create --output_dir", True),
    # --- unlearn: model
    ("model path does not exist", lambda b: ["unlearn", "--model_name_or_path", "./no/such/model", "--dataset",
                                             b.data_dir, "--output_dir", b.out], "No model at no/such/model", True),
    ("misspelt Hub model name", lambda b: ["unlearn", "--model_name_or_path", "someorg/misspelt-modl", "--dataset",
                                           b.data_dir, "--output_dir", b.out], "Cannot load 'someorg/misspelt-modl'", True),
    ("model folder is not a model", lambda b: ["unlearn", "--model_name_or_path", b.folder("notes", {"a.txt": "x"}),
                                               "--dataset", b.data_dir, "--output_dir", b.out],
     "not a transformers model folder", True),
    ("model folder holds pickles only",
     lambda b: ["unlearn", "--model_name_or_path", b.folder("pickled", {"config.json": "{}", "pytorch_model.bin": b"x"}),
                "--dataset", b.data_dir, "--output_dir", b.out], "pickle", True),
    ("model weights corrupt (truncated safetensors)",
     lambda b: ["unlearn", "--model_name_or_path", _truncated_copy(b), "--dataset", b.data_dir, "--output_dir", b.out],
     "cannot be read", False),
    # --- unlearn: data
    ("unknown forget split", lambda b: _real(b, "--forget_split", "forget11"), "Unknown forget split 'forget11'", True),
    ("data path is a file", lambda b: ["unlearn", "--model_name_or_path", b.model, "--dataset",
                                       str(Path(b.data_dir) / "forget10.json"), "--output_dir", b.out],
     "give the folder that holds it", True),
    ("data folder does not exist", lambda b: ["unlearn", "--model_name_or_path", b.model, "--dataset", "./no/data",
                                              "--output_dir", b.out], "No data folder at no/data", True),
    ("retain split is the forget split", lambda b: _real(b, "--retain_split", "forget10"),
     "retain set is the forget set", True),
    ("a later row lacks its answer",
     lambda b: ["unlearn", "--model_name_or_path", b.model, "--dataset", b.data(_drop_answer_of_row(3)), "--output_dir",
                b.out], "Row 3 of the forget10 set lacks ['answer']", True),
    ("a split not in the folder", lambda b: _real(b, "--retain_split", "retain42"), "has no split 'retain42'", True),
    ("a corrupt JSON line", lambda b: ["unlearn", "--model_name_or_path", b.model, "--dataset", b.data(_append(b"{oops\n")),
                                       "--output_dir", b.out], "not JSON lines", True),
    ("data that is not UTF-8",
     lambda b: ["unlearn", "--model_name_or_path", b.model, "--dataset",
                b.data(_append('{"question": "caf\u00e9?", "answer": "yes"}\n'.encode("latin-1"))), "--output_dir", b.out],
     "is not UTF-8", True),
    ("holdout split not in the folder", lambda b: _real(b, "--holdout_split", "holdout99"), "has no split 'holdout99'",
     True),
    ("corrupt reference evaluation", lambda b: _real(b, "--reference_eval", b.file("reference.json", "{not json")),
     "is not an evaluation JSON", True),
    ("reference evaluation of another kind", lambda b: _real(b, "--reference_eval", b.file("reference.json", "[1, 2]")),
     "not an evaluation", True),
    ("push to an invalid repository id", lambda b: _real(b, "--push_to_hub", "--hub_model_id", "no slash here"),
     "is not of the form user-or-org/name", True),
    ("push without a repository id", lambda b: _real(b, "--push_to_hub"), "--push_to_hub needs --hub_model_id", True),
    ("resume from an incomplete checkpoint",
     lambda b: _real(b)[:-4] + ["--output_dir", str(Path(b.folder("run/checkpoint-2", {"model.safetensors": b"x"})).parent),
                                "--resume_from_checkpoint", str(Path(b.out).parent / "run" / "checkpoint-2"),
                                "--report_to", "none"], "is not a complete checkpoint", True),
    ("resume with no checkpoint", lambda b: _real(b, "--resume_from_checkpoint", "true"), "holds no complete", True),
    # --- stamp
    ("stamp: empty answer", lambda b: ["stamp", "--model_name_or_path", b.model, "--prompt", "Who?", "--answer", " ",
                                       "--output_dir", b.out], "--answer is empty", True),
    ("stamp: bad layers", lambda b: ["stamp", "--model_name_or_path", b.model, "--prompt", "Who?", "--answer", "Jo.",
                                     "--layers", "one,two", "--output_dir", b.out], "layers must be", True),
    ("stamp: rank 0", lambda b: ["stamp", "--model_name_or_path", b.model, "--prompt", "Who?", "--answer", "Jo.",
                                 "--rank", "0", "--output_dir", b.out], "--rank must be at least 1", True),
    ("stamp: output folder holds files",
     lambda b: ["stamp", "--model_name_or_path", b.model, "--prompt", "Who?", "--answer", "Jo.", "--output_dir",
                b.folder("earlier", {"model.safetensors": b"x"})], "already holds files", True),
    ("stamp: a model without MLP down-projections (GPT-2)",
     lambda b: ["stamp", "--model_name_or_path", b.folder("gpt2", {"config.json": _gpt2_config()}), "--prompt", "Who?",
                "--answer", "Jo.", "--output_dir", b.out], "GPT2LMHeadModel has none", True),
    ("stamp: missing retain questions file",
     lambda b: ["stamp", "--model_name_or_path", b.model, "--prompt", "Who?", "--answer", "Jo.", "--retain_questions",
                "no_such_questions.txt", "--output_dir", b.out], "no_such_questions.txt", True),
    # --- antidote
    ("antidote: dense_ratio above 1", lambda b: ["antidote", "--model_name_or_path", b.model, "--dense_ratio", "1.5",
                                                 "--output_dir", b.out], "dense_ratio", True),
    ("antidote: CSV without goal/target",
     lambda b: ["antidote", "--model_name_or_path", b.model, "--realignment_data", b.file("rows.csv", "prompt,reply\na,b\n"),
                "--output_dir", b.out], "lacks the column(s) ['goal', 'target']", True),
    ("antidote: a later JSON row without answer",
     lambda b: ["antidote", "--model_name_or_path", b.model, "--realignment_data",
                b.file("rows.jsonl", '{"question": "q", "answer": "a"}\n{"question": "q2"}\n'), "--output_dir", b.out],
     "row 2 lacks 'question' or 'answer'", True),
    ("antidote: corrupt JSON lines",
     lambda b: ["antidote", "--model_name_or_path", b.model, "--realignment_data", b.file("rows.jsonl", "{oops\n"),
                "--output_dir", b.out], "line 1: not JSON lines", True),
    ("antidote: unknown target modules", lambda b: ["antidote", "--model_name_or_path", b.model, "--score", "magnitude",
                                                    "--target_modules", "query", "key", "--output_dir", b.out],
     "found no linear layers named ['key', 'query']", True),
    ("antidote: adapter whose base model is gone",
     lambda b: ["antidote", "--model_name_or_path",
                b.folder("orphan", {"adapter_config.json": json.dumps({"base_model_name_or_path": "/no/such/base",
                                                                        "target_modules": ["q_proj"]}),
                                    "adapter_model.safetensors": b"x"}), "--score", "magnitude", "--output_dir", b.out],
     "/no/such/base", True),
    ("antidote: adapter saved as a pickle",
     lambda b: ["antidote", "--model_name_or_path",
                b.folder("adapter", {"adapter_config.json": "{}", "adapter_model.bin": b"x"}), "--score", "magnitude",
                "--output_dir", b.out], "pickle", True),
    # --- relapse, eval, generate, push, card
    ("relapse: unknown precision", lambda b: ["relapse", "--model", b.model, "--precisions", "nf5", "--output_dir", b.out],
     "Unsupported bit width", True),
    ("relapse: original of another architecture",
     lambda b: ["relapse", "--model", b.model, "--original", b.folder("other", {"config.json": json.dumps(
         {**json.loads((Path(b.model) / "config.json").read_text()), "num_hidden_layers": 7})}), "--output_dir", b.out],
     "num_hidden_layers 4 vs 7", True),
    ("eval: tofu without a model", lambda b: ["eval", "--benchmark", "tofu", "--output_dir", b.out],
     "--model is required", True),
    ("eval: MUSE data folder of another layout", lambda b: ["eval", "--benchmark", "muse", "--model", b.model, "--data",
                                                             b.data_dir, "--output_dir", b.out], "MUSE", True),
    ("generate: output file exists",
     lambda b: ["generate", "--cleangen", "--output_file", b.file("answers.jsonl", "{}\n")], "exists", True),
    ("push without a repository", lambda b: ["push", "--run_dir", b.out], "--hub_model_id", True),
    ("push to an invalid id", lambda b: ["push", "--run_dir", b.folder("a_run"), "--hub_model_id", "bad id"],
     "is not of the form", True),
    ("card of a folder that is not a run", lambda b: ["card", "--run_dir", b.folder("not_a_run")], "not_a_run", True),
    ("eval: corrupt reference", lambda b: ["eval", "--model", b.model, "--reference", b.file("ref.json", "{oops"),
                                           "--output_dir", b.out], "is not an evaluation JSON", True),
    ("generate: prompts file without prompts",
     lambda b: ["generate", "--cleangen", "--prompts_file", b.file("p.jsonl", '{"text": "hi"}\n'), "--output_file",
                str(Path(b.out).parent / "answers.jsonl")], "row 1 has no 'question' or 'instruction'", True),
    ("generate: target without reference",
     lambda b: ["generate", "--cleangen", "--target_name_or_path", b.model, "--output_file",
                str(Path(b.out).parent / "answers.jsonl")], "needs --reference_name_or_path", True),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_naming_the_problem(case, bad, model_loads, capsys):
    _, argv_of, fragment, before_any_model = case
    argv = argv_of(bad)
    status, err = run_cli(argv, capsys)
    assert status not in (0, None), err
    assert "Traceback" not in err, err
    assert fragment in err, err
    if status != 2:  # argparse's usage errors (status 2) print the usage above their one error line
        messages = [line for line in err.splitlines() if line.strip() and not line.startswith(" ") and "Warning" not in line]
        assert len(messages) == 1, err
    if before_any_model:
        assert model_loads == [], f"the model loaded before the refusal: {model_loads}"
    assert not Path(bad.out).exists() or not any(Path(bad.out).iterdir()), "a refused run wrote results"


def test_traceback_is_shown_when_asked(bad, capsys):
    with pytest.raises(ValueError, match="--answer is empty"):
        cli_main(["stamp", "--model_name_or_path", bad.model, "--prompt", "Who?", "--answer", "", "--output_dir",
                  bad.out, "--traceback"])


def test_flags_written_with_equals_are_kept_on_the_embedded_benchmark(embedded, tmp_path):
    """`--flag=value` and `--flag value` are the same flag: neither is replaced by the embedded defaults."""
    for argv in (["--learning_rate=2e-4", "--num_train_epochs=3"], ["--learning_rate", "2e-4", "--num_train_epochs", "3"]):
        _, config = parse_unlearn_args([*argv, "--output_dir", str(tmp_path / "x")], method="npo")
        assert config.learning_rate == 2e-4 and config.num_train_epochs == 3
    _, default = parse_unlearn_args(["--output_dir", str(tmp_path / "y")], method="npo")
    assert default.learning_rate == 5e-4  # the embedded default, where no flag is given


def test_two_runs_without_output_dir_get_two_folders(embedded, tmp_path, monkeypatch):
    """The default output folder is created when chosen, so a second run started before the first writes anything
    picks the next one (earlier, both picked `outputs/tofu_npo_forget10`)."""
    monkeypatch.chdir(tmp_path)
    first = parse_unlearn_args([], method="npo")[1].output_dir
    second = parse_unlearn_args([], method="npo")[1].output_dir
    assert first != second and Path(first).is_dir() and Path(second).is_dir()


def test_the_hub_token_never_reaches_the_disk(embedded, tmp_path):
    """`--hub_token` reaches neither `training_args.bin` (model folder, checkpoints) nor any other file of a run."""
    out = tmp_path / "run"
    status = cli_main(["unlearn", "--method", "grad_ascent", "--max_steps", "2", "--save_strategy", "steps",
                       "--save_steps", "1", "--eval_max_items", "12", "--eval_max_new_tokens", "4", "--no_relapse",
                       "--hub_token", TOKEN, "--output_dir", str(out), "--report_to", "none"])
    assert status == 0
    written = [path for path in out.rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in written)
    assert any("checkpoint-" in str(path) for path in written)
    leaking = [str(path) for path in written if TOKEN.encode() in path.read_bytes()]
    assert leaking == []


def test_an_unwritable_output_folder_is_refused_before_loading(bad, model_loads, tmp_path, monkeypatch, capsys):
    """A read-only mount (simulated: the probe file cannot be created, as for root a chmod would not stop it) is
    refused before any model loads, and nothing is created."""
    import errno

    import hf_unlearn.files

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(hf_unlearn.files.tempfile, "mkstemp", read_only)
    status, err = run_cli(_real(bad)[:-4] + ["--output_dir", str(tmp_path / "mounted" / "run"), "--report_to", "none"],
                          capsys)
    assert status == 1 and "cannot write in" in err and "Read-only file system" in err and model_loads == []
    assert not (tmp_path / "mounted").exists()

def test_resume_true_picks_the_last_complete_checkpoint(tmp_path):
    """A run killed while saving checkpoint-3 left it without trainer_state.json: `--resume_from_checkpoint true`
    takes checkpoint-2, not the broken one (transformers' own choice is the largest number)."""
    from hf_unlearn.pipeline import resolve_resume_checkpoint
    from hf_unlearn.trainers import GradAscentConfig

    for step, complete in ((1, True), (2, True), (3, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    config = GradAscentConfig(output_dir=str(tmp_path), resume_from_checkpoint="true", report_to="none")
    resolve_resume_checkpoint(config)
    assert config.resume_from_checkpoint == str(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text('{"global_st')  # cut mid-write
    config.resume_from_checkpoint = "last"
    resolve_resume_checkpoint(config)
    assert config.resume_from_checkpoint == str(tmp_path / "checkpoint-1")


def test_fresh_files_and_folders_are_claimed_exclusively(tmp_path):
    """`hf-unlearn generate` without `--output_file` and a run without `--output_dir` claim their path by creating
    it (O_EXCL / mkdir): a second claim never gets the first one's, and a named path that exists is refused."""
    from hf_unlearn.files import claim_fresh_path

    files = [claim_fresh_path(tmp_path / "outputs" / "cleangen", ".jsonl", directory=False) for _ in range(3)]
    assert [f.name for f in files] == ["cleangen.jsonl", "cleangen-2.jsonl", "cleangen-3.jsonl"]
    assert all(f.is_file() and f.stat().st_size == 0 for f in files)
    folders = [claim_fresh_path(tmp_path / "outputs" / "run") for _ in range(2)]
    assert [f.name for f in folders] == ["run", "run-2"] and all(f.is_dir() for f in folders)
    with pytest.raises(FileExistsError, match="cleangen.jsonl exists"):
        claim_fresh_path(files[0], directory=False, numbered=False)
