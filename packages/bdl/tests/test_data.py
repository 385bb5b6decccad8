from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bdl.data import (
    CLASSES_13,
    CLASSES_16,
    NUM_CLASSES,
    DatasetError,
    StreetScenes,
    cityscapes,
    generate_scenes,
    gta5,
    synthia,
)


@pytest.mark.quick
def test_scenes_are_bit_identical_under_a_seed_and_differ_across_seeds():
    a = generate_scenes("real", "train", 4, height=32, width=64, seed=3)
    b = generate_scenes("real", "train", 4, height=32, width=64, seed=3)
    c = generate_scenes("real", "train", 4, height=32, width=64, seed=4)
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
    assert not np.array_equal(a["labels"], c["labels"])
    assert a["images"].shape == (4, 32, 64, 3) and a["images"].dtype == np.uint8
    assert a["labels"].max() < NUM_CLASSES


def test_domains_share_labels_but_not_appearance_and_layout_is_shifted():
    syn = generate_scenes("synthetic", "train", 40, height=64, width=128, seed=0)
    real = generate_scenes("real", "train", 40, height=64, width=128, seed=0)
    # every class of the 19 appears somewhere in 40 synthetic scenes; the core classes appear in the real ones too
    assert set(np.unique(syn["labels"])) == set(range(NUM_CLASSES))
    assert {0, 1, 2, 8, 10, 11, 13} <= set(np.unique(real["labels"]))
    # shifted layout: the real domain has more cars and a lower horizon (more sky rows)
    car = [float((d["labels"] == 13).mean()) for d in (syn, real)]
    assert car[1] > car[0]
    sky_rows = [float((d["labels"] == 10).any(axis=2).mean()) for d in (syn, real)]
    assert sky_rows[1] > sky_rows[0]

    # synthetic colours are flat: within a class, pixels vary far less than in the textured real domain
    def within_class_std(d):
        m = d["labels"] == 2
        return float(d["images"][m].astype(np.float32).std(axis=0).mean())

    assert within_class_std(syn) * 2 < within_class_std(real)


def test_street_scenes_dataset_caches_with_content_hash(tmp_path):
    ds = StreetScenes("synthetic", "val", num_images=3, size=(32, 64), root=tmp_path)
    files = list(tmp_path.rglob("*.npz"))
    assert len(files) == 1
    again = StreetScenes("synthetic", "val", num_images=3, size=(32, 64), root=tmp_path)
    assert again.content_hash == ds.content_hash and torch.equal(again.images, ds.images)
    x, y = ds[0]
    assert x.shape == (3, 32, 64) and x.dtype == torch.float32 and -1.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert y.shape == (32, 64) and y.dtype == torch.int64
    assert ds.names[0] == "synthetic_val_00000"


def test_bad_scene_arguments_raise():
    with pytest.raises(ValueError, match="domain must be one of"):
        generate_scenes("gta", "train", 1, height=32, width=64)
    with pytest.raises(ValueError, match="num_images must be positive"):
        StreetScenes("real", "train", num_images=0, cache=False)


def test_protocol_class_subsets():
    assert len(CLASSES_16) == 16 and not {9, 14, 16} & set(CLASSES_16)
    assert len(CLASSES_13) == 13 and not {3, 4, 5} & set(CLASSES_13)


# ------------------------------------------------------------------------------------------- fabricated trees
def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _rgb(h: int = 4, w: int = 6) -> np.ndarray:
    return np.full((h, w, 3), 100, np.uint8)


IDS = np.array([[7, 8, 26, 0, 33, 31]] * 4, dtype=np.uint8)  # road, sidewalk, car, unlabeled, bicycle, train


@pytest.mark.quick
def test_gta5_maps_cityscapes_label_ids_to_train_ids(tmp_path):
    _png(tmp_path / "images" / "00001.png", _rgb())
    _png(tmp_path / "labels" / "00001.png", IDS)
    ds = gta5(tmp_path)
    x, y = ds[0]
    assert x.shape == (3, 4, 6)
    assert y[0].tolist() == [0, 1, 13, 255, 18, 16]
    ds2 = gta5(tmp_path, size=(8, 12))
    assert ds2[0][1].shape == (8, 12) and set(ds2[0][1].unique().tolist()) == {0, 1, 13, 255, 18, 16}


def test_synthia_maps_its_ids_and_reads_16bit(tmp_path):
    ids = np.array([[3, 4, 2, 21, 1, 8, 13, 0]] * 2, dtype=np.uint16)
    _png(tmp_path / "RGB" / "0000001.png", _rgb(2, 8))
    (tmp_path / "GT" / "LABELS").mkdir(parents=True)
    Image.fromarray(ids).save(tmp_path / "GT" / "LABELS" / "0000001.png")  # 16-bit grey PNG
    y = synthia(tmp_path)[0][1]
    assert y[0].tolist() == [0, 1, 2, 3, 10, 13, 255, 255]


def test_cityscapes_pairs_nested_city_folders(tmp_path):
    for split in ("train", "val"):
        _png(tmp_path / "leftImg8bit" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png", _rgb())
        _png(tmp_path / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_labelIds.png", IDS)
    ds = cityscapes(tmp_path, "val")
    assert len(ds) == 1 and ds.names == ["leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png"]
    assert ds[0][1][0].tolist() == [0, 1, 13, 255, 18, 16]


@pytest.mark.quick
def test_real_loader_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"GTA5 root: directory .*missing does not exist"):
        gta5(tmp_path / "missing")
    # unknown label id
    _png(tmp_path / "g" / "images" / "a.png", _rgb())
    bad = IDS.copy()
    bad[0, 0] = 40
    _png(tmp_path / "g" / "labels" / "a.png", bad)
    with pytest.raises(DatasetError, match=r"labels/a\.png contains unknown label ids \[40\]"):
        gta5(tmp_path / "g")[0]
    # missing pair
    _png(tmp_path / "g" / "images" / "b.png", _rgb())
    with pytest.raises(DatasetError, match=r"images/b\.png has no label file"):
        gta5(tmp_path / "g")
    # size mismatch
    _png(tmp_path / "h" / "images" / "a.png", _rgb(5, 6))
    _png(tmp_path / "h" / "labels" / "a.png", IDS)
    with pytest.raises(DatasetError, match=r"images/a\.png is 5×6 but its label .*a\.png is 4×6"):
        gta5(tmp_path / "h")[0]
    # empty split
    (tmp_path / "cs" / "leftImg8bit" / "val").mkdir(parents=True)
    (tmp_path / "cs" / "gtFine" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError, match="split 'val' is empty"):
        cityscapes(tmp_path / "cs", "val")
    with pytest.raises(DatasetError, match=r"split 'train'.*does not exist"):
        cityscapes(tmp_path / "cs", "train")
