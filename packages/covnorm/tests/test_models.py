from __future__ import annotations

import pytest
import torch
from torch import nn

import covnorm as cn
from covnorm.accounting import task_parameters
from dyncore.surgery import by_name, by_type


@pytest.mark.quick
def test_vgg16_parameter_references() -> None:
    with torch.device("meta"):
        model = cn.vgg16_fcn()
    assert sum(p.numel() for p in model.parameters()) == 138_357_544
    with torch.device("meta"):
        cn.inject(model, where=cn.vgg16_sites, domains=["flowers"])
    sites = cn.adapter_sites(model)
    assert [s.rsplit(".", 1)[-1] for s in sites] == list(cn.VGG16_SITES)
    assert sum(a.channels**2 for a in sites.values()) == 35_364_864  # Σ C² of the 15 RA matrices
    assert round(100 * 35_364_864 / 138_357_544, 1) == 25.6  # % of VGG16
    fc = sites["features.fc6"].channels ** 2 + sites["features.fc7"].channels ** 2
    assert fc == 33_554_432  # 33.5M of it at fc6/fc7
    # the frozen backbone is untouched: its parameters keep their names under `.original`
    assert sum(p.numel() for n, p in model.named_parameters() if ".branches." not in n) == 138_357_544


def test_resnet26_decathlon_series_adapters() -> None:
    model = cn.resnet26(num_classes=10, norm="none")
    convs3 = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs3) == 25 and model.conv1.out_channels == 32  # 1 stem + 3 stages × 4 blocks × 2 convs
    cn.inject(model, where=cn.resnet26_sites, domains=["svhn", "cifar"])
    sites = cn.adapter_sites(model)
    assert len(sites) == 25
    assert sorted({a.channels for a in sites.values()}) == [32, 64, 128, 256]
    md = cn.MultiDomainModel(model, {"svhn": 10, "cifar": 100})
    assert md(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert md.set_domain("cifar")(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_inject_any_torchvision_model_by_predicate() -> None:
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    pred = by_type(nn.Conv2d) & by_name(r"^layer4\.") & (lambda n, m: m.kernel_size == (3, 3))
    cn.inject(model, where=pred, domains=["a", "b"])
    assert len(cn.adapter_sites(model)) == 4
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".branches." not in n)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    model.fc = nn.Identity()
    md = cn.MultiDomainModel(model, {"a": 3, "b": 5}, feature_dim=512)
    assert md.set_domain("b")(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(TypeError, match=r"nn\.Conv2d"):
        cn.inject(resnet18(weights=None), where=by_type(nn.BatchNorm2d), domains=["a"])
    with pytest.raises(ValueError, match="selected no module"):
        cn.inject(resnet18(weights=None), where=by_name("nothing"), domains=["a"])
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="already have adapters"):
        cn.inject(model, where=by_type(nn.Conv2d) & by_name(r"^layer4\."), domains=["c"])
    assert snapshot.keys() == model.state_dict().keys()
    with pytest.raises(ValueError, match="identifier-like"):
        cn.inject(resnet18(weights=None), where=pred, domains=["bad.name"])


@pytest.mark.quick
def test_set_domain_switches_adapters_and_head_without_copying(tiny_model: cn.MultiDomainModel) -> None:
    x = torch.randn(2, 3, 32, 32)
    conv = tiny_model.backbone.features.conv1_1.original
    ptr = conv.weight.data_ptr()
    assert tiny_model.set_domain("digits")(x).shape == (2, 10)
    assert tiny_model.set_domain("letters")(x).shape == (2, 26)
    assert conv.weight.data_ptr() == ptr  # same frozen tensor serves both domains
    adapters = cn.adapter_sites(tiny_model)
    assert all(a.domain == "letters" for a in adapters.values())
    with pytest.raises(cn.UnknownDomainError, match=r"unknown domain 'svhn'; known domains: \['digits', 'letters'\]"):
        tiny_model.set_domain("svhn")
    assert tiny_model.domain == "letters" and all(a.domain == "letters" for a in adapters.values())


@pytest.mark.quick
def test_training_one_domain_touches_only_its_parameters(tiny_model: cn.MultiDomainModel) -> None:
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    tiny_model.set_domain("letters")
    params = tiny_model.domain_parameters()
    opt = torch.optim.SGD(params, lr=0.1)
    tiny_model.train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 26, (8,))
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(tiny_model(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in params)  # gradients reach every trainable parameter
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    after = tiny_model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".letters." in k for k in changed)  # frozen backbone and 'digits' untouched


def test_parameter_accounting_for_residual_adapters(tiny_model: cn.MultiDomainModel) -> None:
    tp = task_parameters(tiny_model, "digits")
    chans = [a.channels for a in cn.adapter_sites(tiny_model).values()]
    assert tp.adapters == sum(c * c + c for c in chans)  # A with bias
    assert tp.norm == sum(4 * c for c in chans)  # B1 and B2 (weight, bias)
    assert tp.head == 12 * 10 + 10
    assert tp.backbone == cn.frozen_parameter_count(tiny_model)
    with pytest.raises(cn.UnknownDomainError, match="known domains"):
        task_parameters(tiny_model, "nope")


def test_add_domain_later_gets_fresh_branches(tiny_model: cn.MultiDomainModel) -> None:
    before = cn.frozen_parameter_count(tiny_model)
    tiny_model.add_domain("svhn", 10)
    assert all("svhn" in a.branches for a in cn.adapter_sites(tiny_model).values())
    assert tiny_model.set_domain("svhn")(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert cn.frozen_parameter_count(tiny_model) == before  # the shared backbone did not grow
    with pytest.raises(ValueError, match="already exists"):
        tiny_model.add_domain("svhn", 10)
