"""The paper's comparison methods (Tables 4 and 5a, Fig. 1) on the same frozen timm ViT.

Every method plugs into the one block loop of `AUFormer.forward`, which adds a
branch beside MHSA and one beside MLP::

    X' = X  + MHSA(LN1(X))  + attn_branch(u1)
    X  = X' + MLP(LN2(X'))  + mlp_branch(u2)

The branch's input ``u`` is one of three taps of its sublayer (`branch_input`):
``LN(X)``, the sublayer's own input (parallel branches: MoKE groups, Convpass);
the sublayer's output ``MHSA(LN1(X))`` / ``MLP(LN2(X'))`` (Houlsby's sequential
adapter); or the un-normalised stream ``X`` / ``X'`` (AdaptFormer). MoKE groups
are such branches (``auformer``, and ``convpass``: one expert per group without
MRF and CA, which is exactly Convpass). The modules here are the others:

- `NoBranch`: adds nothing (``linear``, ``full-finetune``, ``lora``, ``vpt``);
- `SequentialAdapter`: Houlsby et al.'s adapter after MHSA and after the MLP (``adapter``);
- `AdaptMLP`: AdaptFormer's parallel bottleneck beside the MLP (``adaptformer``);
- `LoRA`: low-rank updates of some of q, k, v, added to the frozen ``qkv`` Linear by a
  forward hook, so the backbone's modules and state-dict keys stay untouched;
- `DeepPrompts`: deep VPT, P learnable tokens in front of the patches of every block.

LoRA decision: peft's LoRA wraps whole ``nn.Linear`` modules. timm fuses q, k and v
into one ``attn.qkv`` Linear, so peft would adapt all three (neither the LoRA paper's
q, v nor the AUFormer paper's q, k), rename the backbone's keys, and add a dependency
with its own injection mechanism; a 30-line module on the qkv output is the faithful
and smaller choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from auformer.errors import AUFormerError

# Methods with a MoKE expert group beside MHSA and MLP (the others use the modules below).
EXPERT_METHODS = ("auformer", "convpass")
METHODS = ("auformer", "full-finetune", "linear", "adapter", "adaptformer", "lora", "vpt", "convpass")

# What a branch reads, per block side (`AUFormer.forward` picks the tensor by this index).
STREAM, SUBLAYER_INPUT, SUBLAYER_OUTPUT = range(3)  # X (or X'), LN(X), the sublayer's output
_BRANCH_INPUT = {"adapter": SUBLAYER_OUTPUT, "adaptformer": STREAM}

# The comparison rows of Table 5a and Fig. 1 (`auformer info --compare`) in their published form, whatever the preset
# says: Convpass's code hard-codes d = 8 and dropout 0.1 (its scale s is tuned per dataset in 0.01..100; its code's
# default is 1); AdaptFormer's code: bottleneck 64, s = 0.1, dropout 0.1; Houlsby's code: bottleneck 64; LoRA on
# queries and keys, as the AUFormer paper's text says (the LoRA paper and `model.lora_targets`' default: q and v).
COMPARISON_SETTINGS: dict[str, dict] = {
    "adapter": {"adapter_bottleneck": 64},
    "adaptformer": {"adapter_bottleneck": 64, "adapter_scale": 0.1, "dropout": 0.1},
    "lora": {"lora_targets": ["q", "k"]},
    "convpass": {"d": 8, "scale": 1.0, "dropout": 0.1},
}

LORA_TARGETS = ("q", "k", "v")  # the three projections of timm's fused qkv Linear, in its output order


def branch_input(method: str) -> int:
    """Which tap of each sublayer ``method``'s branches read: `STREAM`, `SUBLAYER_INPUT` or `SUBLAYER_OUTPUT`."""
    return _BRANCH_INPUT.get(method, SUBLAYER_INPUT)


def check_lora_targets(targets: Sequence[str], name: str = "lora_targets") -> tuple[str, ...]:
    """Checked ``targets`` in qkv order (``["v", "q"]`` -> ``("q", "v")``); one line naming ``name`` when invalid."""
    if (
        not isinstance(targets, (list, tuple))
        or not targets
        or len(set(targets)) != len(targets)
        or any(target not in LORA_TARGETS for target in targets)
    ):
        raise AUFormerError(f"{name}: {targets!r} must be a non-empty list of distinct entries from q, k, v")
    return tuple(sorted(targets, key=LORA_TARGETS.index))


class NoBranch(nn.Module):
    """A block side without a learnable branch: adds zero, hands no state on."""

    def forward(self, u: torch.Tensor, carry: None) -> tuple[torch.Tensor, None]:
        return u.new_zeros(()), None


class SequentialAdapter(nn.Module):
    """Houlsby et al. (2019): ``a(h) = h + Up(GELU(Down(h)))`` on a sublayer's output ``h``, before the residual add.

    The block loop feeds it ``h`` (`SUBLAYER_OUTPUT`) and adds what it returns beside ``h``
    itself, ``X + h + Up(GELU(Down h)) = X + a(h)``: the adapter's internal skip is the ``h``
    the block adds anyway. As in Houlsby's code (google-research/adapter-bert): GELU (tanh
    form), down-projection truncated-normal with std 1e-3, zero biases, no scale, no
    dropout. The up-projection is zero (Houlsby: std 1e-3, near identity), so the
    untrained model is exactly the frozen ViT (SPEC section 6). Houlsby also trains the
    LayerNorms; here they stay frozen with the rest of the backbone.
    """

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.trunc_normal_(self.down.weight, std=1e-3, a=-2e-3, b=2e-3)  # TF's truncated normal: within 2 std
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor, carry: None) -> tuple[torch.Tensor, None]:
        return self.up(F.gelu(self.down(h), approximate="tanh")), None  # (B, T, D)


class AdaptMLP(nn.Module):
    """AdaptFormer's AdaptMLP (Chen et al. 2022): ``s * Up(Dropout(ReLU(Down(X'))))`` beside the MLP.

    As in AdaptFormer's code: the input is the block's un-normalised stream ``X'``
    (`STREAM`: the MLP's input before LN2), bottleneck dropout 0.1, scale ``s = 0.1``,
    Kaiming-uniform down, zero up and biases, so the untrained model is the frozen ViT.
    """

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(dim, bottleneck)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, carry: None) -> tuple[torch.Tensor, None]:
        return self.scale * self.up(self.dropout(torch.relu(self.down(x)))), None  # (B, T, D)


class LoRA(nn.Module):
    """Low-rank updates of the ``targets`` among q, k, v in every block (Hu et al. 2021): ``q += (alpha/r) B_q A_q x``.

    ``A`` Kaiming-uniform, ``B`` zero (LoRA's init: no change at start). The updates are
    added to the output of the frozen ``blocks[l].attn.qkv`` by forward hooks registered
    in ``attach``. The LoRA paper adapts q and v (the default); the AUFormer paper's text
    says queries and keys (its Table 5a row, `COMPARISON_SETTINGS`).
    """

    def __init__(self, dim: int, depth: int, rank: int, alpha: float, targets: Sequence[str] = ("q", "v")) -> None:
        super().__init__()
        self.scaling = alpha / rank
        self.slots = [LORA_TARGETS.index(target) for target in check_lora_targets(targets)]  # positions in q|k|v
        self.down = nn.Parameter(torch.empty(depth, len(self.slots), rank, dim))  # (L, K, r, D): A per target
        self.up = nn.Parameter(torch.zeros(depth, len(self.slots), dim, rank))  # (L, K, D, r): B per target
        for a in self.down.view(-1, rank, dim):
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def attach(self, backbone: VisionTransformer) -> None:
        for layer, block in enumerate(backbone.blocks):
            block.attn.qkv.register_forward_hook(self._hook(layer))

    def _hook(self, layer: int):
        def add_update(module: nn.Module, inputs: tuple[torch.Tensor], qkv: torch.Tensor) -> torch.Tensor:
            x = inputs[0]  # (B, T, D)
            update = torch.einsum("btd,krd,kor->btko", x, self.down[layer], self.up[layer]) * self.scaling  # (B, T, K, D)
            parts = list(qkv.unflatten(-1, (3, -1)).unbind(-2))  # q, k, v: each (B, T, D)
            for k, slot in enumerate(self.slots):
                parts[slot] = parts[slot] + update[..., k, :]
            return torch.cat(parts, dim=-1)  # (B, T, 3D)

        return add_update


class DeepPrompts(nn.Module):
    """Deep VPT (Jia et al. 2022): before block l, P prompt tokens of layer l sit between prefix and patches.

    The prompts' outputs of a block are dropped and the next layer's prompts inserted,
    so MHSA sees them and the token count seen by the head is unchanged. Init as VPT:
    uniform in ``+-sqrt(6 / (3 * patch_area + D))`` (Xavier over the patch projection).
    """

    def __init__(self, dim: int, depth: int, num_prompts: int, num_prefix_tokens: int, patch_area: int) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.prompts = nn.Parameter(torch.empty(depth, num_prompts, dim))  # (L, P, D)
        bound = math.sqrt(6.0 / (3 * patch_area + dim))
        nn.init.uniform_(self.prompts, -bound, bound)

    def insert(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """``(B, T, D)`` -> ``(B, T + P, D)``."""
        prompts = self.prompts[layer].expand(x.shape[0], -1, -1)  # (B, P, D)
        return torch.cat([x[:, : self.num_prefix_tokens], prompts, x[:, self.num_prefix_tokens :]], dim=1)

    def remove(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T + P, D)`` -> ``(B, T, D)``."""
        return torch.cat([x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens + self.prompts.shape[1] :]], dim=1)


def side_branches(
    method: str, dim: int, depth: int, bottleneck: int, scale: float, dropout: float
) -> tuple[nn.ModuleList, nn.ModuleList]:
    """The (attn, mlp) branches of a method without expert groups (see `branch_input` for what they read)."""
    if method == "adapter":  # Houlsby: after MHSA and after the MLP
        return tuple(nn.ModuleList(SequentialAdapter(dim, bottleneck) for _ in range(depth)) for _ in range(2))
    mlp = (AdaptMLP(dim, bottleneck, scale, dropout) if method == "adaptformer" else NoBranch() for _ in range(depth))
    return nn.ModuleList(NoBranch() for _ in range(depth)), nn.ModuleList(mlp)
