"""drt: Dynamic Residual Transfer for multi-source domain adaptation (thesis Chapter 6).

W(x) = W0 + ΔW(x) on every conv (Eq. 6.2): channel attention (Eq. 6.3), subspace routing (Eq. 6.4, default) or both
(Eq. 6.5); Digit-Five CNN and ResNet-50/101 backbones with static twins; alignment losses (source-only, DANN, ADDA,
MCD one-pass and three-step, M³SDA-β); the training loop with self-training and source-held-out model selection;
t-SNE analysis of the routing coefficients.

>>> import torch, drt
>>> model = drt.DomainAdaptationNet(drt.digit_cnn(width=0.25, dynamic=drt.DynamicResidualConfig()), num_classes=10)
>>> model.predict(torch.randn(2, 3, 32, 32))["ensemble"].shape
torch.Size([2, 10])
"""

from __future__ import annotations

from drt.defaults import BACKBONE_DEFAULTS, BackboneDefaults
from drt.layers import (
    DynamicResidualConfig,
    DynamicResidualConv2d,
    dynamic_residual_layers,
    set_apply_mode,
    tune_apply_mode,
)
from drt.losses import (
    AdversarialDiscriminativeLoss,
    ClassBalanceLoss,
    DomainAdversarialLoss,
    DomainDiscriminator,
    DomainLabelsRequiredError,
    GradientReversal,
    MCDConfig,
    MCDLoss,
    MomentMatchingLoss,
    classifier_discrepancy,
    per_source_cross_entropy,
)
from drt.models import (
    ClassifierHead,
    DigitFiveCNN,
    DomainAdaptationNet,
    DynamicResidualBottleneck,
    SourceClassifiers,
    convert_resnet,
    digit_cnn,
    drt_resnet50,
    drt_resnet101,
    resnet_backbone,
)
from drt.train import (
    CollapseCheck,
    DATask,
    DomainMismatchError,
    TrainConfig,
    TrainResult,
    collapse_report,
    digits5_task,
    domainnet_task,
    evaluate,
    mean_std,
    pseudo_labels,
    train,
    train_with_self_training,
)

__version__ = "0.1.0"

__all__ = [
    "BACKBONE_DEFAULTS",
    "AdversarialDiscriminativeLoss",
    "BackboneDefaults",
    "ClassBalanceLoss",
    "ClassifierHead",
    "CollapseCheck",
    "DATask",
    "DigitFiveCNN",
    "DomainAdaptationNet",
    "DomainAdversarialLoss",
    "DomainDiscriminator",
    "DomainLabelsRequiredError",
    "DomainMismatchError",
    "DynamicResidualBottleneck",
    "DynamicResidualConfig",
    "DynamicResidualConv2d",
    "GradientReversal",
    "MCDConfig",
    "MCDLoss",
    "MomentMatchingLoss",
    "SourceClassifiers",
    "TrainConfig",
    "TrainResult",
    "classifier_discrepancy",
    "collapse_report",
    "convert_resnet",
    "digit_cnn",
    "digits5_task",
    "domainnet_task",
    "drt_resnet50",
    "drt_resnet101",
    "dynamic_residual_layers",
    "evaluate",
    "mean_std",
    "per_source_cross_entropy",
    "pseudo_labels",
    "resnet_backbone",
    "set_apply_mode",
    "train",
    "train_with_self_training",
    "tune_apply_mode",
]
