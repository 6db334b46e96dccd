"""The paper's comparison methods (Tables 4 and 5a, Fig. 1) on the same frozen timm ViT.

Every method plugs into the one block loop of `AUFormer.forward`, which adds a
branch beside MHSA and one beside MLP::

    X' = X  + MHSA(LN1(X))  + attn_branch(LN1(X))
    X  = X' + MLP(LN2(X'))  + mlp_branch(LN2(X'))

MoKE groups are such branches (``auformer``, and ``convpass``: one expert per group
without MRF and CA, which is exactly Convpass). The modules here are the others:

- `NoBranch`: adds nothing (``linear``, ``full-finetune``, ``lora``, ``vpt``);
- `Adapter`: AdaptFormer's parallel bottleneck beside the MLP;
- `LoRA`: low-rank updates of q and v, added to the frozen ``qkv`` Linear by a
  forward hook, so the backbone's modules and state-dict keys stay untouched;
- `DeepPrompts`: deep VPT, P learnable tokens in front of the patches of every block.

LoRA decision: peft's LoRA wraps whole ``nn.Linear`` modules. timm fuses q, k and v
into one ``attn.qkv`` Linear, so peft would adapt k as well (not the LoRA paper's q, v
recipe), rename the backbone's keys, and add a dependency with its own injection
mechanism; a 30-line module on the qkv output is the faithful and smaller choice.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

# Methods with a MoKE expert group beside MHSA and MLP (the others use the modules below).
EXPERT_METHODS = ("auformer", "convpass")
METHODS = ("auformer", "full-finetune", "linear", "adapter", "lora", "vpt", "convpass")


class NoBranch(nn.Module):
    """A block side without a learnable branch: adds zero, hands no state on."""

    def forward(self, x_norm: torch.Tensor, carry: None) -> tuple[torch.Tensor, None]:
        return x_norm.new_zeros(()), None


class Adapter(nn.Module):
    """AdaptFormer's AdaptMLP: ``s * Up(ReLU(Down(u)))``, a bottleneck beside the MLP.

    AdaptFormer (Chen et al. 2022) init: Kaiming-uniform down, zero up and biases, so
    the untrained model is the frozen ViT; scale ``s = 0.1``. Its input here is the
    MLP's own input ``LN2(X')`` (the parallel-adapter form), as for the MoKE groups.
    """

    def __init__(self, dim: int, bottleneck: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x_norm: torch.Tensor, carry: None) -> tuple[torch.Tensor, None]:
        return self.scale * self.up(torch.relu(self.down(x_norm))), None  # (B, T, D)


class LoRA(nn.Module):
    """Low-rank updates of q and v in every block (Hu et al. 2021): ``q += (alpha/r) B_q A_q x``.

    ``A`` Kaiming-uniform, ``B`` zero (LoRA's init: no change at start). The updates are
    added to the output of the frozen ``blocks[l].attn.qkv`` by forward hooks registered
    in ``attach``; k is left alone, as in the LoRA paper.
    """

    def __init__(self, dim: int, depth: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.scaling = alpha / rank
        self.down = nn.Parameter(torch.empty(depth, 2, rank, dim))  # (L, q|v, r, D): A
        self.up = nn.Parameter(torch.zeros(depth, 2, dim, rank))  # (L, q|v, D, r): B
        for a in self.down.view(-1, rank, dim):
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def attach(self, backbone: VisionTransformer) -> None:
        for layer, block in enumerate(backbone.blocks):
            block.attn.qkv.register_forward_hook(self._hook(layer))

    def _hook(self, layer: int):
        def add_update(module: nn.Module, inputs: tuple[torch.Tensor], qkv: torch.Tensor) -> torch.Tensor:
            x = inputs[0]  # (B, T, D)
            update = torch.einsum("btd,krd,kor->btko", x, self.down[layer], self.up[layer]) * self.scaling  # (B, T, 2, D)
            q, k, v = qkv.unflatten(-1, (3, -1)).unbind(-2)  # each (B, T, D)
            return torch.cat([q + update[..., 0, :], k, v + update[..., 1, :]], dim=-1)  # (B, T, 3D)

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


def side_branches(method: str, dim: int, depth: int, bottleneck: int, scale: float) -> tuple[nn.ModuleList, nn.ModuleList]:
    """The (attn, mlp) branches of a method without expert groups: Adapter beside the MLP, else nothing."""
    mlp = (Adapter(dim, bottleneck, scale) if method == "adapter" else NoBranch() for _ in range(depth))
    return nn.ModuleList(NoBranch() for _ in range(depth)), nn.ModuleList(mlp)
