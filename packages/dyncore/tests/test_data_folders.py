"""Real-dataset loaders on tiny fabricated trees: ImageFolder, ImageList (DomainNet lists), domainnet(); each bad
input is rejected with an error naming the file/line/domain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dyncore.data import DataError, ImageList, domainnet, domainnet_sources, image_folder


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 5, 3), value, np.uint8)).save(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/{clipart,sketch}/{cat,dog}/i.png + clipart_{train,test}.txt, sketch_train.txt."""
    for domain in ("clipart", "sketch"):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(3):
                _png(tmp_path / domain / cls / f"{i}.png", 40 * c + i)
    for domain, split, idx in (("clipart", "train", (0, 1)), ("clipart", "test", (2,)), ("sketch", "train", (0, 1, 2))):
        lines = [f"{domain}/{cls}/{i}.png {c}" for c, cls in enumerate(("cat", "dog")) for i in idx]
        (tmp_path / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.mark.quick
def test_image_folder_loads_and_rejects_bad_trees(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    ds = image_folder(tree / "clipart")
    assert ds.classes == ["cat", "dog"] and len(ds) == 6
    img, label = ds[4]
    assert img.size == (5, 6) and label == 1 and img.mode == "RGB"
    with pytest.raises(FileNotFoundError, match=r"image folder root '.*nowhere' does not exist"):
        image_folder(tree / "nowhere")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DataError, match="has no class sub-folders"):
        image_folder(empty)
    (empty / "bird").mkdir()
    (empty / "bird" / "notes.txt").write_text("x")
    _png(empty / "cat" / "0.png", 1)
    with pytest.raises(DataError, match=r"class folder\(s\) \['bird'\] contain no image"):
        image_folder(empty)


@pytest.mark.quick
def test_image_list_reads_domainnet_lines(tree: Path) -> None:
    ds = ImageList(tree, "clipart_train.txt", num_classes=2)
    assert len(ds) == 4 and ds.targets == [0, 0, 1, 1] and ds.num_classes == 2
    img, label = ds[2]
    assert label == 1 and np.asarray(img)[0, 0, 0] == 40
    ds2 = ImageList(tree, tree / "sketch_train.txt", transform=lambda im: np.asarray(im).mean())
    assert ds2[0][0] == 0.0 and ds2.classes == ["0", "1"]


def _list(tree: Path, *lines: str) -> Path:
    path = tree / "bad.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_image_list_rejects_each_bad_input(tree: Path) -> None:
    ok = "clipart/cat/0.png 0"
    with pytest.raises(FileNotFoundError, match=r"image list root '.*missing' does not exist"):
        ImageList(tree / "missing", "clipart_train.txt")
    with pytest.raises(FileNotFoundError, match=r"image list file '.*nolist.txt' does not exist"):
        ImageList(tree, "nolist.txt")
    with pytest.raises(
        DataError, match=r"bad\.txt:3: cannot parse 'clipart/cat/1.png'; expected 'relative/path label'"
    ):
        ImageList(tree, _list(tree, ok, "# comment", "clipart/cat/1.png"))
    with pytest.raises(DataError, match=r"bad\.txt:2: label 'dog' is not an integer"):
        ImageList(tree, _list(tree, ok, "clipart/dog/0.png dog"))
    with pytest.raises(FileNotFoundError, match=r"bad\.txt:2: image '.*clipart/cow/0\.png' does not exist"):
        ImageList(tree, _list(tree, ok, "clipart/cow/0.png 1"))
    with pytest.raises(DataError, match=r"bad\.txt:1: label 2 out of range \[0, 2\)"):
        ImageList(tree, _list(tree, "clipart/dog/0.png 2"), num_classes=2)
    with pytest.raises(DataError, match=r"bad\.txt:1: label -1 out of range"):
        ImageList(tree, _list(tree, "clipart/dog/0.png -1"))
    with pytest.raises(DataError, match=r"image list '.*bad\.txt' is empty .*empty split"):
        ImageList(tree, _list(tree, "", "# nothing here"))


@pytest.mark.quick
def test_domainnet_and_its_errors(tree: Path) -> None:
    test = domainnet(tree, "clipart", "test", num_classes=2)
    assert len(test) == 2 and test.targets == [0, 1]
    assert len(domainnet(tree, "sketch", "train")) == 6
    with pytest.raises(DataError, match=r"unknown DomainNet domain 'clip_art'; valid: clipart, infograph, painting"):
        domainnet(tree, "clip_art")
    with pytest.raises(DataError, match=r"unknown DomainNet split 'val'"):
        domainnet(tree, "clipart", "val")
    with pytest.raises(FileNotFoundError, match=r"DomainNet list '.*real_train\.txt' does not exist \(lists present: "):
        domainnet(tree, "real", "train")
    with pytest.raises(FileNotFoundError, match=r"DomainNet root '.*absent' does not exist"):
        domainnet(tree / "absent", "clipart")
    (tree / "sketch_test.txt").write_text("\n")
    with pytest.raises(DataError, match=r"sketch_test\.txt' is empty"):
        domainnet(tree, "sketch", "test")


def test_domainnet_sources_pool_other_domains(tree: Path) -> None:
    pooled = domainnet_sources(tree, "clipart", domains=("clipart", "sketch"), num_classes=2, with_domain=True)
    assert pooled.domains == ["sketch"] and len(pooled) == 6
    img, label, domain = pooled[5]
    assert img.size == (5, 6) and label == 1 and domain == 0
    with pytest.raises(DataError, match=r"unknown DomainNet target domain 'photo'; valid: clipart, sketch"):
        domainnet_sources(tree, "photo", domains=("clipart", "sketch"))
    with pytest.raises(FileNotFoundError, match=r"infograph_train\.txt' does not exist"):
        domainnet_sources(tree, "clipart")  # the other four default domains have no lists here
