"""DCD layers: feature-wise vs synthesis equivalence, the released form, Eq. 3.7–3.9 against built kernels, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcd.layers import (
    CondConv2d,
    DCDClassifier,
    DepthwiseDCD,
    DynamicConv2d,
    DynamicConvDecomposition,
    JointFusionDCD,
    dyconv_temperature,
    set_temperature,
)
from dyncore.export import relative_error


def _warm_bn(layer: nn.Module, x: torch.Tensor) -> None:
    """A few training passes so the BN running statistics are not the identity, then eval."""
    layer.train()
    with torch.no_grad():
        for _ in range(3):
            layer(x)
    layer.eval()


def _randomise_branch(layer: nn.Module) -> None:
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.3)


@pytest.mark.quick
@pytest.mark.parametrize("kernel, stride, blocks", [(1, 1, 1), (3, 2, 1), (1, 1, 4), (3, 1, 2)])
def test_stabilised_featurewise_equals_synthesis_in_eval(kernel: int, stride: int, blocks: int) -> None:
    torch.manual_seed(0)
    layer = DynamicConvDecomposition(16, 24, kernel, stride=stride, latent=8, blocks=blocks, bias=True)
    _randomise_branch(layer)
    x = torch.randn(3, 16, 9, 9)
    _warm_bn(layer, x)
    with torch.no_grad():
        released = layer.forward_released(x)
        layer.mode = "featurewise"
        fw = layer(x)
        layer.mode = "synthesis"
        syn = layer(x)
    assert released.shape == (3, 24, 9 // stride + (9 % stride > 0 and stride > 1), 9 // stride + (stride > 1))
    torch.testing.assert_close(fw, released, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(syn, released, atol=1e-5, rtol=1e-5)


def test_plain_form_outputs_and_gradients_equal() -> None:
    torch.manual_seed(1)
    layer = DynamicConvDecomposition(12, 20, 3, stabilised=False, latent=6)
    _randomise_branch(layer)
    x = torch.randn(2, 12, 7, 7)
    outs, grads = [], []
    for mode in ("featurewise", "synthesis"):
        layer.zero_grad()
        layer.mode = mode
        y = layer(x)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs.append(y.detach())
        grads.append({n: p.grad.clone() for n, p in layer.named_parameters()})
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-4, msg=name)
    assert all(g.abs().sum() > 0 for g in grads[0].values())


def test_plain_form_is_equation_3_6() -> None:
    """y = (Λ W0 + P Φ Qᵀ) ∗ x built by hand from the branch outputs."""
    torch.manual_seed(2)
    layer = DynamicConvDecomposition(8, 10, 1, stabilised=False, latent=4)
    _randomise_branch(layer)
    x = torch.randn(2, 8, 5, 5)
    lam, phi = layer.coefficients(x)
    w = lam[:, :, None] * layer.weight.flatten(1) + layer.p.flatten(1) @ phi @ layer.q.flatten(1)
    ref = torch.einsum("boi,bihw->bohw", w, x)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)


def test_sparse_residual_is_block_diagonal() -> None:
    torch.manual_seed(3)
    layer = DynamicConvDecomposition(16, 16, 1, stabilised=False, latent=8, blocks=4, variant="residual")
    _randomise_branch(layer)
    x = torch.randn(1, 16, 3, 3)
    _, phi = layer.coefficients(x)
    p, q = layer._full_pq()
    dyn = (p @ phi @ q)[0]
    mask = torch.block_diag(*[torch.ones(4, 4)] * 4)
    assert dyn[mask == 0].abs().max() == 0 and dyn[mask == 1].abs().max() > 0
    assert layer.branch.heads["phi"].out_features == 4 * 2 * 2


def test_variants_parameters() -> None:
    full = DynamicConvDecomposition(32, 32, latent=8, squeeze=4)
    lam = DynamicConvDecomposition(32, 32, latent=8, squeeze=4, variant="lambda")
    res = DynamicConvDecomposition(32, 32, latent=8, squeeze=4, variant="residual")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    static, branch = 32 * 32, 32 * 4 + 4 * 4
    assert n(lam) == static + branch + 4 * 32
    assert n(res) == static + branch + 4 * 64 + 2 * 32 * 8 + 4 * 8
    assert n(full) == n(res) + 4 * 32
    # Λ ≈ 1 and Φ ≈ 0 at a small init: hsig2(0) = 1.
    lam_x, phi_x = full.coefficients(torch.zeros(1, 32, 4, 4))
    assert torch.allclose(lam_x, torch.ones_like(lam_x)) and phi_x.abs().max() == 0


def test_reparameterize_folds_following_bn() -> None:
    torch.manual_seed(4)
    layer = DynamicConvDecomposition(8, 12, 3, latent=4)
    _randomise_branch(layer)
    bn = nn.BatchNorm2d(12)
    x = torch.randn(4, 8, 6, 6)
    seq = nn.Sequential(layer, bn)
    seq.train()
    with torch.no_grad():
        for _ in range(3):
            seq(x)
    seq.eval()
    x2 = torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        ref = seq(x2)
        fast = layer.reparameterize(bn=bn)
        assert relative_error(fast(x2), ref) <= 1e-5
        bn.running_mean.add_(0.5)  # twin: a fold of other statistics fails the same check
        assert relative_error(layer.reparameterize(bn=bn)(x2), ref) > 1e-3
    with pytest.raises(ValueError, match="needs a 1×1 layer"):
        layer.reparameterize(form="synthesis")


def _randomise_bns(layer: nn.Module) -> None:
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1, 1)


@pytest.mark.parametrize("variant", ["full", "lambda", "residual"])
@pytest.mark.parametrize("stabilised", [True, False])
@pytest.mark.parametrize("kernel, stride, pool, bias", [(1, 1, 2, False), (3, 2, 1, True), (1, 2, 1, True)])
def test_fast_form_equals_layer(
    variant: str, stabilised: bool, kernel: int, stride: int, pool: int, bias: bool
) -> None:
    """The explicit fast form (every application it supports, with a BN folded) equals the layer in eval, float64."""
    torch.manual_seed(0)
    layer = DynamicConvDecomposition(
        8, 12, kernel, stride=stride, pool=pool, bias=bias, variant=variant, stabilised=stabilised
    ).double()
    _randomise_branch(layer)
    _randomise_bns(layer)
    layer.eval()
    bn = nn.BatchNorm2d(12).double().eval()
    _randomise_bns(bn)
    x = torch.randn(3, 8, 9, 9, dtype=torch.float64)
    reference = layer(x)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference, atol=0, rtol=0)  # no other path without autograd
        expected = bn(reference)
    forms = ["featurewise", "synthesis"] if kernel == 1 else ["featurewise"]
    for form in forms:
        with torch.no_grad():
            assert relative_error(layer.reparameterize(form=form)(x), reference) <= 1e-12, form
            assert relative_error(layer.reparameterize(bn=bn, form=form)(x), expected) <= 1e-12, form


@pytest.mark.quick
@pytest.mark.parametrize("variant, stride, bias", [("full", 1, False), ("full", 2, True), ("residual", 1, True)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_training_by_synthesis_equals_released_form(variant: str, stride: int, bias: bool, momentum: float | None):
    """Stabilised training forward by per-sample synthesis == the released feature-wise computation: outputs, every
    gradient and the BN running statistics (float64: the moments route loses a little precision in float32)."""
    torch.manual_seed(3)
    released = DynamicConvDecomposition(8, 12, 1, stride=stride, bias=bias, variant=variant, mode="featurewise")
    released = released.double()
    _randomise_branch(released)
    _randomise_bns(released)
    for m in released.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
    synthesis = copy.deepcopy(released)
    synthesis.mode = "synthesis"
    x = torch.randn(4, 8, 6, 5, dtype=torch.float64)
    outs, grads = [], []
    for layer in (released, synthesis):
        layer.train()
        xi = x.clone().requires_grad_(True)
        for _ in range(2):  # two steps: running statistics accumulate
            y = layer(xi)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outs.append(y)
        grads.append([xi.grad, *(p.grad for p in layer.parameters())])
    assert synthesis._train_by_synthesis(x) and not released._train_by_synthesis(x)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-10, rtol=1e-9)
    for a, b in zip(grads[0], grads[1]):
        if a is None:
            assert b is None or not b.any()
        else:
            torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-8)
    for (name, a), (_, b) in zip(released.named_buffers(), synthesis.named_buffers()):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-10, msg=name)


def test_training_by_synthesis_is_stable_in_float32() -> None:
    """Post-ReLU inputs (mean ≫ std) at the classifier's 1×1 resolution: the centred moments keep float32 accurate."""
    torch.manual_seed(4)
    released = DCDClassifier(32, 10, latent=8, squeeze=8, mode="featurewise")
    _randomise_branch(released)
    synthesis = copy.deepcopy(released)
    synthesis.mode = "synthesis"
    x = torch.rand(64, 32) * 0.02 + 6.0  # like pooled ReLU6 features: mean ≫ spread
    y_r, y_s = released.train()(x), synthesis.train()(x)
    torch.testing.assert_close(y_s, y_r, atol=2e-4 * float(y_r.abs().max()), rtol=1e-3)
    torch.testing.assert_close(synthesis.bn_q.running_var, released.bn_q.running_var, rtol=1e-3, atol=1e-6)


def test_training_form_rule() -> None:
    layer = DynamicConvDecomposition(16, 96, 1).train()  # L = 4
    assert layer._train_by_synthesis(torch.empty(2, 16, 56, 56))  # O·L·HW = 1.2M > L²HW + L(L+O)I = 56k
    late = DynamicConvDecomposition(480, 80, 1).train()  # L = 30
    assert not late._train_by_synthesis(torch.empty(2, 480, 7, 7))  # 118k < 44k + 1.6M
    assert not DynamicConvDecomposition(16, 96, 3).train()._train_by_synthesis(torch.empty(2, 16, 56, 56))


def test_eval_runs_its_own_modules_whatever_the_grad_mode() -> None:
    """No hidden fast path: in eval, with or without autograd, the layer's BNs run (hooks fire) and in-place edits of
    their statistics take effect at once."""
    torch.manual_seed(1)
    layer = DynamicConvDecomposition(8, 12, 1, latent=4).eval()
    _randomise_branch(layer)
    calls: list[str] = []
    layer.bn_q.register_forward_hook(lambda *_: calls.append("bn_q"))
    layer.branch.fc.register_forward_hook(lambda *_: calls.append("fc"))
    x = torch.randn(1, 8, 6, 6)
    with_grad = layer(x)
    with torch.no_grad():
        without = layer(x)
    with torch.inference_mode():
        layer(x)
    assert calls == ["fc", "bn_q"] * 3
    torch.testing.assert_close(without, with_grad.detach(), atol=0, rtol=0)
    with torch.no_grad():
        layer.bn_q.running_var.data.mul_(4)
        assert relative_error(layer(x), without) > 1e-3


def test_auto_mode_picks_the_cheaper_form() -> None:
    layer = DynamicConvDecomposition(16, 96, 1).eval()  # L = 4: synthesis costs O·L·(L + I) + O·I ≈ 9.2k
    assert layer.apply_mode(1, (28, 28)) == "synthesis"  # feature-wise: 784·(64 + 16 + 384 + 96) ≈ 439k
    assert layer.apply_mode(1, (1, 1)) == "featurewise"  # feature-wise: 560 per sample
    assert layer.apply_mode(4, (28, 28)) == "synthesis"  # a batch of 1×1 kernels is one batched GEMM
    kxk = DynamicConvDecomposition(16, 96, 3).eval()
    assert kxk.apply_mode(1, (28, 28)) == "synthesis"
    assert kxk.apply_mode(4, (28, 28)) == "featurewise"  # batches of k×k kernels would need a grouped conv
    fixed = DynamicConvDecomposition(16, 96, 1, mode="synthesis")
    assert fixed.apply_mode(4, (1, 1)) == "synthesis"
    with pytest.raises(ValueError, match="unknown application mode"):
        DynamicConvDecomposition(16, 96, 1, mode="fast")


def test_traced_inference_form_matches_eager() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(DynamicConvDecomposition(8, 16, 1, pool=2), nn.ReLU(), DynamicConvDecomposition(16, 8, 3))
    for m in model:
        _randomise_branch(m)
    model.eval()
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        expected = model(x)
        traced = torch.jit.trace(model, (x,), check_trace=False)
        torch.testing.assert_close(traced(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.quick
def test_classifier_matches_released_formula() -> None:
    torch.manual_seed(5)
    cls = DCDClassifier(40, 7)
    _randomise_branch(cls)
    x = torch.randn(6, 40)
    _warm_bn(cls, x)
    with torch.no_grad():
        out = cls(x)
        u = cls.branch.hidden_features(x)
        lam = F.relu6(cls.branch.heads["scale"](u) + 3) / 3
        phi = cls.branch.heads["phi"](u).reshape(6, 32, 32)
        z = F.batch_norm(x @ cls.q.flatten(1).t(), cls.bn_q.running_mean, cls.bn_q.running_var, cls.bn_q.weight,
                         cls.bn_q.bias, False, 0.0, cls.bn_q.eps)  # fmt: skip
        fz = torch.bmm(phi, z[:, :, None])[:, :, 0]
        fz = F.batch_norm(fz, cls.bn_phi.running_mean, cls.bn_phi.running_var, cls.bn_phi.weight, cls.bn_phi.bias,
                          False, 0.0, cls.bn_phi.eps)  # fmt: skip
        ref = lam * (x @ cls.weight.flatten(1).t() + cls.bias) + (fz + z) @ cls.p.flatten(1).t()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert (
        sum(p.numel() for p in cls.parameters())
        == 40 * 7 + 7 + 40 * 32 + 32 * 7 + 40 * 32 + 32 * 32 + 32 * 1024 + 32 * 7 + 4 * 32
    )


def test_depthwise_dcd_equation_3_8() -> None:
    torch.manual_seed(6)
    layer = DepthwiseDCD(6, 3, stride=2)
    _randomise_branch(layer)
    x = torch.randn(2, 6, 8, 8)
    coeffs = layer.branch(x)
    lam, phi = coeffs["scale"], coeffs["phi"].reshape(2, 4, 4)
    w = lam[:, :, None] * layer.weight.flatten(1) + layer.p @ phi @ layer.r  # (B, C, k²)
    ref = torch.cat([F.conv2d(x[i : i + 1], w[i].reshape(6, 1, 3, 3), None, 2, 1, 1, 6) for i in range(2)])
    for mode in ("featurewise", "synthesis"):
        layer.mode = mode
        torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)


def test_joint_fusion_equation_3_9() -> None:
    torch.manual_seed(7)
    layer = JointFusionDCD(16, 12, 3, stride=2, latent=3, kernel_latent=4)
    _randomise_branch(layer)
    x = torch.randn(2, 16, 7, 7)
    lam, phi = layer._coeffs(x)
    ref = []
    for b in range(2):
        w = lam[b, :, None, None] * layer.weight.flatten(2)
        for a in range(3):
            for c in range(3):
                for m in range(4):
                    w = w + phi[b, a, c, m] * layer.p[:, c, None, None] * layer.q[a][None, :, None] * layer.r[m]
        ref.append(F.conv2d(x[b : b + 1], w.reshape(12, 16, 3, 3), None, 2, 1))
    ref_t = torch.cat(ref)
    for mode in ("featurewise", "synthesis"):
        layer.mode = mode
        torch.testing.assert_close(layer(x), ref_t, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cls, k", [(CondConv2d, 8), (DynamicConv2d, 4)])
def test_vanilla_dynamic_conv(cls: type[nn.Module], k: int) -> None:
    torch.manual_seed(8)
    layer = cls(8, 16, 3, groups=2)
    assert layer.weight.shape == (k, 16, 4, 3, 3)
    x = torch.randn(3, 8, 6, 6)
    layer.mode = "featurewise"
    a = layer(x)
    layer.mode = "synthesis"
    torch.testing.assert_close(a, layer(x), atol=1e-5, rtol=1e-5)
    coeffs = layer.branch(x)
    if cls is DynamicConv2d:
        torch.testing.assert_close(coeffs.sum(1), torch.ones(3))
    else:
        assert ((coeffs > 0) & (coeffs < 1)).all()


def test_dyconv_temperature_schedule() -> None:
    assert dyconv_temperature(0) == 30.0
    assert dyconv_temperature(5, anneal_epochs=10) == pytest.approx(15.5)
    assert dyconv_temperature(25, anneal_epochs=10) == 1.0
    model = nn.Sequential(DynamicConv2d(4, 4, 1), DynamicConv2d(4, 4, 1), CondConv2d(4, 4))
    assert set_temperature(model, 7.0) == 2 and model[1].branch.temperature == 7.0


@pytest.mark.quick
def test_bad_layer_arguments() -> None:
    with pytest.raises(ValueError, match="groups=4 is not supported"):
        DynamicConvDecomposition(8, 8, 3, groups=4)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd number"):
        DynamicConvDecomposition(8, 8, 2)
    with pytest.raises(ValueError, match="blocks B=3 must divide in_channels=8"):
        DynamicConvDecomposition(8, 8, blocks=3)
    with pytest.raises(ValueError, match="latent dimension L must be a positive integer"):
        DynamicConvDecomposition(8, 8, latent=0)
    with pytest.raises(ValueError, match="latent L=2 is smaller than the number of blocks B=4"):
        DynamicConvDecomposition(8, 8, latent=2, blocks=4)
    with pytest.raises(ValueError, match="unknown variant"):
        DynamicConvDecomposition(8, 8, variant="both")
    with pytest.raises(ValueError, match="unknown application mode"):
        DynamicConvDecomposition(8, 8, mode="fast")
    with pytest.raises(ValueError, match="expected 8 input channels, got 5"):
        DynamicConvDecomposition(8, 8)(torch.randn(1, 5, 4, 4))
    with pytest.raises(ValueError, match="L_k=9 must be < k²=9"):
        DepthwiseDCD(8, 3, latent=9)
    with pytest.raises(ValueError, match="groups=3 must divide in_channels=8"):
        CondConv2d(8, 8, 3, groups=3)


def test_madds_protocol_numbers() -> None:
    from dyncore.complexity import MAddsConvention, count_madds

    def both(layer: nn.Module, x: torch.Tensor) -> tuple[int, int]:
        layer.eval()
        return tuple(  # type: ignore[return-value]
            count_madds(layer, x, convention=MAddsConvention(dynamic=d)).total for d in ("per_pixel", "per_sample")
        )

    # DCD 1×1, I = O = 32, L = 8, S = 4, 4×4 output; branch 32·4 + 4·4 + 4·64 + 4·32 = 528.
    pp, ps = both(DynamicConvDecomposition(32, 32, latent=8, squeeze=4), torch.randn(2, 32, 4, 4))
    assert pp == 32 * 32 * 16 + 528 + (8 * 32 + 64 + 32 * 8) * 16
    assert ps == 32 * 32 * 16 + 528 + 32 * 32 + 64 * 32 + 32 * 8 * 32
    # CondConv 8 → 16, 3×3, 8×8 output: routing 8·8; per pixel K convs + weighted sum; per sample mix once + 1 conv.
    pp, ps = both(CondConv2d(8, 16, 3), torch.randn(2, 8, 8, 8))
    kernel = 16 * 8 * 9
    assert pp == 64 + 8 * kernel * 64 + 8 * 16 * 64
    assert ps == 64 + 8 * kernel + kernel * 64
    for layer in (DepthwiseDCD(32, 3), JointFusionDCD(32, 32, 3)):
        pp, ps = both(layer, torch.randn(1, 32, 32, 32))
        assert ps < pp  # large map: synthesis once per sample is cheaper


def test_fusion_bn_zero_init_starts_without_fusion() -> None:
    """fusion_bn_init=0: BN(Φ·z) has γ = 0, so Φ(x) has no effect at initialisation (the layer is ΛW0 + P·BN(Qx))."""
    torch.manual_seed(9)
    layer = DynamicConvDecomposition(8, 12, latent=4, fusion_bn_init=0.0)
    x = torch.randn(4, 8, 5, 5)
    a = layer(x)
    with torch.no_grad():
        layer.branch.heads["phi"].weight.normal_(0, 1.0)
    torch.testing.assert_close(layer(x), a)
    assert DynamicConvDecomposition(8, 12, latent=4).bn_phi.weight.eq(1).all()  # released init
