"""Top-k accuracy and confusion-matrix IoU, checked against torchmetrics and hand counts."""

from __future__ import annotations

import math

import pytest
import torch

from dyncore.training import ConfusionMatrix, DistEnv, accuracy


@pytest.mark.quick
def test_accuracy_hand_counted() -> None:
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    target = torch.tensor([1, 2, 0, 0])
    # top-1 hits: rows 0, 3 → 50 %; top-2 adds row 1 (2 is 2nd best) → 75 %; top-3 → 100 %
    assert accuracy(logits, target, topk=(1, 2, 3)) == [50.0, 75.0, 100.0]
    assert accuracy(logits, target) == [50.0]


def test_accuracy_matches_torchmetrics() -> None:
    tm = pytest.importorskip("torchmetrics.classification")
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(257, 10, generator=g), torch.randint(0, 10, (257,), generator=g)
    top1, top5 = accuracy(logits, target, topk=(1, 5))
    for k, ours in ((1, top1), (5, top5)):
        ref = tm.MulticlassAccuracy(num_classes=10, top_k=k, average="micro")(logits, target).item() * 100
        assert ours == pytest.approx(ref, abs=1e-4)


def test_accuracy_bad_input() -> None:
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"`logits` must be a \(B, C\) tensor, got shape \(4, 3, 1\)"):
        accuracy(logits[..., None], target)
    with pytest.raises(ValueError, match="batch size 4 but `target` has 3"):
        accuracy(logits, target[:3])
    with pytest.raises(ValueError, match=r"every k in `topk` must be an int in \[1, 3\]"):
        accuracy(logits, target, topk=(1, 5))
    with pytest.raises(ValueError, match=r"class ids \[3\] outside \[0, 3\)"):
        accuracy(logits, torch.tensor([0, 1, 3, 1]))
    with pytest.raises(TypeError, match="integer class ids"):
        accuracy(logits, target.float())


@pytest.mark.quick
def test_confusion_matrix_hand_counted_with_ignore() -> None:
    cm = ConfusionMatrix(3, ignore_index=255)
    target = torch.tensor([[0, 0, 1, 255], [1, 2, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 2], [1, 2, 0, 0]])  # ignored pixels predict junk
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # IoU: c0 1/(2+2-1)=1/3, c1 2/(2+3-2)=2/3, c2 1/(2+1-1)=1/2
    assert torch.allclose(cm.iou(), torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64))
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert cm.miou(classes=[1, 2]) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)
    # scores (B, C, N) are argmax-ed over dim 1
    cm2 = ConfusionMatrix(3)
    cm2.update(torch.nn.functional.one_hot(pred, 3).permute(0, 2, 1).float(), target)
    assert torch.equal(cm2.matrix, cm.matrix)
    # an absent class (never in target or prediction) is NaN and left out of the mean
    cm4 = ConfusionMatrix(4)
    cm4.update(pred, target)
    assert math.isnan(cm4.iou()[3].item()) and cm4.miou() == pytest.approx(cm.miou())
    assert cm.all_reduce(DistEnv()) is cm  # single process: unchanged
    cm.reset()
    assert int(cm.matrix.sum()) == 0 and math.isnan(cm.pixel_accuracy())


def test_confusion_matrix_matches_torchmetrics_with_ignore_pixels() -> None:
    tm = pytest.importorskip("torchmetrics.classification")
    g = torch.Generator().manual_seed(1)
    c = 8
    ours = ConfusionMatrix(c, ignore_index=255)
    ref_none = tm.MulticlassJaccardIndex(num_classes=c, ignore_index=255, average="none")
    ref_macro = tm.MulticlassJaccardIndex(num_classes=c, ignore_index=255, average="macro")
    ref_acc = tm.MulticlassAccuracy(num_classes=c, ignore_index=255, average="micro")
    for _ in range(3):
        target = torch.randint(0, 6, (2, 16, 20), generator=g)  # classes 6, 7 never in the target
        target[torch.rand(target.shape, generator=g) < 0.2] = 255
        logits = torch.randn(2, c, 16, 20, generator=g)
        logits[:, 5] -= 100  # class 5 never predicted
        logits[:, 7] -= 100  # class 7 neither predicted nor present: IoU undefined
        ours.update(logits, target)
        pred = logits.argmax(1)
        for ref in (ref_none, ref_macro, ref_acc):
            ref.update(pred, target)
    iou = ours.iou()
    present = ~torch.isnan(iou)
    assert present.tolist() == [True] * 7 + [False]
    assert torch.allclose(iou[:7].float(), ref_none.compute()[:7], atol=1e-6)
    assert ours.miou() == pytest.approx(ref_macro.compute().item(), abs=1e-6)
    assert ours.pixel_accuracy() == pytest.approx(ref_acc.compute().item(), abs=1e-6)
    assert iou[5].item() == 0.0 and iou[6].item() == 0.0  # never predicted / predicted but never present


def test_confusion_matrix_bad_input() -> None:
    cm = ConfusionMatrix(3, ignore_index=255)
    with pytest.raises(ValueError, match=r"`target` holds label ids \[7\] outside \[0, 3\)"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"has 4 channels at dim 1, expected num_classes=3"):
        cm.update(torch.randn(2, 4, 5, 5), torch.zeros(2, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="differ in shape"):
        cm.update(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`ignore_index`=1 is a valid class id"):
        ConfusionMatrix(3, ignore_index=1)
    with pytest.raises(ValueError, match=r"`classes` must be a non-empty list of ids in \[0, 3\)"):
        cm.miou(classes=[0, 3])
    assert int(cm.matrix.sum()) == 0  # rejected batches were not counted


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda_tensors_match_cpu() -> None:
    g = torch.Generator().manual_seed(2)
    logits, target = torch.randn(2, 5, 8, 8, generator=g), torch.randint(0, 5, (2, 8, 8), generator=g)
    target[0, 0] = 255
    cpu, gpu = ConfusionMatrix(5), ConfusionMatrix(5)
    cpu.update(logits, target)
    gpu.update(logits.cuda(), target.cuda())
    assert gpu.matrix.is_cuda and torch.equal(gpu.matrix.cpu(), cpu.matrix)
    assert gpu.miou() == pytest.approx(cpu.miou())
    flat_logits, flat_target = logits[:, :, 0, 0], target[:, 1, 1]
    assert accuracy(flat_logits.cuda(), flat_target.cuda(), (1, 2)) == accuracy(flat_logits, flat_target, (1, 2))
