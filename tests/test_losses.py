"""Each loss against values computed by hand on tiny tensors (docs/methods/inversion.md)."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from rdfcil import losses as L
from rdfcil.inversion import (bn_kl, class_balance_loss, content_loss, published_blur_kernel,
                              smoothness_loss)


def test_rrl_weights_match_the_paper_formulas():
    alpha, beta = L.rrl_weights(50, 10)
    assert alpha == pytest.approx(math.log2(6))
    assert beta == pytest.approx(math.sqrt(5))
    alpha, beta = L.rrl_weights(2, 2)
    assert alpha == pytest.approx(1.0) and beta == pytest.approx(1.0)


def test_local_ce_uses_only_the_new_class_slice():
    logits = torch.tensor([[5.0, -3.0, 1.0, 2.0], [0.0, 9.0, 0.5, 0.0]])
    targets = torch.tensor([3, 2])  # new classes are 2 and 3
    by_hand = -(torch.tensor([2.0 - math.log(math.exp(1) + math.exp(2)),
                              0.5 - math.log(math.exp(0.5) + math.exp(0.0))])).mean()
    assert L.local_ce(logits, targets, n_old=2).item() == pytest.approx(by_hand.item(), abs=1e-6)


def test_global_ce_with_class_weights_is_the_weighted_mean():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1])
    ce = [-(2 - math.log(math.exp(2) + 1)), -(1 - math.log(1 + math.e))]
    w = torch.tensor([1.0, 3.0])
    expected = (1 * ce[0] + 3 * ce[1]) / 4
    assert L.global_ce(logits, targets, w).item() == pytest.approx(expected, abs=1e-6)


def test_hkd_is_mean_absolute_difference():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[0.0, 2.5], [3.0, 1.0]])
    assert L.hkd(a, b).item() == pytest.approx((1 + 0.5 + 0 + 3) / 4)


def test_kd_is_the_abd_soft_cross_entropy_without_t_squared():
    z = torch.tensor([[1.0, 2.0, 0.5]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    log_p = torch.log_softmax(z / 2, 1)
    expected = -(1 / 3 * log_p).sum()  # q uniform: -sum_c q_c log p_c, no T^2 (ABD's loss_fn_kd)
    assert L.kd(z, old, 2.0).item() == pytest.approx(expected.item(), abs=1e-6)
    assert L.kd(z, old, 2.0, t2=True).item() == pytest.approx(4 * expected.item(), abs=1e-6)
    # equal logits: the targets' entropy (KL is zero, the soft CE is H(q))
    q = torch.softmax(z / 2, 1)
    assert L.kd(z, z, 2.0).item() == pytest.approx(-(q * q.log()).sum().item(), abs=1e-6)


def test_kd_seen_zeroes_the_new_class_targets_by_hand():
    # two old classes, three seen; old logits (0, ln 3) at T=1 -> q = (1/4, 3/4, 0)
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)], [1.0, 1.0, 1.0]])
    old = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    # row 1: p = (1/4, 1/4, 1/2): -(1/4 ln 1/4 + 3/4 ln 1/4) = ln 4; row 2: p = 1/3 each: ln 3
    expected = (math.log(4.0) + math.log(3.0)) / 2
    assert L.kd_seen(logits, old, 1.0).item() == pytest.approx(expected, abs=1e-6)
    assert L.kd_seen(logits, old, 1.0, t2=True).item() == pytest.approx(expected, abs=1e-6)  # T^2 = 1
    assert L.kd_seen(2 * logits, 2 * old, 2.0, t2=True).item() == pytest.approx(4 * expected, abs=1e-5)


def test_abd_sample_weights_and_weighted_ce_by_hand():
    targets = torch.tensor([0, 3, 1, 4])  # n_old = 3, n_seen = 5: old labels 0, 1; new 3, 4
    w = L.abd_sample_weights(targets, 3, 5)
    assert w.tolist() == pytest.approx([0.6, 0.4, 0.6, 0.4])
    logits = torch.zeros(4, 5)  # CE = ln 5 for every sample
    expected = math.log(5.0) * (0.6 + 0.4 + 0.6 + 0.4) / 4  # a batch mean, not divided by sum(w)
    assert L.sample_weighted_ce(logits, targets, w).item() == pytest.approx(expected, abs=1e-6)
    logits = torch.tensor([[math.log(3.0), 0.0]])  # p(0) = 3/4
    assert L.sample_weighted_ce(logits, torch.tensor([0]), torch.tensor([0.5])).item() == \
        pytest.approx(-0.5 * math.log(0.75), abs=1e-6)


def test_angle_relations_of_three_known_points():
    e = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    psi = L.angle_relations(e)
    assert psi.shape == (3, 3, 3)
    assert psi[0, 1, 2].item() == pytest.approx(0.0, abs=1e-6)  # right angle at the origin
    assert psi[1, 0, 2].item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)  # 45 degrees
    assert psi[2, 0, 1].item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert psi[0, 1, 1].item() == pytest.approx(1.0, abs=1e-6)
    assert psi[0, 0, 1].item() == pytest.approx(0.0, abs=1e-6)  # u_ii = 0


def test_rkd_angle_is_invariant_to_similarity_and_positive_otherwise():
    torch.manual_seed(0)
    e = torch.randn(6, 4)
    q, _ = torch.linalg.qr(torch.randn(4, 4))
    moved = 3.0 * e @ q + 1.5
    assert L.rkd_angle(e, moved).item() == pytest.approx(0.0, abs=1e-5)
    assert L.rkd_angle(e, torch.randn(6, 4)).item() > 0.05


def test_rkd_distance_invariant_to_scale():
    torch.manual_seed(1)
    e = torch.randn(5, 3)
    assert L.rkd_distance(e, 7 * e).item() == pytest.approx(0.0, abs=1e-5)
    d = L.distance_relations(torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]))
    assert d[1, 2].item() == pytest.approx(5 / 4, abs=1e-6)  # distances 3, 4, 5: mean 4


def test_projections_double_the_feature_dimension():
    p = L.RelationProjections(8)
    a, b = p(torch.randn(4, 8), torch.randn(4, 8))
    assert a.shape == (4, 16) and b.shape == (4, 16)
    assert p.current.weight.data_ptr() != p.old.weight.data_ptr()


def test_class_weights_normalised_to_smallest_one():
    w = L.class_weights(torch.tensor([10.0, 5.0, 0.0]))
    assert w.tolist() == pytest.approx([1.0, 2.0, 10.0])


def test_feature_distillation_by_hand():
    f = torch.tensor([[1.0, 0.0]])
    f_old = torch.tensor([[0.0, 0.0]])
    w = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # W (f - f_old) = (2, 0): squared norm 4, divided by n_old = 2
    assert L.feature_distillation(f, f_old, w).item() == pytest.approx(2.0)


def test_bn_kl_matches_the_closed_form_of_two_gaussians():
    mu, var = torch.tensor([1.0, -0.5]), torch.tensor([4.0, 0.25])
    rmu, rvar = torch.tensor([0.0, 0.5]), torch.tensor([1.0, 1.0])
    closed = kl_divergence(Normal(rmu, rvar.sqrt()), Normal(mu, var.sqrt())).mean()
    assert bn_kl(mu, var, rmu, rvar).item() == pytest.approx(closed.item(), abs=1e-6)
    assert bn_kl(mu, var, rmu, rvar).item() == pytest.approx(
        0.5 * ((math.log(4) + 2 / 4 - 1) + (math.log(0.25) + 2 / 0.25 - 1)) / 2, abs=1e-6)
    assert bn_kl(rmu, rvar, rmu, rvar).item() == pytest.approx(0.0, abs=1e-7)


def test_class_balance_zero_for_uniform_one_for_one_class():
    uniform = torch.eye(4).repeat(8, 1) * 50  # each class predicted equally often, confidently
    assert class_balance_loss(uniform).item() == pytest.approx(0.0, abs=1e-5)
    one_class = torch.zeros(16, 4)
    one_class[:, 2] = 50
    assert class_balance_loss(one_class).item() == pytest.approx(1.0, abs=1e-5)


def test_content_loss_near_log_k_at_tau_1000():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    assert content_loss(logits, 1000.0).item() == pytest.approx(math.log(4), abs=3e-3)
    assert content_loss(logits, 1.0).item() < math.log(4)


def test_published_blur_kernel_is_a_gaussian_of_std_sqrt2():
    k = published_blur_kernel(3)
    assert k.shape == (3, 1, 5, 5)
    assert k[0].sum().item() == pytest.approx(1.0, abs=1e-6)
    axis = k[0, 0, 2] / k[0, 0, 2, 2]
    assert axis[3].item() == pytest.approx(math.exp(-1 / 4), abs=1e-6)  # exp(-x^2 / (2 * 2))
    assert axis[4].item() == pytest.approx(math.exp(-1), abs=1e-6)


def test_smoothness_zero_for_constant_and_positive_for_noise():
    assert smoothness_loss(torch.full((2, 3, 8, 8), 0.7)).item() == pytest.approx(0.0, abs=1e-10)
    torch.manual_seed(0)
    assert smoothness_loss(torch.randn(2, 3, 8, 8)).item() > 0.5


def test_masked_losses_on_padded_logits_equal_the_sliced_ones():
    """The task-invariant forms: over a padded head's logits (unseen classes 0) with masks of the
    seen, old and new classes they give the sliced losses, gradients included."""
    import torch
    from rdfcil import inversion as I
    from rdfcil import losses as L
    torch.manual_seed(0)
    n_old, seen, capacity = 4, 7, 10
    z = torch.zeros(6, capacity)
    z[:, :seen] = torch.randn(6, seen)
    z.requires_grad_()
    z_old = torch.zeros(6, capacity)
    z_old[:, :n_old] = torch.randn(6, n_old)
    y = torch.tensor([4, 5, 6, 4, 5, 6])
    classes = torch.arange(capacity)
    seen_mask, old_mask = classes < seen, classes < n_old
    pairs = [(L.masked_ce(z, y, seen_mask & ~old_mask), L.local_ce(z[:, :seen], y, n_old)),
             (L.masked_ce(z, y, seen_mask), L.global_ce(z[:, :seen], y)),
             (L.masked_ce(z, y, seen_mask, torch.arange(1.0, capacity + 1)),
              L.global_ce(z[:, :seen], y, torch.arange(1.0, seen + 1))),
             (L.masked_hkd(z, z_old, old_mask), L.hkd(z[:, :n_old], z_old[:, :n_old])),
             (I.content_loss(z, 1000.0, seen_mask), I.content_loss(z[:, :seen], 1000.0)),
             (I.class_balance_loss(z, seen_mask), I.class_balance_loss(z[:, :seen]))]
    for masked, sliced in pairs:
        (g_masked,), (g_sliced,) = torch.autograd.grad(masked, z), torch.autograd.grad(sliced, z)
        assert torch.allclose(masked, sliced, atol=1e-6) and torch.allclose(g_masked, g_sliced, atol=1e-7)
        assert torch.all(g_masked[:, seen:] == 0)
    one = torch.zeros(capacity, dtype=torch.bool)
    one[0] = True
    assert I.class_balance_loss(z, one).item() == 0.0  # fewer than two classes


def test_rkd_distance_mean_over_distinct_pairs():
    import torch
    from rdfcil import losses as L
    e = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    d = L.distance_relations(e)  # pairwise 5, 10, 5: mean over the 6 ordered distinct pairs 20/3
    assert torch.allclose(d, torch.tensor([[0.0, 5.0, 10.0], [5.0, 0.0, 5.0], [10.0, 5.0, 0.0]]) / (20 / 3))
