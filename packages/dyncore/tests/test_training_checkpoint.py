"""Atomic checkpoints, clear errors on bad files, strict loading, config checks, and bit-identical resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dyncore.training import (
    Checkpointer,
    CheckpointError,
    CheckpointNotFoundError,
    ConfigMismatchError,
    IncompatibleCheckpointError,
    InfiniteLoader,
    autocast,
    config_fingerprint,
    load_checkpoint,
    load_state_dict_strict,
    make_grad_scaler,
    save_checkpoint,
    seed_everything,
)


def _net(hidden: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, 3))


# ---------------------------------------------------------------------------------------------------- files
def test_save_load_roundtrip_and_no_temp_files(tmp_path: Path) -> None:
    w = torch.arange(6.0).reshape(2, 3)
    state = {"w": w, "step": 7, "nested": {"a": [1, 2.5, "x"]}}
    path = save_checkpoint(tmp_path / "sub" / "c.pt", state)
    assert path == tmp_path / "sub" / "c.pt"
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], w) and loaded["step"] == 7 and loaded["nested"] == {"a": [1, 2.5, "x"]}
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["c.pt"]


def test_failed_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {"v": torch.tensor(1.0)})
    real_save = torch.save

    def crash_mid_write(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"v": torch.tensor(2.0)})
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["v"].item() == 1.0  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # temp file cleaned up


@pytest.mark.quick
def test_truncated_checkpoint_raises_naming_file(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "trunc.pt", {"w": torch.randn(64, 64)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pt.*truncated, corrupt"):
        load_checkpoint(path)


def test_missing_empty_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match=r"nope\.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError):  # also catchable as the builtin
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt is empty"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "notes.txt").write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.txt .*not a torch checkpoint"):
        load_checkpoint(tmp_path / "notes.txt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match=r"tensor\.pt holds a Tensor, not a checkpoint dict"):
        load_checkpoint(tmp_path / "tensor.pt")
    with pytest.raises(TypeError, match="`state` must be a dict"):
        save_checkpoint(tmp_path / "x.pt", [1, 2])  # type: ignore[arg-type]
    # a dict checkpoint not written by Checkpointer is rejected by Checkpointer.resume
    save_checkpoint(tmp_path / "run" / "last.pt", {"weights": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"last\.pt was not written by dyncore.training.Checkpointer"):
        Checkpointer(tmp_path / "run", {}).resume(model=_net())


# ---------------------------------------------------------------------------------------------------- strict load
@pytest.mark.quick
def test_load_state_dict_strict_names_missing_unexpected_and_shapes() -> None:
    src = _net(hidden=8).state_dict()
    src["extra.weight"] = torch.zeros(2)
    del src["3.bias"]
    src["0.weight"] = torch.zeros(5, 4)  # model has (8, 4)
    with pytest.raises(IncompatibleCheckpointError) as info:
        load_state_dict_strict(_net(hidden=8), src)
    msg = str(info.value)
    assert "missing keys (1): 3.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "0.weight: checkpoint [5, 4] vs model [8, 4]" in msg
    assert info.value.missing == ["3.bias"] and info.value.unexpected == ["extra.weight"]
    assert info.value.mismatched == {"0.weight": ((5, 4), (8, 4))}


def test_load_state_dict_strict_accepts_ddp_prefix_and_copies_values() -> None:
    a, b = _net(), _net()
    prefixed = {f"module.{k}": v for k, v in a.state_dict().items()}
    load_state_dict_strict(b, prefixed)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


# ---------------------------------------------------------------------------------------------------- config
def test_resume_into_different_config_names_keys(tmp_path: Path) -> None:
    cfg = {"lr": 0.1, "model": {"width": 8, "dropout": 0.3}, "epochs": 10, "out": "runs/a"}
    Checkpointer(tmp_path, cfg).save(3, model=_net())
    other = {"lr": 0.2, "model": {"width": 8, "dropout": 0.5}, "epochs": 10, "out": "runs/a", "amp": True}
    with pytest.raises(ConfigMismatchError, match=r"\['amp', 'lr', 'model.dropout'\]") as info:
        Checkpointer(tmp_path, other).resume(model=_net())
    assert info.value.differences["lr"] == (0.1, 0.2)
    assert info.value.differences["amp"] == ("<absent>", True)
    # keys listed in `ignore` may change; key order and tuple-vs-list do not matter
    moved = {"out": "runs/b", "epochs": 20, "model": {"dropout": 0.3, "width": 8}, "lr": 0.1}
    assert Checkpointer(tmp_path, moved, ignore=["out", "epochs"]).resume(model=_net()) is not None
    assert config_fingerprint({"a": (1, 2), "b": 1}) == config_fingerprint({"b": 1, "a": [1, 2]})
    with pytest.raises(TypeError, match="config value at 'fn'"):
        Checkpointer(tmp_path, {"fn": object()})


def test_resume_errors_for_model_and_missing_components(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, {"x": 1})
    assert ck.resume(model=_net()) is None  # nothing saved yet: a fresh run
    ck.save(1, model=_net(hidden=8))
    with pytest.raises(IncompatibleCheckpointError, match=r"(?s)last\.pt.*shape mismatches \(3\)"):
        ck.resume(model=_net(hidden=16))
    model = _net()
    with pytest.raises(CheckpointError, match="`optimizer` was passed but the checkpoint holds no optimizer"):
        ck.resume(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="`step` must be a non-negative int"):
        ck.save(-1, model=model)


# ---------------------------------------------------------------------------------------------------- exact resume
def _build(seed_for_objects: int, device: str = "cpu") -> tuple[nn.Module, Any, Any, Any, InfiniteLoader]:
    seed_everything(seed_for_objects)
    model = _net().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    scaler = make_grad_scaler(device)  # pass-through on CPU, real fp16 loss scaling on CUDA
    data = TensorDataset(torch.linspace(-1, 1, 40 * 4).reshape(40, 4), torch.arange(40) % 3)
    loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(7))
    return model, opt, sched, scaler, InfiniteLoader(loader)


def _train(model: nn.Module, opt: Any, sched: Any, scaler: Any, it: InfiniteLoader, steps: int) -> list[Any]:
    seen = []
    device = next(model.parameters()).device
    model.train()
    for _ in range(steps):
        x, y = next(it)
        seen.append(y.clone())
        x, y = x.to(device), y.to(device)
        x = x + 0.05 * torch.randn_like(x)  # global-RNG augmentation
        with autocast(device, enabled=device.type == "cuda"):
            loss = nn.functional.cross_entropy(model(x), y)  # dropout draws from the global RNG too
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
    return seen


@pytest.mark.quick
@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))],
)
def test_interrupted_and_resumed_training_is_bit_identical(tmp_path: Path, device: str) -> None:
    total, k = 13, 7  # 5 batches per pass: the save lands mid-pass (epoch 1, batch 2)
    config = {"lr": 1e-2, "steps": total}

    model_a, opt_a, sched_a, scaler_a, it_a = _build(0, device)
    seen_a = _train(model_a, opt_a, sched_a, scaler_a, it_a, total)

    model_b, opt_b, sched_b, scaler_b, it_b = _build(0, device)
    seen_b = _train(model_b, opt_b, sched_b, scaler_b, it_b, k)
    ck = Checkpointer(tmp_path / "ckpt", config)
    ck.save(k, model=model_b, optimizer=opt_b, scheduler=sched_b, scaler=scaler_b, extra={"loader": it_b.state_dict()})
    del model_b, opt_b, sched_b, scaler_b, it_b

    # fresh objects, deliberately different RNG/init, restored from disk
    model_c, opt_c, sched_c, scaler_c, it_c = _build(12345, device)
    resumed = Checkpointer(tmp_path / "ckpt", config).resume(
        model=model_c, optimizer=opt_c, scheduler=sched_c, scaler=scaler_c
    )
    assert resumed is not None and resumed["step"] == k
    it_c.load_state_dict(resumed["extra"]["loader"])
    assert sched_c.last_epoch == k and (it_c.epoch, it_c.batch_in_epoch) == (1, 2)
    seen_c = _train(model_c, opt_c, sched_c, scaler_c, it_c, total - k)

    assert all(torch.equal(a, b) for a, b in zip(seen_a, seen_b + seen_c))  # same data order
    for (name, pa), pc in zip(model_a.named_parameters(), model_c.parameters()):
        assert torch.equal(pa, pc), name
    sa, sc = opt_a.state_dict()["state"], opt_c.state_dict()["state"]
    for i in sa:
        assert torch.equal(sa[i]["exp_avg"], sc[i]["exp_avg"]) and torch.equal(sa[i]["exp_avg_sq"], sc[i]["exp_avg_sq"])
    assert sched_a.get_last_lr() == sched_c.get_last_lr()
    assert scaler_a.state_dict() == scaler_c.state_dict()
