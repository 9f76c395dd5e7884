"""Each unlearning loss on hand-made tensors: values and the direction it pushes."""

import math

import pytest
import torch

from hf_unlearn.trainers import (
    dpo_loss,
    flat_loss,
    gradient_ascent_loss,
    gradient_difference_loss,
    npo_loss,
    rmu_loss,
    simnpo_loss,
)
from hf_unlearn.trainers.losses import (
    kl_to_reference,
    mean_token_log_prob,
    mean_token_prob,
    nll,
    sequence_log_prob,
)
from hf_unlearn.trainers.rmu import answer_mask, default_rmu_layer


def _logits_for(probs_per_position: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs_per_position).log().unsqueeze(0)


def test_log_prob_primitives_on_a_hand_made_sequence():
    # vocabulary of 2; positions 0..2 predict tokens at 1..3; the prompt is token 0, the answer tokens 1..3
    logits = _logits_for([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1], [0.5, 0.5]])
    labels = torch.tensor([[-100, 0, 1, 0]])
    expected = [math.log(0.5), math.log(0.8), math.log(0.9)]
    assert sequence_log_prob(logits, labels).item() == pytest.approx(sum(expected))
    assert mean_token_log_prob(logits, labels).item() == pytest.approx(sum(expected) / 3)
    assert mean_token_prob(logits, labels).item() == pytest.approx((0.5 + 0.8 + 0.9) / 3)
    assert nll(logits, labels).item() == pytest.approx(-sum(expected) / 3)
    assert kl_to_reference(logits, logits, labels).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_retain_term_is_open_unlearnings_over_every_position():
    # open-unlearning's compute_kl_divergence: kl_div(log p_theta, log p_ref, reduction="batchmean", log_target=True) on
    # the (batch * length, vocab) log-probs: KL(p_ref || p_theta) summed over all positions / (batch * length).
    logits = _logits_for([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1], [0.5, 0.5]])
    ref = _logits_for([[0.5, 0.5]] * 4)
    labels = torch.tensor([[-100, 0, 1, 0]])
    # by hand: positions 1 and 2 differ from the reference, positions 0 and 3 do not
    kl_1 = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)  # 0.2231435513
    kl_2 = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # 0.5108256238
    assert kl_to_reference(logits, ref, labels).item() == pytest.approx(0.18349229377, rel=1e-6)  # (kl_1 + kl_2) / 4
    assert kl_to_reference(logits, ref, labels).item() == pytest.approx((kl_1 + kl_2) / 4, rel=1e-6)
    # the old definition, kept as kl_positions="answer": the 3 positions that predict answer tokens
    assert kl_to_reference(logits, ref, labels, positions="answer").item() == pytest.approx((kl_1 + kl_2) / 3, rel=1e-6)
    # (the direction is KL(ref || theta): KL(theta || ref) over all positions would be 0.1402022410)

    # a padded batch: padding positions count too, and the divisor is batch * length (torch's batchmean)
    torch.manual_seed(0)
    logits, ref = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 2, 3, -100, -100]])
    reference = torch.nn.functional.kl_div(
        torch.log_softmax(logits, -1).view(-1, 7), torch.log_softmax(ref, -1).view(-1, 7),
        reduction="batchmean", log_target=True,
    )
    assert kl_to_reference(logits, ref, labels).item() == pytest.approx(reference.item(), rel=1e-5)
    with pytest.raises(ValueError, match="positions"):
        kl_to_reference(logits, ref, labels, positions="prompt")


def test_gradient_ascent_and_difference():
    assert gradient_ascent_loss(torch.tensor(2.0)).item() == -2.0
    assert gradient_difference_loss(torch.tensor(2.0), torch.tensor(0.5), gamma=1.0, alpha=3.0).item() == -0.5


def test_npo_matches_the_reference_value_on_hand_worked_log_probs():
    # Reference (open-unlearning compute_dpo_loss with win_inputs=None; NPO paper eq. 3):
    #   L = -(2/beta) * mean_i logsigmoid(-beta * (log pi(y_i|x_i) - log pi_ref(y_i|x_i)))
    # log pi = [-2, -4], log pi_ref = [-3, -3], beta = 0.1: the log ratios are +1 and -1, so
    #   L = 20 * (log(1 + e^0.1) + log(1 + e^-0.1)) / 2 = 20 * log(1 + e^0.1) - 1 = 13.88793320
    log_p, ref = torch.tensor([-2.0, -4.0]), torch.tensor([-3.0, -3.0])
    assert npo_loss(log_p, ref, beta=0.1).item() == pytest.approx(13.8879332015, rel=1e-7)
    # at the reference, NPO is (2/beta) log 2 = 13.8629436112; lowering log pi lowers the loss
    assert npo_loss(ref, ref, beta=0.1).item() == pytest.approx(13.8629436112, rel=1e-7)
    assert npo_loss(ref - 1, ref, 0.1) < npo_loss(ref, ref, 0.1) < npo_loss(ref + 1, ref, 0.1)


def test_npo_uses_whole_answer_log_probs():
    # One answer of 3 tokens with probabilities 0.5, 0.8, 0.9 under pi_theta and 0.5 each under pi_ref.
    # log pi(y|x) is their *sum* (compute_batch_nll sums the token NLLs): log(0.36) = -1.0216512475,
    # log pi_ref(y|x) = 3 log 0.5 = -2.0794415417; L = -(2/0.1) logsigmoid(-0.1 * 1.0577902942) = 14.9486938812
    logits = _logits_for([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1], [0.5, 0.5]])
    ref_logits = _logits_for([[0.5, 0.5]] * 4)
    labels = torch.tensor([[-100, 0, 1, 0]])
    loss = npo_loss(sequence_log_prob(logits, labels), sequence_log_prob(ref_logits, labels), beta=0.1)
    assert loss.item() == pytest.approx(14.9486938812, rel=1e-6)


def test_simnpo_matches_the_reference_margin():
    # Reference (open-unlearning simnpo.py; the authors' TOFU/dataloader.py "simnpo"):
    #   L = -(2/beta) * mean_i logsigmoid(beta * (NLL_i / |y_i| - delta))
    # mean log-probs [-0.5, -1.5] (mean NLL 0.5, 1.5), beta 4.5, delta 0.1:
    #   beta * (NLL - delta) = 1.8 and 6.3; L = (2/4.5) * (log(1 + e^-1.8) + log(1 + e^-6.3)) / 2 = 0.0344027181
    # (the old margin outside beta, logsigmoid(-beta * mean log p - 0.1), gave 0.0247728419)
    mean_log_p = torch.tensor([-0.5, -1.5])
    assert simnpo_loss(mean_log_p, beta=4.5, delta=0.1).item() == pytest.approx(0.0344027181, rel=1e-7)
    # delta = 0: (2/4.5) * (log(1 + e^-2.25) + log(1 + e^-6.75)) / 2 = 0.0225281675
    assert simnpo_loss(mean_log_p, beta=4.5).item() == pytest.approx(0.0225281675, rel=1e-7)
    assert simnpo_loss(torch.tensor([-2.0]), 4.5) < simnpo_loss(torch.tensor([-0.1]), 4.5)


def test_dpo_prefers_the_template_over_the_forget_answer():
    zero = torch.zeros(1)
    assert dpo_loss(zero, zero, zero, zero, beta=0.1).item() == pytest.approx(2 / 0.1 * math.log(2))
    better = dpo_loss(torch.tensor([1.0]), torch.tensor([-1.0]), zero, zero, beta=0.1)
    worse = dpo_loss(torch.tensor([-1.0]), torch.tensor([1.0]), zero, zero, beta=0.1)
    assert better < dpo_loss(zero, zero, zero, zero, 0.1) < worse


@pytest.mark.parametrize("divergence", ["kl", "js", "pearson", "tv"])
def test_flat_falls_as_template_rises_and_forget_falls(divergence):
    p = torch.linspace(0.05, 0.95, 7)
    for fixed in (0.2, 0.8):
        rising_template = [flat_loss(torch.tensor([v]), torch.tensor([fixed]), divergence).item() for v in p]
        falling_forget = [flat_loss(torch.tensor([fixed]), torch.tensor([v]), divergence).item() for v in p.flip(0)]
        assert all(a > b for a, b in zip(rising_template, rising_template[1:]))
        assert all(a > b for a, b in zip(falling_forget, falling_forget[1:]))


def test_flat_values_and_per_sample_averaging():
    pe, pf = torch.tensor([0.3, 0.6]), torch.tensor([0.9, 0.2])
    kl = (-(0.3 - math.exp(0.9 - 1)) - (0.6 - math.exp(0.2 - 1))) / 2
    assert flat_loss(pe, pf, "kl").item() == pytest.approx(kl, rel=1e-6)
    pearson = -(0.3 - (0.81 / 4 + 0.9))
    assert flat_loss(pe[:1], pf[:1], "pearson").item() == pytest.approx(pearson, rel=1e-6)
    g = lambda v: math.log(2) - math.log(1 + math.exp(-v))  # noqa: E731
    js = -(g(0.3) - (-math.log(2 - math.exp(g(0.9)))))
    assert flat_loss(pe[:1], pf[:1], "js").item() == pytest.approx(js, rel=1e-6)
    tv = -(math.tanh(0.3) / 2 - math.tanh(0.9) / 2)
    assert flat_loss(pe[:1], pf[:1], "tv").item() == pytest.approx(tv, rel=1e-6)
    with pytest.raises(ValueError, match="Unknown divergence"):
        flat_loss(pe, pf, "hellinger")


def test_rmu_default_layer_is_the_references_layer_7_of_32():
    # WMDP rmu/unlearn.py: layer_id 7, layer_ids 5,6,7 on 32-layer models; the old default max(1, n // 4) gave 8.
    assert default_rmu_layer(32) == 7
    assert default_rmu_layer(30) == 7  # SmolLM2-135M: 7 * 30 / 32 = 6.56
    assert default_rmu_layer(16) == 4
    assert default_rmu_layer(4) == 1  # the embedded benchmark's model
    assert default_rmu_layer(1) == 0


def test_rmu_loss_averages_answer_tokens_per_example_then_over_the_batch():
    # open-unlearning compute_activation_loss: mask = labels != -100 (the answer tokens themselves), squared error
    # averaged over d, then over each example's answer tokens, then over the batch.
    labels = torch.tensor([[-100, 5, 6, 7], [-100, -100, 5, -100]])
    assert answer_mask(labels).tolist() == [[False, True, True, True], [False, False, True, False]]
    ref = torch.zeros(2, 4, 2)
    retain = torch.zeros(2, 4, 2)
    retain[0, 1:] = 1.0  # ||.||^2 / d = 1 at example 0's three answer tokens
    retain[1, 2] = 3.0  # 9 at example 1's one answer token
    forget = torch.zeros(2, 4, 2)
    control = torch.tensor([3.0, 4.0])  # ||c||^2 / d = 12.5 wherever the forget state is 0
    forget[0, 3] = control  # example 0: 12.5, 12.5, 0 -> 25 / 3
    mask = answer_mask(labels)
    total, forget_term, retain_term = rmu_loss(forget, mask, control, retain, ref, mask, alpha=2.0)
    assert retain_term.item() == pytest.approx((1 + 9) / 2)  # pooled over the 4 tokens it would be 3
    assert forget_term.item() == pytest.approx((25 / 3 + 12.5) / 2)  # 10.4166667
    assert total.item() == pytest.approx((25 / 3 + 12.5) / 2 + 2.0 * 5.0)
