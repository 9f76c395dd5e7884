"""Command-line parsing: a flag the user gives wins over the embedded defaults in either spelling argparse accepts."""

import pytest

from hf_unlearn.pipeline import EMBEDDED_DEFAULTS, given_flags, parse_unlearn_args


def test_given_flags_reads_both_spellings():
    assert given_flags(["--learning_rate=3e-4", "--seed", "1", "-h", "value", "--"]) == {"learning_rate", "seed"}


@pytest.mark.parametrize("spelling", [["--learning_rate", "3e-4"], ["--learning_rate=3e-4"]])
def test_a_given_flag_overrides_the_embedded_default(spelling, tmp_path):
    assert EMBEDDED_DEFAULTS["flat"]["learning_rate"] != 3e-4
    _, config = parse_unlearn_args(["--method", "flat", *spelling, f"--output_dir={tmp_path / 'run'}"])
    assert config.learning_rate == 3e-4  # `--learning_rate=3e-4` was overwritten by 1e-4 before
    assert config.num_train_epochs == EMBEDDED_DEFAULTS["flat"]["num_train_epochs"]  # the others still apply
    assert config.output_dir == str(tmp_path / "run")
