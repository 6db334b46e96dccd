"""auformer: AUFormer facial Action Unit detection (ECCV 2024), reference implementation."""

__version__ = "0.1.0"
