"""auformer: AUFormer facial Action Unit detection (ECCV 2024), reference implementation."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public API, imported on first use so that `import auformer` (and `auformer --help`) stays fast
# without pulling in torch and timm.
_LAZY = {
    "build_model": "auformer.model.auformer",
    "AUFormerOutput": "auformer.model.auformer",
    "save_checkpoint": "auformer.model.checkpoint",
    "load_checkpoint": "auformer.model.checkpoint",
    "Detector": "auformer.detect",
}

if TYPE_CHECKING:
    from auformer.model.auformer import AUFormerOutput, build_model
    from auformer.model.checkpoint import load_checkpoint, save_checkpoint
    from auformer.detect import Detector

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'auformer' has no attribute {name!r}")
