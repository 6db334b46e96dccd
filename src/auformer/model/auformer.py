"""AUFormer: a frozen timm ViT with two MoKE groups per block, a main head and per-AU aux heads.

Per block ``l`` (SPEC section 1, eqs. 2-4; LN is the block's own pre-norm)::

    K_i^MHSA = MoKE_i^MHSA(LN1(X) + K_i^MLP(prev block))
    X'       = X + MHSA(LN1(X)) + mean_i K_i^MHSA
    K_i^MLP  = MoKE_i^MLP(LN2(X') + K_i^MHSA)
    X        = X' + MLP(LN2(X')) + mean_i K_i^MLP

Main head: final CLS token -> the ViT's own final norm -> Linear -> N logits.
Aux head: CLS output of expert i of the last group -> its own Linear -> 1 logit.
``task`` (``occurrence``, ``intensity``, ``both``) picks the heads: intensity heads
(0-5, `auformer.model.heads`) read the same two feature sets.

The same loop runs the comparison methods (``method``, see `petl.py`): their
branches replace the expert groups and read the tap of each sublayer their paper
names (its input LN(X), its output, or the stream X), LoRA hooks the frozen qkv
Linear, deep VPT inserts prompt tokens around each block, and ``full-finetune``
unfreezes the ViT and trains it in train mode (drop-path).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import timm.data
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from auformer.aus import parse_au_list
from auformer.errors import AUFormerError
from auformer.model.backbone import Geometry, backbone_geometry, create_backbone, weights_source
from auformer.model.heads import (
    TASKS,
    IntensityHeads,
    has_intensity,
    has_occurrence,
    per_expert,
)
from auformer.model.moke import MoKEGroup
from auformer.model.moke_fused import FusedMoKEGroup
from auformer.model.petl import EXPERT_METHODS, METHODS, DeepPrompts, LoRA, branch_input, check_lora_targets, side_branches

MOKE_IMPLEMENTATIONS: dict[str, type[MoKEGroup]] = {"reference": MoKEGroup, "fused": FusedMoKEGroup}
MAX_LEARNABLE_VALUES = 500_000_000  # experts/branches and heads (ViT-B with 12 AUs: 2.2 M); full fine-tuning aside


class AUFormerOutput(NamedTuple):
    """Model output (a NamedTuple, so DDP, ONNX export and tracing handle it as a tuple)."""

    logits: torch.Tensor | None  # (B, N) main head; None when task="intensity"
    aux_logits: torch.Tensor | None  # (B, N) per-AU projectors, None when aux_head=False or task="intensity"
    features: torch.Tensor  # (B, D) final CLS token after the ViT's norm (input of the main head)
    expert_features: torch.Tensor | None  # (B, E, D) CLS outputs of the last group's experts (E = N, or 1
    # without collaboration); None for methods without experts
    intensity: torch.Tensor | None = None  # (B, N) in [0, 5]; None when task="occurrence"
    aux_intensity: torch.Tensor | None = None  # (B, N) per-expert intensities; None without aux or intensity heads


class AUFormer(nn.Module):
    """The frozen ``backbone`` plus learnable MoKE groups and heads. Build it with `build_model`."""

    def __init__(
        self,
        backbone: VisionTransformer,
        num_aus: int,
        *,
        moke: str = "fused",
        collaborate: bool = True,
        aux_head: bool = True,
        task: str = "occurrence",
        aus: list[int] | None = None,
        config: dict | None = None,
        method: str = "auformer",
        method_options: dict | None = None,
        recompute: bool = True,
        **expert_options,
    ) -> None:
        """``expert_options``: ``d``, ``dilations``, ``ca_size``, ``use_mrf``, ``use_ca``, ``dropout``, ``scale`` (see `Expert`).

        ``method_options``: ``adapter_bottleneck``, ``adapter_scale``, ``lora_rank``, ``lora_alpha``,
        ``lora_targets``, ``vpt_prompts`` (`build_model` passes them all). Methods without experts
        get no aux head.
        ``recompute``: fused groups recompute their d-space ops in backward (less memory, slower steps).
        """
        super().__init__()
        self.backbone = backbone
        self.num_aus = num_aus
        self.aus = aus  # FACS numbers of the N outputs, or None (index names)
        self.config = config or {}  # every build_model argument, JSON-able: build_model(**config) rebuilds
        self.method = method
        options = method_options or {}
        dim, depth = backbone.embed_dim, len(backbone.blocks)
        if method == "convpass":  # Convpass = one expert per group without MRF and CA, no carry, no aux head
            expert_options.update(use_mrf=False, use_ca=False)
            collaborate = False
        self.collaborate = collaborate
        if method in EXPERT_METHODS:
            group_class = MOKE_IMPLEMENTATIONS[moke]
            grid = dict(grid_size=tuple(backbone.patch_embed.grid_size), num_prefix_tokens=backbone.num_prefix_tokens)
            num_experts = num_aus if collaborate else 1  # "no Collab." ablation: one shared expert per group
            self.attn_groups = nn.ModuleList(group_class(dim, num_experts, **grid, **expert_options) for _ in range(depth))
            self.mlp_groups = nn.ModuleList(group_class(dim, num_experts, **grid, **expert_options) for _ in range(depth))
            for group in (*self.attn_groups, *self.mlp_groups):
                group.recompute = recompute  # read by the fused groups; the reference keeps every activation
        else:
            self.attn_groups, self.mlp_groups = side_branches(
                method, dim, depth, options.get("adapter_bottleneck"), options.get("adapter_scale"), expert_options["dropout"]
            )
        self.branch_input = branch_input(method)  # index into (X, LN(X), sublayer output), see forward
        self.lora = None
        if method == "lora":
            self.lora = LoRA(dim, depth, options["lora_rank"], options["lora_alpha"], options["lora_targets"])
            self.lora.attach(backbone)
        self.prompts = None
        if method == "vpt":
            patch_area = math.prod(backbone.patch_embed.patch_size)
            self.prompts = DeepPrompts(dim, depth, options["vpt_prompts"], backbone.num_prefix_tokens, patch_area)
        if method == "full-finetune":
            backbone.requires_grad_(True)
        self.task = task
        occurrence, aux_head = has_occurrence(task), aux_head and method == "auformer"
        self.head = nn.Linear(dim, num_aus) if occurrence else None
        # N per-AU Linear(D, 1) projectors stored as one (N, D) weight; see heads.per_expert.
        self.aux_head = nn.Linear(dim, num_aus) if aux_head and occurrence else None
        self.intensity = IntensityHeads(dim, num_aus, aux_head) if has_intensity(task) else None
        self.data_config = self._data_config(backbone)

    @staticmethod
    def _data_config(backbone: VisionTransformer) -> dict:
        """Normalisation and input size from timm's pretrained config, at the model's own input size."""
        data_config = timm.data.resolve_data_config({}, model=backbone)
        data_config["input_size"] = (3, *backbone.patch_embed.img_size)
        return data_config

    def train(self, mode: bool = True) -> AUFormer:
        """Train the experts and heads; a frozen backbone stays in eval mode (its dropout/drop-path off).

        ``full-finetune`` trains the backbone itself, so it follows ``mode`` (drop-path on in training).
        """
        super().train(mode)
        if self.method != "full-finetune":
            self.backbone.eval()
        return self

    def learnable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def learnable_state_dict(self) -> dict[str, torch.Tensor]:
        """Experts and heads only (what an adapter checkpoint stores)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def forward(self, images: torch.Tensor) -> AUFormerOutput:
        """``images`` ``(B, 3, H, W)`` -> `AUFormerOutput`."""
        vit = self.backbone
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))  # (B, T, D)
        carry = None
        for layer, (block, attn_group, mlp_group) in enumerate(zip(vit.blocks, self.attn_groups, self.mlp_groups)):
            if self.prompts is not None:
                x = self.prompts.insert(x, layer)  # (B, T + P, D)
            x_norm = block.norm1(x)
            out = block.ls1(block.attn(x_norm))  # (B, T, D) the MHSA sublayer's output
            knowledge, state = attn_group((x, x_norm, out)[self.branch_input], carry)  # (B, T, D) group mean, eqs. 2-3
            x = x + block.drop_path1(out) + knowledge  # eq. 4
            carry = state if self.collaborate else None
            x_norm = block.norm2(x)
            out = block.ls2(block.mlp(x_norm))
            knowledge, state = mlp_group((x, x_norm, out)[self.branch_input], carry)
            x = x + block.drop_path2(out) + knowledge
            carry = state if self.collaborate else None
            if self.prompts is not None:
                x = self.prompts.remove(x)  # (B, T, D)
        features = vit.forward_head(vit.norm(x), pre_logits=True)  # (B, D) CLS token
        expert_features = self.mlp_groups[-1].cls_outputs(state) if state is not None else None  # (B, E, D)
        logits = None if self.head is None else self.head(features)  # (B, N)
        aux_logits = None if self.aux_head is None else per_expert(expert_features, self.aux_head)  # (B, N)
        intensity, aux_intensity = (None, None) if self.intensity is None else self.intensity(features, expert_features)
        return AUFormerOutput(logits, aux_logits, features, expert_features, intensity, aux_intensity)


def _check_options(
    num_aus: int,
    moke: str,
    d: int,
    dilations: Sequence[int],
    ca_size: int,
    dropout: float,
    drop_path: float,
    scale: float,
    backbone_kwargs: dict,
    method: str,
    method_options: dict,
    task: str,
) -> None:
    """Validate build arguments before anything is built (one clear line per problem)."""
    if not isinstance(num_aus, int) or num_aus < 1:
        raise AUFormerError(f"num_aus must be a positive integer, got {num_aus!r}")
    if task not in TASKS:
        raise AUFormerError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if method not in METHODS:
        raise AUFormerError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    for name in ("adapter_bottleneck", "lora_rank", "vpt_prompts"):
        if not isinstance(method_options[name], int) or method_options[name] < 1:
            raise AUFormerError(f"{name} must be a positive integer, got {method_options[name]!r}")
    if moke not in MOKE_IMPLEMENTATIONS:
        raise AUFormerError(f"moke must be one of {sorted(MOKE_IMPLEMENTATIONS)}, got {moke!r}")
    if not isinstance(d, int) or d < 1:
        raise AUFormerError(f"d must be a positive integer, got {d!r}")
    if not isinstance(dilations, (list, tuple)) or not dilations or any(not isinstance(r, int) or r < 1 for r in dilations):
        raise AUFormerError(f"dilations must be a non-empty list of positive integers, got {dilations!r}")
    if not isinstance(ca_size, int) or ca_size < 1 or ca_size % 2 == 0:
        raise AUFormerError(f"ca_size must be an odd positive integer, got {ca_size!r}")
    for name, value in (("dropout", dropout), ("drop_path", drop_path)):
        if not 0.0 <= value < 1.0:
            raise AUFormerError(f"{name} must be in [0, 1), got {value!r}")
    if not math.isfinite(scale):
        raise AUFormerError(f"scale must be a finite number, got {scale!r}")
    reserved = {"num_classes", "img_size", "pretrained"} & set(backbone_kwargs)
    if reserved:
        raise AUFormerError(f"backbone_kwargs must not set {sorted(reserved)}: build_model sets them")
    if method == "full-finetune" and "drop_path_rate" in backbone_kwargs:
        raise AUFormerError("backbone_kwargs must not set drop_path_rate for full-finetune: set drop_path (model.drop_path)")


def learnable_bound(geometry: Geometry, num_aus: int, d: int, dilations: Sequence[int], method_options: dict) -> int:
    """More learnable values than any method adds to the backbone (tested against the built models).

    Counted before building (a build on the meta device costs as much as a real one), so that a
    description cannot ask for terabytes of experts. Every method's width is counted, whichever
    is used: per block, two groups of ``num_aus`` experts (down/up ``D x d``, the d-space convs),
    two bottleneck adapters, LoRA on q, k and v, and the prompts; then the heads.
    """
    dim, k = geometry.embed_dim, len(dilations)
    expert = (2 * d + 1) * dim + 16 * (k + 1) * d * (d + 1)
    bottleneck, rank, prompts = (method_options[name] for name in ("adapter_bottleneck", "lora_rank", "vpt_prompts"))
    block = 2 * num_aus * expert + 2 * (2 * dim + 1) * (bottleneck + 1) + 6 * rank * dim + prompts * dim
    return geometry.depth * block + 4 * num_aus * (dim + 1)


def build_model(
    num_aus: int,
    backbone: str = "vit_base_patch16_224",
    backbone_weights: str = "hub",
    img_size: int = 224,
    moke: str = "fused",
    *,
    aus: list[int] | None = None,
    d: int = 4,
    dilations: Sequence[int] = (1, 3, 5),
    ca_size: int = 3,
    use_mrf: bool = True,
    use_ca: bool = True,
    collaborate: bool = True,
    aux_head: bool = True,
    dropout: float = 0.1,
    scale: float = 1.0,
    backbone_kwargs: dict | None = None,
    task: str = "occurrence",
    method: str = "auformer",
    adapter_bottleneck: int = 64,
    adapter_scale: float = 0.1,
    lora_rank: int = 8,
    lora_alpha: float = 8.0,
    lora_targets: Sequence[str] = ("q", "v"),
    vpt_prompts: int = 10,
    drop_path: float = 0.1,
    recompute: bool = True,
) -> AUFormer:
    """Build AUFormer (or a comparison ``method``, see `petl.py`) on a frozen timm ViT.

    ``backbone_weights``: ``"hub"`` (the timm tag's weights, Hugging Face cache first),
    a local weight file, ``"synthetic"`` (the packaged synthetic-face ViT) or ``"random"``
    (random init, by name only). ``moke``:
    ``"fused"`` (fast, exact) or ``"reference"`` (literal per-expert form); both have
    the same state-dict layout. ``collaborate=False`` uses one shared expert per group.
    ``task``: ``"occurrence"`` (the paper), ``"intensity"`` (0-5 per AU) or ``"both"``.
    ``method``: ``auformer``, ``full-finetune`` (``drop_path``: the backbone's drop-path rate in
    training), ``linear``, ``adapter`` (Houlsby: ``adapter_bottleneck``), ``adaptformer``
    (``adapter_bottleneck``, ``adapter_scale``, ``dropout``), ``lora`` (``lora_rank``, ``lora_alpha``,
    ``lora_targets`` among q, k, v), ``vpt`` (``vpt_prompts`` per block) or ``convpass`` (one expert
    per group without MRF/CA: ``d``, ``scale``, ``dropout``).
    ``recompute=False`` keeps the fused groups' d-space activations for backward instead of
    recomputing them: faster training steps, more memory.
    """
    backbone_kwargs = dict(backbone_kwargs or {})
    method_options = dict(
        adapter_bottleneck=adapter_bottleneck,
        adapter_scale=adapter_scale,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_targets=list(check_lora_targets(lora_targets)),  # in q, k, v order
        vpt_prompts=vpt_prompts,
    )
    _check_options(num_aus, moke, d, dilations, ca_size, dropout, drop_path, scale, backbone_kwargs, method, method_options, task)
    learnable = learnable_bound(backbone_geometry(backbone, img_size, backbone_kwargs), num_aus, d, dilations, method_options)
    if learnable > MAX_LEARNABLE_VALUES:
        raise AUFormerError(
            f"{num_aus} AUs with d={d}, dilations {list(dilations)} and {method_options} make up to {learnable:,} "
            f"learnable values; at most {MAX_LEARNABLE_VALUES:,}"
        )
    if aus is not None:
        aus = parse_au_list(aus)
        if len(aus) != num_aus:
            raise AUFormerError(f"aus lists {len(aus)} distinct AUs {aus} but num_aus is {num_aus}")
    # the Expert arguments, passed to AUFormer and recorded in the config (dilations as JSON's list)
    expert_options = dict(
        d=d, dilations=list(dilations), ca_size=ca_size, use_mrf=use_mrf, use_ca=use_ca, dropout=dropout, scale=scale
    )
    config = dict(
        num_aus=num_aus,
        backbone=backbone,
        backbone_weights=weights_source(backbone_weights),
        img_size=img_size,
        moke=moke,
        aus=aus,
        **expert_options,
        collaborate=collaborate,
        aux_head=aux_head,
        drop_path=drop_path,
        backbone_kwargs=backbone_kwargs,
        task=task,
        method=method,
        recompute=recompute,
        **method_options,
    )
    # Only full fine-tuning trains the backbone in train mode; a frozen backbone stays in eval mode (no drop-path).
    if method == "full-finetune":
        backbone_kwargs = {**backbone_kwargs, "drop_path_rate": drop_path}
    vit = create_backbone(backbone, backbone_weights, img_size, backbone_kwargs)
    return AUFormer(
        vit,
        num_aus,
        moke=moke,
        collaborate=collaborate,
        aux_head=aux_head,
        aus=aus,
        config=config,
        task=task,
        method=method,
        method_options=method_options,
        recompute=recompute,
        **expert_options,
    )
