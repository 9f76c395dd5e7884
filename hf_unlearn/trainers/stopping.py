"""Train until forgotten: end unlearning once the forget set's answers have lost their probability.

A fixed budget of steps lands on different sides of a cliff for different models: on two builds of the embedded
benchmark, FLAT at the same learning rate left forget ROUGE-L at 0.70 on one and collapsed the model (utility 0.33)
on the other. Unlearning studies train "until forgotten" instead (Zhang et al. 2024, "Catastrophic Failure of LLM
Unlearning via Quantization", run each method until the forget set reaches a target); `stop_at_forget_prob` does
that with the forget data alone, so the stopping rule never looks at evaluation data.
"""

from __future__ import annotations

from transformers import TrainerCallback

from ..modeling import eval_mode


def mean_answer_probability(model, tokenizer, rows: list[dict], max_length: int) -> float:
    """Mean over rows of TOFU's answer probability exp(-mean token NLL of the answer given the question)
    (`forget_prob` on the forget set), with `evaluate_tofu`'s own `answer_probability`."""
    from ..eval.scoring import answer_probability, score_answers

    scores = score_answers(model, tokenizer, [r["question"] for r in rows], [r["answer"] for r in rows],
                           max_length=max_length)
    return sum(answer_probability(s["logprobs"]) for s in scores) / len(scores)


class StopWhenForgottenCallback(TrainerCallback):
    """Every `args.stop_check_steps` optimizer steps, the mean answer probability of the forget rows under the
    current model; training ends at the first check at or below `args.stop_at_forget_prob`. Every process computes
    it on all rows, so every process takes the same decision. `checks` keeps (step, probability) pairs."""

    def __init__(self, trainer, rows: list[dict]):
        self.trainer = trainer
        self.rows = rows
        self.checks: list[tuple[int, float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.stop_check_steps:
            return control
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        with eval_mode(model):
            probability = mean_answer_probability(model, self.trainer.processing_class, self.rows, args.max_length)
        self.checks.append((state.global_step, probability))
        if probability <= args.stop_at_forget_prob:
            control.should_training_stop = True
            self.trainer.stopped_when_forgotten = {"step": state.global_step, "forget_prob": probability}
        return control
