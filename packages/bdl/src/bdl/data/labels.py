"""The 19 Cityscapes train ids and the label maps of GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes (spec/data.md)."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

#: Cityscapes train-id order (thesis Table 5.2 column order).
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "light",
    "sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
NUM_CLASSES = len(CITYSCAPES_CLASSES)

#: SYNTHIA 16-class protocol: the 19 classes without terrain, truck and train.
CLASSES_16: tuple[int, ...] = tuple(i for i in range(NUM_CLASSES) if i not in (9, 14, 16))
#: SYNTHIA 13-class protocol: the 16 classes without wall, fence and pole.
CLASSES_13: tuple[int, ...] = tuple(i for i in CLASSES_16 if i not in (3, 4, 5))

#: Cityscapes palette (train-id order), used to colour predictions and the synthetic domain.
CITYSCAPES_PALETTE: np.ndarray = np.array(
    [
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ],
    dtype=np.uint8,
)

#: Cityscapes (and GTA5) labelId → trainId; every other valid id maps to 255.
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
#: Highest label id that may appear in a Cityscapes/GTA5 labelIds map (34 classes, ids 0..33).
CITYSCAPES_MAX_ID = 33

#: SYNTHIA-RAND-CITYSCAPES (label ids mapped to Cityscapes classes) → trainId.
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    3: 0,
    4: 1,
    2: 2,
    21: 3,
    5: 4,
    7: 5,
    15: 6,
    9: 7,
    6: 8,
    16: 9,
    1: 10,
    10: 11,
    17: 12,
    8: 13,
    18: 14,
    19: 15,
    20: 16,
    12: 17,
    11: 18,
}
#: SYNTHIA ids 0..22 (void, sky, …, lanemarking) are valid; 13 parking-slot, 14 road-work, 22 lanemarking → 255.
SYNTHIA_MAX_ID = 22


def make_lut(mapping: dict[int, int], max_id: int) -> np.ndarray:
    """A 65536-entry look-up table: valid ids → train id or 255, ids > ``max_id`` → -1 (unknown)."""
    lut = np.full(65536, -1, dtype=np.int32)
    lut[: max_id + 1] = IGNORE_INDEX
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) train ids (255 → black) → (H, W, 3) uint8 Cityscapes colours."""
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    valid = label < NUM_CLASSES
    out[valid] = CITYSCAPES_PALETTE[label[valid]]
    return out
