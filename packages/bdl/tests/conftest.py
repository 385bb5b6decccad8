from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_scenes(tmp_path_factory: pytest.TempPathFactory):
    """(source, target, val) embedded street scenes at 32×64, 8/8/4 images, cached in a temp dir."""
    from bdl.data import StreetScenes

    root = tmp_path_factory.mktemp("cache")
    kw = {"size": (32, 64), "seed": 0, "root": root}
    return (
        StreetScenes("synthetic", "train", num_images=8, **kw),
        StreetScenes("real", "train", num_images=8, **kw),
        StreetScenes("real", "val", num_images=4, **kw),
    )


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
