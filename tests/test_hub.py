"""Model cards and Hub pushes on a real embedded-benchmark run, against a local stand-in for the Hub's HTTP API."""

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from huggingface_hub import ModelCard

from hf_unlearn.hub import PushError, push_unlearned, render_model_card


TOKEN = "hf_standinTOKEN0123456789"
CLI = [sys.executable, "-m", "hf_unlearn.cli"]


class StandInHub(BaseHTTPRequestHandler):
    """The four endpoints `HfApi.create_repo` + `upload_folder` call; every file is accepted inline ("regular")."""

    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        StandInHub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        host = self.headers["Host"]
        if self.path == "/api/repos/create":
            payload = json.loads(body)
            return self._reply({"url": f"http://{host}/{payload['organization']}/{payload['name']}"})
        if self.path == "/api/validate-yaml":
            return self._reply({"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if "/commit/" in self.path:
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            return self._reply({"commitUrl": f"http://{host}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
        self._reply({"error": "unknown endpoint"}, status=404)

    def _reply(self, payload: dict, status: int = 200):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def committed_files(repo: str) -> dict[str, bytes]:
    """Files of the last commit to `repo` the stand-in received, decoded."""
    commit = [r for r in StandInHub.requests if r["path"] == f"/api/models/{repo}/commit/main"][-1]
    lines = [json.loads(line) for line in commit["body"].decode().splitlines()]
    return {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines if line["key"] == "file"}


def cli_env(endpoint: str) -> dict:
    return {**os.environ, "HF_ENDPOINT": endpoint, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture(scope="module")
def run(embedded, hub, tmp_path_factory):
    """A real (short) GradDiff run through `hf-unlearn unlearn --push_to_hub`, against the stand-in Hub."""
    output_dir = tmp_path_factory.mktemp("runs") / "grad_diff"
    command = [*CLI, "unlearn", "--method", "grad_diff", "--output_dir", str(output_dir), "--max_steps", "3",
               "--per_device_train_batch_size", "4", "--learning_rate", "5e-4", "--eval_max_items", "8",
               "--report_to", "none", "--push_to_hub", "--hub_model_id", "me/embedded-forget10", "--hub_token", TOKEN]
    completed = subprocess.run(command, env=cli_env(hub), capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return output_dir, completed


def test_card_has_the_hub_metadata_and_the_run_numbers(run):
    output_dir, _ = run
    card = render_model_card(output_dir, repo_id="me/embedded-forget10", license="mit")
    parsed = ModelCard(str(card))  # what the Hub does with README.md
    assert parsed.data.library_name == "transformers"
    assert parsed.data.license == "mit"
    assert parsed.data.pipeline_tag == "text-generation"
    assert parsed.data.tags == ["unlearning", "hf_unlearn", "grad_diff"]
    assert parsed.data.base_model is None  # a local folder is not a Hub id: left out rather than invalid
    report = json.loads((output_dir / "report" / "evaluation.json").read_text())
    for label in ("retain", "finetuned", "grad_diff"):
        headline = report["headline"][label]
        assert f"{headline['forget_rougeL_recall']:.4f}" in parsed.text
        assert f"{headline['model_utility']:.4f}" in parsed.text
    assert "| metric | retain | finetuned | grad_diff |" in parsed.text
    assert "| `learning_rate` | `0.0005` |" in parsed.text and "| `retain_loss_type` |" in parsed.text
    assert "`forget10`" in parsed.text and "AutoModelForCausalLM.from_pretrained" in parsed.text
    assert "### Relapse under quantization" in parsed.text and "nf4" in parsed.text  # the recipe's relapse check
    card_with_hub_base = render_model_card(output_dir, base_model="locuslab/tofu_ft_llama2-7b")
    assert ModelCard(str(card_with_hub_base)).data.base_model == "locuslab/tofu_ft_llama2-7b"


def test_recipe_push_sends_model_card_and_report(run):
    output_dir, completed = run
    assert "Pushed to http://127.0.0.1" in completed.stdout
    create = [r for r in StandInHub.requests if r["path"] == "/api/repos/create"][0]
    assert json.loads(create["body"])["visibility"] == "private"
    assert create["auth"] == f"Bearer {TOKEN}"
    files = committed_files("me/embedded-forget10")
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "evaluation.json", "evaluation.png"} <= set(files)
    assert files["model.safetensors"] == (output_dir / "model" / "model.safetensors").read_bytes()
    assert ModelCard(files["README.md"].decode()).data.tags[0] == "unlearning"


def test_token_is_never_printed_saved_or_uploaded(run):
    """The run got the token as `--hub_token` (and HF_TOKEN): it is in no output, no file of the run (the model's
    and the checkpoints' training_args.bin included), and no uploaded file."""
    output_dir, completed = run
    assert TOKEN not in completed.stdout + completed.stderr
    written = [path for path in output_dir.rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in written)
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path
    uploaded = committed_files("me/embedded-forget10")
    assert "training_args.bin" in uploaded
    assert [name for name, content in uploaded.items() if TOKEN.encode() in content] == []


def test_failed_push_keeps_the_local_folder_and_says_how_to_retry(run, tmp_path):
    output_dir, _ = run
    before = {p.relative_to(output_dir): p.read_bytes() for p in output_dir.rglob("*") if p.is_file() and p.name != "README.md"}
    with pytest.raises(PushError, match="hf-unlearn push --run_dir") as error:
        push_unlearned(output_dir, "me/embedded-forget10", endpoint="http://127.0.0.1:9", token=TOKEN)
    assert TOKEN not in str(error.value)
    after = {p.relative_to(output_dir): p.read_bytes() for p in output_dir.rglob("*") if p.is_file() and p.name != "README.md"}
    assert after == before
    assert ModelCard.load(output_dir / "model" / "README.md").data.tags == ["unlearning", "hf_unlearn", "grad_diff"]
    # the CLI says the same and exits non-zero
    completed = subprocess.run([*CLI, "push", "--run_dir", str(output_dir), "--hub_model_id", "me/embedded-forget10"],
                               env=cli_env("http://127.0.0.1:9"), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1 and "The local folder is complete" in completed.stderr
    assert TOKEN not in completed.stdout + completed.stderr


def test_cli_card_and_push(run, hub):
    output_dir, _ = run
    completed = subprocess.run([*CLI, "card", "--run_dir", str(output_dir), "--license", "apache-2.0"],
                               env=cli_env(hub), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert ModelCard.load(output_dir / "model" / "README.md").data.license == "apache-2.0"
    completed = subprocess.run([*CLI, "push", "--run_dir", str(output_dir), "--hub_model_id", "me/public-copy", "--public"],
                               env=cli_env(hub), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    create = [r for r in StandInHub.requests if r["path"] == "/api/repos/create"][-1]
    assert json.loads(create["body"]) == {"name": "public-copy", "organization": "me", "visibility": "public"}
    assert "README.md" in committed_files("me/public-copy")


def test_bad_input_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="user-or-org/name"):
        push_unlearned(tmp_path, "not-a-repo-id")
    with pytest.raises(FileNotFoundError, match="run an unlearning recipe first"):
        render_model_card(tmp_path)
    completed = subprocess.run([*CLI, "unlearn", "--push_to_hub", "--output_dir", str(tmp_path / "x")],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode != 0 and "--hub_model_id" in completed.stderr


def test_model_kind_tells_full_models_adapters_and_uld_apart(tmp_path):
    from hf_unlearn.hub import model_kind

    with pytest.raises(FileNotFoundError, match="no safetensors weights"):
        model_kind(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert model_kind(tmp_path) == "model"
    (tmp_path / "adapter_config.json").write_text("{}")
    assert model_kind(tmp_path) == "adapter"
    (tmp_path / "uld_config.json").write_text("{}")
    assert model_kind(tmp_path) == "uld"


def test_an_installed_wheel_renders_the_card_of_a_saved_run(run, tmp_path):
    """The wheel carries the card template (and the evaluate modules): built from a copy of the source tree,
    installed into a fresh virtual environment outside the repository (its dependencies borrowed from this one's
    site-packages, so nothing is downloaded), `hf-unlearn card` renders the card of the run above."""
    import shutil
    import site
    import sysconfig
    import venv
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    for name in ("hf_unlearn", "model_cards"):
        shutil.copytree(repo / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("hf_unlearn-*.whl")

    env_dir = tmp_path / "fresh-venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(purelib),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    # the dependencies (torch, transformers, ...) come from this environment, appended after the wheel's own folder;
    # a plain path line does not run this environment's .pth files, so its editable hf_unlearn stays out of reach
    dependencies = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    (purelib / "borrowed_dependencies.pth").write_text("\n".join(dependencies) + "\n")

    output_dir, _ = run
    run_copy = tmp_path / "run"
    shutil.copytree(output_dir, run_copy, ignore=lambda folder, names: ["README.md"] if Path(folder).name == "model" else [])
    code = ("import hf_unlearn, sys; print(hf_unlearn.__file__); from hf_unlearn.cli import main; "
            "sys.exit(main(['card', '--run_dir', sys.argv[1], '--hub_model_id', 'me/from-wheel']))")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    card = subprocess.run([python, "-c", code, str(run_copy)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert card.returncode == 0, card.stderr[-3000:]
    assert Path(card.stdout.splitlines()[0]).resolve().is_relative_to(purelib.resolve())  # the wheel's, not the repo's
    text = (run_copy / "model" / "README.md").read_text()
    parsed = ModelCard(text)
    assert parsed.data.tags == ["unlearning", "hf_unlearn", "grad_diff"]
    assert "me/from-wheel" in text and "| `retain_loss_type` |" in text
    template_files = [p.name for p in (purelib / "hf_unlearn" / "templates").iterdir()]
    assert template_files == ["unlearned_model_card.md"] and not (purelib / "hf_unlearn" / "templates" /
                                                                   "unlearned_model_card.md").is_symlink()
