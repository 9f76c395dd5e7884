"""The cached-build primitives every cached build uses (hf_unlearn.cache)."""

import copy

import pytest
import torch

from hf_unlearn.cache import build_once, cache_root, content_key, staging_folder, weights_fingerprint


def test_a_failed_build_leaves_nothing_and_a_finished_one_is_not_run_again(tmp_path):
    target = tmp_path / "kind" / "key"
    calls = []

    def failing():
        calls.append("failing")
        with staging_folder(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        build_once(target, "report.json", failing)
    assert not target.exists() and list(target.parent.iterdir()) == [target.parent / "key.lock"]  # no staging left

    def finishing():
        calls.append("finishing")
        with staging_folder(target) as tmp:
            (tmp / "report.json").write_text("{}")

    assert build_once(target, "report.json", finishing) == target
    assert build_once(target, "report.json", failing) == target  # built: not run again
    assert calls == ["failing", "finishing"] and (target / "report.json").read_text() == "{}"


def test_keys_and_fingerprints_follow_the_content(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_UNLEARN_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    data = tmp_path / "rows.json"
    data.write_text("[1]")
    key = content_key({"a": 1, "b": [2]}, [data])
    assert key == content_key({"b": [2], "a": 1}, [data]) and len(key) == 16  # field order does not matter
    assert key != content_key({"a": 1, "b": [3]}, [data])
    data.write_text("[2]")
    assert key != content_key({"a": 1, "b": [2]}, [data])  # the file's bytes do

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    clone = copy.deepcopy(model)
    assert weights_fingerprint(model) == weights_fingerprint(clone)
    with torch.no_grad():
        clone[0].weight[0, 0] += 1e-6
    assert weights_fingerprint(model) != weights_fingerprint(clone)
    assert weights_fingerprint(model) != weights_fingerprint(model.to(torch.float64))  # dtype counts
