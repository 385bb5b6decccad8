"""bdl: Bidirectional Learning for domain adaptation of semantic segmentation (thesis Chapter 5, Li et al. CVPR 2019).

- :mod:`bdl.data`         embedded street scenes (synthetic → real) and GTA5 / SYNTHIA / Cityscapes loaders
- :mod:`bdl.models`       segmentation model M: DeepLab-V2 (ASPP-sum), FCN-8s, smp models — ``build_segmenter``
- :mod:`bdl.translation`  translation model F, F⁻¹: CycleGAN + BDL perceptual loss (Eqs. 5.2, 5.4–5.6)
- :mod:`bdl.adaptation`   output-space discriminator, adversarial / segmentation / pseudo-label losses (Eqs. 5.1–5.9)
- :mod:`bdl.pseudo`       max-probability-threshold pseudo labels with streamed statistics (Section 5.4.3)
- :mod:`bdl.pipeline`     Algorithm 2 as one resumable program (``run_bdl``)
"""

from __future__ import annotations

from bdl.adaptation import AdaptationConfig, OutputDiscriminator, adversarial_loss, pseudo_label_loss, segmentation_loss
from bdl.evaluation import SegmentationScores, evaluate, stage_table
from bdl.models import build_segmenter, list_segmenters
from bdl.pipeline import BDLConfig, BDLPipeline, run_bdl
from bdl.pseudo import ConfidenceHistogram, PseudoLabeledTarget, PseudoLabelMismatchError, generate_pseudo_labels
from bdl.translation import CycleGAN, CycleGANConfig, PerceptualLoss

__version__ = "0.1.0"

__all__ = [
    "AdaptationConfig",
    "BDLConfig",
    "BDLPipeline",
    "ConfidenceHistogram",
    "CycleGAN",
    "CycleGANConfig",
    "OutputDiscriminator",
    "PerceptualLoss",
    "PseudoLabelMismatchError",
    "PseudoLabeledTarget",
    "SegmentationScores",
    "adversarial_loss",
    "build_segmenter",
    "evaluate",
    "generate_pseudo_labels",
    "list_segmenters",
    "pseudo_label_loss",
    "run_bdl",
    "segmentation_loss",
    "stage_table",
]
