"""covnorm: efficient multi-domain learning by Covariance Normalization (thesis Chapter 2).

A frozen backbone gets residual adapters T = B2(I + A·B1) after selected convs (:func:`inject`), one branch per
domain (:class:`MultiDomainModel`, ``set_domain(name)``). After A is fine-tuned, streaming statistics of A's input and
output (:func:`collect_statistics`) give PCAs whose explained variance picks k_x, k_y per site; A is replaced by the
CovNorm transform ỹ = C̃_y M W̃_x (x − μ_x) + μ_y (Eq. 2.8, :func:`apply_covnorm` / :func:`apply_joint_covnorm`),
M is fine-tuned and folded into the larger factor (:func:`absorb`).
"""

from covnorm.accounting import TaskParameters, decathlon_score, effective_dimension_ratio, task_parameters
from covnorm.baselines import full_finetune_copy, geometric_rank, inject_lora, to_low_rank, to_pca_fta
from covnorm.layers import (
    AdapterBranch,
    CovNormConv1x1,
    LoRAConv2d,
    LowRankConv1x1,
    ResidualAdapter,
    UnknownDomainError,
)
from covnorm.models import (
    VGG16_SITES,
    MultiDomainModel,
    adapter_sites,
    frozen_parameter_count,
    inject,
    resnet26,
    resnet26_sites,
    small_vgg,
    vgg16_fcn,
    vgg16_sites,
)
from covnorm.stats import (
    DEFAULT_THRESHOLD,
    PCA,
    DegenerateStatisticsError,
    Moments,
    SequentialJointPCA,
    SiteStatistics,
    explained_variance,
    merge_pcas,
    select_components,
)
from covnorm.transform import (
    AbsorbError,
    CovNormReport,
    MissingStatisticsError,
    absorb,
    apply_covnorm,
    apply_joint_covnorm,
    apply_layout,
    collect_statistics,
    layout,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_THRESHOLD",
    "PCA",
    "VGG16_SITES",
    "AbsorbError",
    "AdapterBranch",
    "CovNormConv1x1",
    "CovNormReport",
    "DegenerateStatisticsError",
    "LoRAConv2d",
    "LowRankConv1x1",
    "MissingStatisticsError",
    "Moments",
    "MultiDomainModel",
    "ResidualAdapter",
    "SequentialJointPCA",
    "SiteStatistics",
    "TaskParameters",
    "UnknownDomainError",
    "absorb",
    "adapter_sites",
    "apply_covnorm",
    "apply_joint_covnorm",
    "apply_layout",
    "collect_statistics",
    "decathlon_score",
    "effective_dimension_ratio",
    "explained_variance",
    "frozen_parameter_count",
    "full_finetune_copy",
    "geometric_rank",
    "inject",
    "inject_lora",
    "layout",
    "merge_pcas",
    "resnet26",
    "resnet26_sites",
    "select_components",
    "small_vgg",
    "task_parameters",
    "to_low_rank",
    "to_pca_fta",
    "vgg16_fcn",
    "vgg16_sites",
]
