"""auformer: AUFormer facial Action Unit detection (ECCV 2024), reference implementation."""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING

try:  # one source of truth: the version in pyproject.toml, as installed
    __version__ = importlib.metadata.version("auformer")
except importlib.metadata.PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
    __version__ = "0+unknown"

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
    # `X as X` marks a re-export for linters (the names reach __all__ through _LAZY)
    from auformer.detect import Detector as Detector
    from auformer.model.auformer import AUFormerOutput as AUFormerOutput
    from auformer.model.auformer import build_model as build_model
    from auformer.model.checkpoint import load_checkpoint as load_checkpoint
    from auformer.model.checkpoint import save_checkpoint as save_checkpoint

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'auformer' has no attribute {name!r}")
