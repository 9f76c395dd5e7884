"""FLAT on TOFU: `accelerate launch recipes/tofu_flat.py` runs the embedded benchmark end to end; with
`--model_name_or_path ... --dataset ... --forget_split ...` it runs real TOFU. Same flags as tofu_unlearn.py."""

import sys

from tofu_unlearn import main

from hf_unlearn.errors import run_command


if __name__ == "__main__":
    sys.exit(run_command(lambda argv: main(argv, method="flat")))
