"""Generate with CleanGen: a possibly backdoored target guarded by a reference model.

    accelerate launch recipes/cleangen_generate.py                  # the backdoor benchmark's tiny models
    accelerate launch recipes/cleangen_generate.py --attack vpi --num_prompts 40
    accelerate launch recipes/cleangen_generate.py --target_name_or_path my-org/suspect-7b \
        --reference_name_or_path meta-llama/Llama-2-7b-chat-hf --prompts_file prompts.jsonl --max_new_tokens 128

Without model paths it uses the backdoor benchmark's models (`hf_unlearn.benchmarks.backdoor`, trained on
first use): the `--attack` backdoored target and its clean reference, with the attack's triggered test prompts.
`--prompts_file` takes JSON lines (a `question` or `instruction` field) or plain text (one prompt per line); prompts
are formatted as in training (the chat template when the tokenizer has one). Every `CleanGenConfig` field is a flag
(`--proposal_length`, `--suspicion_threshold`, `--do_sample`, ...). Each process decodes its share of the prompts;
the main process writes `--output_file` (JSON lines: prompt, answer, replaced tokens) and prints a summary.
"""

import sys

from hf_unlearn.decoding.generate import generate_main
from hf_unlearn.errors import run_command


if __name__ == "__main__":
    sys.exit(run_command(generate_main))
