"""Unlearn a TOFU forget split with any method, evaluate before and after, and write the report.

    accelerate launch recipes/tofu_unlearn.py --method npo                 # the embedded benchmark
    accelerate launch recipes/tofu_unlearn.py --method flat \
        --model_name_or_path locuslab/tofu_ft_llama2-7b --dataset locuslab/TOFU --forget_split forget10

Every `UnlearnConfig`/`TrainingArguments` flag and the method's own flags (e.g. `--divergence js` for FLAT,
`--beta` for NPO) apply.
"""

import sys

from hf_unlearn.errors import run_command
from hf_unlearn.pipeline import unlearn_main


def main(argv: list[str] | None = None, method: str | None = None) -> dict:
    return unlearn_main(sys.argv[1:] if argv is None else argv, method=method)


if __name__ == "__main__":
    sys.exit(run_command(main))
