"""ULD on TOFU: `accelerate launch recipes/tofu_uld.py` trains the assistant on the embedded benchmark and evaluates
the logit-difference model; with `--model_name_or_path ... --dataset ... --forget_split ...` it runs real TOFU.
Same flags as tofu_unlearn.py plus ULDConfig's (`--assistant_layers 0.25 --assistant_weight 0.75
--candidate_threshold 0.01 --retain_weight 5 --assistant_lora_r 16`).
The saved `<output_dir>/model` loads with `hf_unlearn.uld_model.ULDModel.from_pretrained`."""

from tofu_unlearn import main

if __name__ == "__main__":
    main(method="uld")
