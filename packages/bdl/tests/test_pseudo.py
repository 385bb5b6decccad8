from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from bdl.pseudo import (
    ConfidenceHistogram,
    PseudoLabeledTarget,
    PseudoLabelMismatchError,
    class_thresholds,
    generate_pseudo_labels,
    plot_confidence_curve,
    select_pseudo_labels,
)


@pytest.mark.quick
def test_histogram_median_and_ratio_match_exact_statistics():
    torch.manual_seed(0)
    prob = torch.softmax(torch.randn(6, 5, 16, 16) * 3, dim=1)
    hist = ConfidenceHistogram(5, bins=1000)
    for chunk in prob.split(2):  # streamed in three batches
        hist.update(chunk)
    conf, pred = prob.max(1)
    assert hist.total() == conf.numel()
    med = hist.class_medians()
    for c in range(5):
        x = np.sort(conf[pred == c].numpy())
        lo, hi = x[(len(x) - 1) // 2], x[len(x) // 2]  # the sample median lies between these
        assert lo - 1e-3 <= float(med[c]) <= hi + 1e-3
    t = [0.5, 0.7, 0.9]
    exact_ratio = [float((conf >= v).float().mean()) for v in t]
    assert np.allclose(hist.ratio_above(t).numpy(), exact_ratio, atol=2e-3)
    # memory is fixed: C × bins counters whatever the number of pixels
    assert hist.nbytes == 5 * 1000 * 8


@pytest.mark.quick
def test_thresholds_global_and_class_median_capped_and_selection():
    hist = ConfidenceHistogram(3, bins=100)
    hist.update_conf(torch.tensor([0.5, 0.6, 0.7, 0.95, 0.99, 0.97]), torch.tensor([0, 0, 0, 1, 1, 1]))
    assert class_thresholds(hist, mode="global").tolist() == [0.9, 0.9, 0.9]
    thr = class_thresholds(hist, mode="class_median", threshold=0.9)
    assert abs(float(thr[0]) - 0.6) < 0.02 and float(thr[1]) == 0.9 and float(thr[2]) == 0.9  # capped; unseen → 0.9
    prob = torch.tensor([[0.95, 0.03, 0.02], [0.5, 0.4, 0.1], [0.05, 0.05, 0.9], [0.02, 0.97, 0.01]])
    prob = prob.T.reshape(1, 3, 2, 2)
    labels = select_pseudo_labels(prob, class_thresholds(hist, mode="global"))
    assert labels.tolist() == [[[0, 255], [255, 1]]]  # 0.9 is not > 0.9
    with pytest.raises(ValueError, match="mode must be"):
        class_thresholds(hist, mode="soft")  # type: ignore[arg-type]


def test_generate_pseudo_labels_round_trip_and_refuses_mismatches(tiny_scenes, tmp_path):
    _, target, val = tiny_scenes
    torch.manual_seed(0)
    model = nn.Conv2d(3, 19, 1)
    nn.init.normal_(model.weight, std=3.0)
    model.num_classes = 19
    res = generate_pseudo_labels(model, target, tmp_path / "pl", mode="class_median", batch_size=3)
    assert 0.0 < res.pixel_ratio < 1.0 and len(res.thresholds) == 19 and max(res.thresholds) <= 0.9
    ds = PseudoLabeledTarget(target, tmp_path / "pl")
    x, y = ds[2]
    with torch.no_grad():
        prob = torch.softmax(model(target[2][0][None]), 1)
    expected = select_pseudo_labels(prob, torch.tensor(res.thresholds, dtype=torch.float64))[0].long()
    assert torch.equal(y, expected) and torch.equal(x, target[2][0])
    selected = sum(int((ds[i][1] != 255).sum()) for i in range(len(ds)))
    assert selected / (len(ds) * 32 * 64) == pytest.approx(res.pixel_ratio)
    # existing folder: refused, untouched
    before = (tmp_path / "pl" / "pseudo_labels.json").read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_pseudo_labels(model, target, tmp_path / "pl")
    assert (tmp_path / "pl" / "pseudo_labels.json").read_bytes() == before
    # a folder made for another target list
    with pytest.raises(PseudoLabelMismatchError, match="holds 8 labels but the target list has 4"):
        PseudoLabeledTarget(val, tmp_path / "pl")
    manifest = json.loads(before)
    manifest["names"][3] = "other_00003"
    (tmp_path / "pl" / "pseudo_labels.json").write_text(json.dumps(manifest))
    with pytest.raises(PseudoLabelMismatchError, match="item 3 is 'other_00003' in the folder but 'real_train_00003'"):
        PseudoLabeledTarget(target, tmp_path / "pl")
    with pytest.raises(FileNotFoundError, match="not a pseudo-label folder"):
        PseudoLabeledTarget(target, tmp_path)


def test_confidence_curve_png(tmp_path):
    hist = ConfidenceHistogram(2, bins=100)
    hist.update_conf(torch.rand(1000), torch.randint(0, 2, (1000,)))
    p = plot_confidence_curve(hist, tmp_path / "fig55.png")
    assert p.is_file() and p.read_bytes()[:4] == b"\x89PNG"
