"""The frozen timm ViT: creation, its weights (a file, the Hugging Face cache or hub, synthetic or random), freezing.

``weights`` is a local file (timm-format ``.safetensors``, ``.pth``/``.bin``/``.pt``
read with ``weights_only=True``, or the original ViT ``.npz``), ``"hub"`` (the timm
tag's file from the Hugging Face cache or hub, see ``hub.py``), ``"synthetic"`` (the
small synthetic-face ViT shipped in ``auformer/assets``) or ``"random"`` (timm's random
init; asked for by name, so that no run trains adapters on a random ViT by accident).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer, _load_weights, checkpoint_filter_fn

from auformer.errors import AUFormerError

SYNTHETIC_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "synthetic_vit.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin", ".pt", ".npz")
# Classifier keys of a weight file that the headless (num_classes=0) backbone does not have.
CLASSIFIER_PREFIXES = ("head.", "fc_norm.", "pre_logits.")
# The timm Block attributes AUFormer wraps; other block types (parallel, res-post) are refused.
BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


WEIGHT_SOURCES = ("hub", "synthetic", "random")  # the names backbone_weights takes besides a file path


def resolve_weights(weights: str, backbone: str | None = None) -> str:
    """The weight file to load (``"random"`` stays as is): ``"synthetic"`` -> the packaged file,
    ``"hub"`` -> the timm tag ``backbone``'s file in the Hugging Face cache (downloaded if needed).

    Fails with one line when the file does not exist or cannot be had.
    """
    if weights == "random":
        return weights
    if weights == "hub":
        if backbone is None:
            raise AUFormerError("backbone_weights 'hub' needs the timm tag of the backbone")
        from auformer.model.hub import hub_weights

        return str(hub_weights(backbone))
    path = SYNTHETIC_WEIGHTS if weights == "synthetic" else Path(weights).expanduser()
    if not path.is_file():
        if weights == "synthetic":
            raise FileNotFoundError(
                f"the synthetic backbone asset is missing: {path} (reinstall auformer or re-run its pre-training)"
            )
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise AUFormerError(f"{path}: unsupported backbone weights format; expected one of {', '.join(WEIGHT_SUFFIXES)}")
    return str(path)


def _short(keys: list[str], limit: int = 5) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def describe_mismatch(
    expected: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], ignore_unexpected: tuple[str, ...] = ()
) -> str:
    """One line listing missing, unexpected and wrongly shaped keys of ``loaded``; empty when it fits."""
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(k for k in set(loaded) - set(expected) if not k.startswith(ignore_unexpected))
    mismatched = sorted(
        f"{k} {tuple(loaded[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(loaded)
        if loaded[k].shape != expected[k].shape
    )
    problems = [
        (label, keys)
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
        if keys
    ]
    return "; ".join(f"{label}: {_short(keys)}" for label, keys in problems)


def load_backbone_weights(model: VisionTransformer, path: str) -> None:
    """Load a local weight file into ``model``; one-line ValueError naming the file and the keys that do not fit."""
    name = model.pretrained_cfg.get("architecture", type(model).__name__)
    if path.endswith(".npz"):
        try:
            _load_weights(model, path)  # timm's converter for the original JAX ViT checkpoints
        except (KeyError, ValueError, RuntimeError) as error:
            raise AUFormerError(f"{path}: not an original-ViT .npz that fits {name}: {error}") from None
        return
    try:
        state_dict = timm.models.load_state_dict(path, use_ema=False, weights_only=True)
    except Exception as error:  # safetensors / pickle errors have many types; all mean "unreadable file"
        raise AUFormerError(f"{path}: cannot read backbone weights: {error}") from None
    state_dict = checkpoint_filter_fn(state_dict, model)  # format conversions + pos-embed resampling
    own = model.state_dict()
    mismatch = describe_mismatch(own, state_dict, ignore_unexpected=CLASSIFIER_PREFIXES)
    if mismatch:
        raise AUFormerError(f"{path} does not fit backbone {name}: {mismatch}")
    model.load_state_dict({k: state_dict[k] for k in own})


def create_backbone(name: str, weights: str = "random", img_size: int = 224, **kwargs) -> VisionTransformer:
    """A frozen, headless timm ViT (``num_classes=0``) in eval mode.

    ``kwargs`` go to ``timm.create_model`` (e.g. ``patch_size``, ``embed_dim``,
    ``depth``, ``num_heads`` for tiny test models).
    """
    weights = resolve_weights(weights, name)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size, **kwargs)
    except RuntimeError as error:
        if "Unknown model" not in str(error):
            raise
        raise AUFormerError(f"unknown timm model {name!r}; list ViTs with timm.list_models('vit_*')") from None
    except TypeError as error:  # a non-ViT family (no img_size) or a wrong backbone_kwargs key
        raise AUFormerError(
            f"timm.create_model({name!r}) failed: {error}; AUFormer needs a timm "
            "VisionTransformer, check the name and backbone_kwargs"
        ) from None
    if not isinstance(model, VisionTransformer):
        raise AUFormerError(f"backbone {name!r} is a {type(model).__name__}, not a timm VisionTransformer")
    block = model.blocks[0]
    if not all(hasattr(block, part) for part in BLOCK_PARTS):
        raise AUFormerError(f"backbone {name!r} uses {type(block).__name__} blocks; AUFormer needs timm's pre-norm Block")
    if weights != "random":
        load_backbone_weights(model, weights)
    model.requires_grad_(False)
    return model.eval()


def weights_source(weights: str) -> str:
    """How a checkpoint records the backbone weights: ``"hub"``, ``"synthetic"``, ``"random"`` or an absolute path."""
    if not isinstance(weights, str):
        raise AUFormerError(
            f"backbone_weights {weights!r} is not a weight source: pass a file path or one of "
            f"{', '.join(WEIGHT_SOURCES)} (a random backbone is asked for as 'random')"
        )
    if weights in WEIGHT_SOURCES:
        return weights
    return str(Path(weights).expanduser().resolve())
