"""The frozen timm ViT: creation, its weights (a file, the Hugging Face cache or hub, synthetic or random), freezing.

``weights`` is a local file (timm-format ``.safetensors``, ``.pth``/``.bin``/``.pt``
read with ``weights_only=True``, or the original ViT ``.npz``), ``"hub"`` (the timm
tag's file from the Hugging Face cache or hub, see ``weights.py``), ``"synthetic"`` (the
small synthetic-face ViT shipped in ``auformer/assets``) or ``"random"`` (timm's random
init; asked for by name, so that no run trains adapters on a random ViT by accident).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer, _load_weights, checkpoint_filter_fn

from auformer.config.rules import WEIGHT_SOURCES, WEIGHT_SUFFIXES, timm_kwargs_problem
from auformer.errors import AUFormerError
from auformer.files import resolve

SYNTHETIC_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "synthetic_vit.safetensors"
# Classifier keys of a weight file that the headless (num_classes=0) backbone does not have.
CLASSIFIER_PREFIXES = ("head.", "fc_norm.", "pre_logits.")
# The timm Block attributes AUFormer wraps; other block types (parallel, res-post) are refused.
BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


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
        from auformer.model.weights import hub_weights

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


MAX_TOKENS = 16_384  # patch tokens (a 128 x 128 grid): attention memory grows with their square
MAX_BACKBONE_VALUES = 2_000_000_000  # parameters: about 8 GB in float32 (ViT-g/14 has 1.0 G)


@dataclass(frozen=True)
class Geometry:
    """The shape of a timm ViT, known before it is built (`backbone_geometry`)."""

    embed_dim: int  # token width D
    depth: int  # blocks
    grid_size: tuple[int, int]  # patch grid (H/p, W/p)
    values: int  # parameters of the backbone


def _timm_vit(name: str, img_size: int, kwargs: dict, skip_init: bool = False) -> VisionTransformer:
    """``timm.create_model`` for a headless ViT; a bad name or argument is one line naming it.

    ``skip_init``: no weight init (timm's ``weight_init="skip"``), for a shape-only build on the meta device.
    """
    try:
        skip = {"weight_init": "skip"} if skip_init else {}
        model = timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size, **{**kwargs, **skip})
    except TypeError as error:
        if skip_init and "weight_init" in str(error):  # another family (no such argument): refused below
            return _timm_vit(name, img_size, kwargs)
        raise AUFormerError(
            f"timm.create_model({name!r}) failed: TypeError: {error}; AUFormer needs a timm "
            "VisionTransformer, check the name and backbone_kwargs"
        ) from None
    except RuntimeError as error:
        if "Unknown model" not in str(error):
            raise
        raise AUFormerError(f"unknown timm model {name!r}; list ViTs with timm.list_models('vit_*')") from None
    except (AssertionError, KeyError, ValueError) as error:  # a wrong or bad kwarg
        raise AUFormerError(
            f"timm.create_model({name!r}) failed: {type(error).__name__}: {error}; AUFormer needs a timm "
            "VisionTransformer, check the name and backbone_kwargs"
        ) from None
    if not isinstance(model, VisionTransformer):
        raise AUFormerError(f"backbone {name!r} is a {type(model).__name__}, not a timm VisionTransformer")
    block = model.blocks[0] if len(model.blocks) else None
    if block is None or not all(hasattr(block, part) for part in BLOCK_PARTS):
        raise AUFormerError(f"backbone {name!r} uses {type(block).__name__} blocks; AUFormer needs timm's pre-norm Block")
    return model


def backbone_geometry(name: str, img_size: int = 224, kwargs: dict | None = None) -> Geometry:
    """What ``create_backbone(name, img_size=img_size, kwargs=kwargs)`` would build, checked before it is built.

    The ViT is built on the meta device without weight init (no memory, milliseconds for ViT-B),
    so a description asking for a huge width, depth or input fails here in one line instead of
    allocating: at most ``MAX_BACKBONE_VALUES`` parameters and ``MAX_TOKENS`` patches, an input
    size that is a multiple of the patch size, and a CLS token (the heads read it).
    """
    kwargs = kwargs or {}
    problem = timm_kwargs_problem(kwargs)
    if problem:
        raise AUFormerError(f"backbone_kwargs: {problem}")
    with torch.device("meta"):
        model = _timm_vit(name, img_size, kwargs, skip_init=True)
    patch, grid = tuple(model.patch_embed.patch_size), tuple(model.patch_embed.grid_size)
    if img_size % patch[0] or img_size % patch[1] or min(grid) < 1:
        raise AUFormerError(f"img_size {img_size} is not a multiple of {name}'s patch size {patch[0]}")
    if grid[0] * grid[1] > MAX_TOKENS:
        raise AUFormerError(f"img_size {img_size} gives {grid[0] * grid[1]} patches of {patch[0]} px; at most {MAX_TOKENS}")
    if model.cls_token is None:
        raise AUFormerError(f"backbone {name!r} with {kwargs} has no CLS token; AUFormer's heads read it")
    values = sum(p.numel() for p in model.parameters())
    if values > MAX_BACKBONE_VALUES:
        raise AUFormerError(f"backbone {name!r} with {kwargs} has {values:,} parameters; at most {MAX_BACKBONE_VALUES:,}")
    return Geometry(model.embed_dim, len(model.blocks), grid, values)


def create_backbone(name: str, weights: str = "random", img_size: int = 224, kwargs: dict | None = None) -> VisionTransformer:
    """A frozen, headless timm ViT (``num_classes=0``) in eval mode.

    ``kwargs`` (a dict) go to ``timm.create_model`` (e.g. ``patch_size``, ``embed_dim``,
    ``depth``, ``num_heads`` for tiny test models); `build_model` checks them first
    (`backbone_geometry`).
    """
    weights = resolve_weights(weights, name)
    model = _timm_vit(name, img_size, kwargs or {})
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
    return str(resolve(Path(weights).expanduser()))  # a link loop: an OSError's one line, not a RuntimeError
