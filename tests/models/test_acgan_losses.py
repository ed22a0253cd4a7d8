"""AcGAN losses (docs/models/acgan.md section 6; section 8 item 12): hand-made masks, CE forms, the gradient penalty on
a linear critic, and one official iteration (D1, D2, G) of the tiny config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyagingrt.training.losses.acgan import (
    AcGANLossWeights,
    classification_loss,
    cross_entropy_logits,
    cross_entropy_official,
    d_loss_step1,
    g_loss,
    gradient_penalty,
    mask_l2,
    mask_mean,
    tv1,
    tv2,
)
from pyagingrt.training.models.acgan import AcGANConfig, Discriminator, Generator, init_weights, one_hot_groups

TINY = AcGANConfig.tiny()
S = TINY.image_size


def hand_masks() -> torch.Tensor:
    """Two 2x2 masks: [[0, 1], [1, 1]] and all zeros. Tensor[2, 1, 2, 2]."""
    return torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])


def test_tv1_and_tv2_on_hand_made_masks():
    # first mask: horizontal |1-0| + |1-1| = 1, vertical |1-0| + |1-1| = 1 -> 2; second 0; per-image sum / B = 1
    assert tv1(hand_masks()).item() == 1.0
    assert tv2(hand_masks()).item() == 1.0  # the differences are 0 or 1, so squares change nothing
    ramp = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    assert tv1(ramp).item() == 1.0  # 0.5 + 0.5
    assert tv2(ramp).item() == 0.5  # 0.25 + 0.25
    assert tv1(torch.full((3, 1, 4, 4), 0.7)).item() == 0.0


def test_mask_terms_on_hand_made_masks():
    assert mask_mean(hand_masks()).item() == 3 / 8  # three ones over B * H * W = 8
    assert mask_l2(hand_masks()).item() == pytest.approx(math.sqrt(3) / 2, rel=1e-6)  # (sqrt(3) + 0) / 2


def test_cross_entropy_forms_agree_with_torch():
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(6, 5, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 2])
    target = one_hot_groups(labels, 5).double()
    want = F.cross_entropy(logits, labels)  # mean over the batch of -log softmax at the label
    torch.testing.assert_close(cross_entropy_logits(logits, target), want, atol=1e-12, rtol=0)
    # the official form adds 1e-10 inside the log: |delta| <= 1e-10 / p at the label, and p > 1e-5 here
    official = classification_loss(logits, target, ce="official")
    assert F.softmax(logits, 1).gather(1, labels[:, None]).min() > 1e-5
    torch.testing.assert_close(official, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(cross_entropy_official(F.softmax(logits, 1), target), official)


def test_official_cross_entropy_saturates_where_logits_form_does_not():
    logits = torch.tensor([[0.0, -60.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    assert cross_entropy_logits(logits, target).item() == pytest.approx(60.0, rel=1e-9)
    assert classification_loss(logits, target, "official").item() == pytest.approx(-math.log(1e-10), rel=1e-6)
    with pytest.raises(ValueError, match="ce must be"):
        classification_loss(logits, target, "hinge")


def test_gradient_penalty_on_a_linear_critic():
    gen = torch.Generator().manual_seed(1)
    w = (0.05 * torch.randn(3 * 4 * 4, generator=gen, dtype=torch.float64)).requires_grad_(True)

    def critic(x):  # D(x) = <w, x>: the gradient is w everywhere, so the penalty is 10 (||w|| - 1)^2
        return (x.flatten(1) * w).sum(1), torch.zeros(x.shape[0], 5, dtype=x.dtype)

    real = torch.randn(4, 3, 4, 4, generator=gen, dtype=torch.float64)
    fake = torch.randn(4, 3, 4, 4, generator=gen, dtype=torch.float64)
    loss = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(2))
    norm = w.detach().norm()
    torch.testing.assert_close(loss.detach(), 10 * (norm - 1) ** 2, atol=1e-12, rtol=1e-12)
    loss.backward()  # double backward reaches the critic's weights: d/dw = 20 (||w|| - 1) w / ||w||
    torch.testing.assert_close(w.grad, 20 * (norm - 1) * w.detach() / norm, atol=1e-12, rtol=1e-12)


@pytest.fixture
def nets():
    g = init_weights(Generator(TINY), generator=torch.Generator().manual_seed(3))
    d = init_weights(Discriminator(TINY), generator=torch.Generator().manual_seed(4))
    return g, d


def test_penalty_alpha_comes_from_the_generator(nets):
    _, d = nets
    real, fake = torch.randn(2, 3, S, S), torch.randn(2, 3, S, S)
    drawn = gradient_penalty(d, real, fake, generator=torch.Generator().manual_seed(5))
    alpha = torch.rand(2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(drawn, gradient_penalty(d, real, fake, alpha=alpha))
    assert not torch.equal(drawn, gradient_penalty(d, real, fake, alpha=1 - alpha))


def test_d1_is_the_official_combination_and_does_not_reach_g(nets):
    g, d = nets
    x = torch.rand(2, 3, S, S) * 2 - 1
    y_s, y_t = one_hot_groups(torch.tensor([0, 3]), 5), one_hot_groups(torch.tensor([2, 4]), 5)
    color, attention = g(x, y_t)
    x_t = attention * x + (1 - attention) * color
    total, parts = d_loss_step1(d, x, y_s, x_t)
    score_real, logits_real = d(x)
    score_fake, _ = d(x_t)
    want_prob = 10 * (-score_real.mean() + score_fake.mean())
    want_cond = 100 * F.cross_entropy(logits_real, torch.tensor([0, 3]))
    torch.testing.assert_close(parts["d_prob"], want_prob.detach(), atol=1e-6, rtol=1e-6)  # fp32, O(1) values
    torch.testing.assert_close(parts["d_cond"], want_cond.detach(), atol=1e-4, rtol=1e-6)  # scale 100 * O(1)
    total.backward()
    assert all(p.grad is None for p in g.parameters())  # x_t is detached in D1
    assert all(p.grad is not None for p in d.parameters())


def test_one_official_iteration_batch_two_and_one(nets):
    g, d = nets
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.5, 0.999))
    for batch in (2, 1):  # D with B = 1 works (official issue #4)
        x = torch.rand(batch, 3, S, S) * 2 - 1
        y_s = one_hot_groups(torch.tensor([1, 2][:batch]), 5)
        y_t = one_hot_groups(torch.tensor([4, 0][:batch]), 5)
        color, attention = g(x, y_t)
        x_t = attention * x + (1 - attention) * color
        loss_d1, _ = d_loss_step1(d, x, y_s, x_t)
        opt_d.zero_grad()
        loss_d1.backward()
        opt_d.step()
        loss_d2 = gradient_penalty(d, x, x_t, generator=torch.Generator().manual_seed(6))
        opt_d.zero_grad()
        loss_d2.backward()
        assert d.prob_layer.weight.grad.abs().sum() > 0  # the penalty trains the critic head (double backward)
        assert all(torch.isfinite(p.grad).all() for p in d.parameters() if p.grad is not None)
        opt_d.step()
        color, attention = g(x, y_t)  # G is run afresh in the G step
        x_t = attention * x + (1 - attention) * color
        loss_g, parts = g_loss(d, x_t, y_t, attention, AcGANLossWeights())
        torch.testing.assert_close(loss_g.detach(), sum(parts.values()), atol=1e-5, rtol=1e-6)
        assert parts["g_mask"] == pytest.approx(2 * attention.mean().item(), rel=1e-6)
        opt_g.zero_grad()
        loss_g.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in g.parameters())
        opt_g.step()


def test_g_loss_paper_forms_and_bad_form(nets):
    g, d = nets
    x = torch.rand(1, 3, S, S) * 2 - 1
    y_t = one_hot_groups(torch.tensor([3]), 5)
    color, attention = g(x, y_t)
    x_t = attention * x + (1 - attention) * color
    _, parts = g_loss(d, x_t, y_t, attention, mask_form="l2", smooth_form="tv2")
    assert parts["g_mask"] == pytest.approx(2 * attention.flatten().norm().item(), rel=1e-5)
    with pytest.raises(ValueError, match="mask_form"):
        g_loss(d, x_t, y_t, attention, mask_form="l1")
