"""``python -m dyncore.data``: gallery PNGs, export, generate, and a smoke run of the source-only experiment."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dyncore.data.__main__ import main
from dyncore.data.experiments import GapRow, format_gap_table, source_only_gap


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_gallery_writes_one_grid_per_group(root: Path, tmp_path: Path) -> None:
    argv = ["gallery", "--out", str(tmp_path), "--root", str(root), "--limit", "12", "--columns", "4"]
    assert main(argv) == 0
    for name, rows in (("digits5.png", 5), ("multidomain.png", 7)):
        with Image.open(tmp_path / name) as img:
            assert img.mode == "RGB" and img.width == 110 + 4 * 66 and img.height == rows * (64 + 16)


def test_export_and_generate_commands(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "multidomain/shapes", "--split", "test", "--out", str(tmp_path), "--root", str(root),
                 "--limit", "16"]) == 0  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["circle", "square", "triangle", "pentagon", "hexagon", "star", "cross", "ring"]
    )
    assert len(list(tmp_path.rglob("*.png"))) == 16
    assert main(["generate", "--root", str(root), "--limit", "12"]) == 0
    out = capsys.readouterr().out
    assert "digits5/svhn" in out and "multidomain/glyphs" in out and "total" in out
    assert main(["export", "cifar/cats", "--out", str(tmp_path)]) == 2
    assert "dataset must be digits5/<domain> or multidomain/<task>, got 'cifar/cats'" in capsys.readouterr().err


def test_dyncore_gallery_command_delegates_here(root: Path, tmp_path: Path) -> None:
    from dyncore.cli import main as dyncore_main

    with pytest.raises(SystemExit) as exc:
        dyncore_main(["gallery", "--out", str(tmp_path), "--root", str(root), "--limit", "12", "--columns", "2"])
    assert exc.value.code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits5.png", "multidomain.png"]


def test_source_only_gap_smoke(root: Path) -> None:
    rows = source_only_gap(targets=("usps",), root=root, limit=40, per_domain=40, epochs=1, batch_size=16, log=None)
    assert len(rows) == 1 and isinstance(rows[0], GapRow)
    r = rows[0]
    assert r.sources == ("mnist", "mnistm", "syn", "svhn")
    assert all(0.0 <= v <= 100.0 for v in (r.source_test_acc, r.target_acc, r.oracle_acc))
    assert r.gap == pytest.approx(r.oracle_acc - r.target_acc)
    assert "| usps |" in format_gap_table(rows)
