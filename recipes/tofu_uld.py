"""ULD on TOFU: `accelerate launch recipes/tofu_uld.py` trains the assistant on the embedded benchmark and evaluates
the logit-difference model; with `--model_name_or_path ... --dataset ... --forget_split ...` it runs real TOFU.
Same flags as tofu_unlearn.py plus ULDConfig's (`--assistant_layers 0.25 --assistant_weight 0.8
--candidate_threshold 0.01 --retain_weight 5 --assistant_lora_r 16`).

Training data: the forget rows (remembered) and the retain rows (pushed to uniform), no augmentation. The authors
also train on separately generated paraphrases and wrong answers of each forget row (`data/aug_data/tofu` in
github.com/UCSB-NLP-Chang/ULD); add such columns to the forget data and name them with
`--positive_augmentation_column` / `--negative_augmentation_column`. TOFU's own `paraphrased_answer` and
`perturbed_answer` are refused: the truth ratio scores them.
The saved `<output_dir>/model` loads with `hf_unlearn.decoding.uld.ULDModel.from_pretrained`."""

import sys

from tofu_unlearn import main

from hf_unlearn.errors import run_command


if __name__ == "__main__":
    sys.exit(run_command(lambda argv: main(argv, method="uld")))
