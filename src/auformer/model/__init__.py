"""The AUFormer model: frozen timm ViT backbone, MoKE expert groups, heads, checkpoints."""

from auformer.model.auformer import AUFormer, AUFormerOutput, build_model

__all__ = ["AUFormer", "AUFormerOutput", "build_model"]
