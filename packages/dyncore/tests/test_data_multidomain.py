"""The multi-domain task set: label spaces, source task separate from the targets, determinism, bad names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dyncore.data import (
    MULTIDOMAIN_SIZES,
    MULTIDOMAIN_TASKS,
    SOURCE_TASK,
    DataError,
    EmbeddedDataset,
    multidomain_classes,
    multidomain_task,
    multidomain_tasks,
)

Splits = dict[str, tuple[EmbeddedDataset, EmbeddedDataset]]
N = 60


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Splits:
    root = tmp_path_factory.mktemp("cache")
    return {
        t: (multidomain_task(t, "train", root=root, limit=N), multidomain_task(t, "test", root=root, limit=N))
        for t in (SOURCE_TASK, *MULTIDOMAIN_TASKS)
    }


@pytest.mark.quick
def test_task_set_layout() -> None:
    assert multidomain_tasks() == MULTIDOMAIN_TASKS and len(MULTIDOMAIN_TASKS) >= 5
    assert SOURCE_TASK not in MULTIDOMAIN_TASKS
    sizes = {t: len(multidomain_classes(t)) for t in (SOURCE_TASK, *MULTIDOMAIN_TASKS)}
    assert sizes == {
        "glyphs": 33,
        "digits": 10,
        "lowres_digits": 10,
        "letters": 26,
        "textures": 12,
        "shapes": 8,
        "faces": 2,
    }
    source = set(multidomain_classes(SOURCE_TASK))
    for t in MULTIDOMAIN_TASKS:  # the pretraining task shares no class with any target task
        assert not source & set(multidomain_classes(t)), t
    assert len({tuple(multidomain_classes(t)) for t in MULTIDOMAIN_TASKS}) == len(MULTIDOMAIN_TASKS) - 1  # digits twice


@pytest.mark.quick
def test_tasks_shapes_and_labels(tasks: Splits) -> None:
    for name, (train, test) in tasks.items():
        k = len(multidomain_classes(name))
        for ds in (train, test):
            n = min(N, MULTIDOMAIN_SIZES[name][ds is test])
            assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8, name
            assert ds.classes == list(multidomain_classes(name)) and ds.num_classes == k
            assert int(ds.labels.min()) >= 0 and int(ds.labels.max()) < k
        if name not in ("digits", "lowres_digits", "faces"):  # rendered tasks are class-balanced
            assert int(train.labels.bincount(minlength=k).max() - train.labels.bincount(minlength=k).min()) <= 1, name
        assert float(train.images.float().std()) > 10, f"{name} images are nearly constant"


def test_deterministic_and_seed_dependent(tmp_path: Path, tasks: Splits) -> None:
    for t in ("letters", "shapes", "glyphs", "textures"):
        assert multidomain_task(t, "train", root=tmp_path, limit=N).content_hash == tasks[t][0].content_hash, t
    assert (
        multidomain_task("shapes", "train", root=tmp_path, limit=N, seed=3).content_hash
        != tasks["shapes"][0].content_hash
    )


def test_faces_split_by_source_image(tasks: Splits) -> None:
    train, test = tasks["faces"]
    assert sorted(test.labels.bincount().tolist()) == [25, 25]
    assert set(train.labels.tolist()) == {0, 1}


def test_unknown_task_lists_valid_ones() -> None:
    with pytest.raises(DataError, match=r"unknown multi-domain task 'cifar'; valid: digits, lowres_digits, letters"):
        multidomain_task("cifar")
    with pytest.raises(DataError, match=r"unknown multi-domain task 'Letters'.*glyphs"):
        multidomain_classes("Letters")
    with pytest.raises(DataError, match=r"unknown split 'valid'"):
        multidomain_task("letters", "valid")
