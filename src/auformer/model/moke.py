"""Mixture-of-Knowledge Experts (MoKE): one expert and the literal expert group.

This is the *reference* form of SPEC section 1: N separate experts, each fed
``LN(X) + K_prev_i`` (its own D-wide carry), and the group output is the explicit
mean of the N D-wide expert outputs. It is slow and memory-hungry on purpose:
it reads like the paper, and `moke_fused.py` is tested against it.

One expert (Convpass-style bypass, paper section 3.3)::

    a   = QuickGELU(Down(u))                       # 1x1 conv D -> d (a Linear per token)
    M'' = QuickGELU(Conv3x3(a))                     # basic features
    h   = M'' + MRF(M'') + CA(M'')                  # mixture of knowledge
    K   = scale * Up(Dropout(h))                    # 1x1 conv d -> D, zero-initialised

Patch tokens are run as an ``(H, W)`` image; every prefix token (CLS, registers)
is run as its own 1x1 image through the same weights, as Convpass does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP/Convpass QuickGELU ``x * sigmoid(1.702 x)``: the nonlinearity Convpass uses in d-space."""
    return x * torch.sigmoid(1.702 * x)


def context_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: int, head_dim: int) -> torch.Tensor:
    """Eq. 5: per channel, softmax over the ``size x size`` neighbourhood of ``q[x] * k[x'] / sqrt(head_dim)``.

    ``q, k, v``: ``(B, C, H, W)``; returns ``(B, C, H, W)``. Channels never mix (one expert:
    C = d; `moke_fused` computes the same per channel in its own layout). Neighbours
    outside the map are excluded from the softmax (set to -inf), not zero-padded in.
    ``head_dim`` is the per-expert width d of the ``sqrt(d)`` temperature.
    """
    batch, channels, height, width = q.shape
    pad = size // 2
    # F.unfold gathers the neighbourhoods; a hand loop over S*S shifts would be the alternative.
    k_nbr = F.unfold(k, size, padding=pad).view(batch, channels, size * size, height * width)  # (B, C, S*S, HW)
    v_nbr = F.unfold(v, size, padding=pad).view(batch, channels, size * size, height * width)  # (B, C, S*S, HW)
    inside = F.unfold(q.new_ones(1, 1, height, width), size, padding=pad).view(1, 1, size * size, height * width)
    scores = (q.flatten(2) / math.sqrt(head_dim)).unsqueeze(2) * k_nbr  # (B, C, S*S, HW)
    scores = scores.masked_fill(inside == 0, float("-inf"))
    weights = scores.softmax(dim=2)
    return (weights * v_nbr).sum(dim=2).view(batch, channels, height, width)  # (B, C, H, W)


def split_tokens(tokens: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``(B, T, C)`` -> patch image ``(B, C, H, W)`` and prefix images ``(B*P, C, 1, 1)``."""
    batch, _, channels = tokens.shape
    prefix = tokens[:, :num_prefix_tokens].reshape(-1, channels, 1, 1)  # (B*P, C, 1, 1)
    patches = tokens[:, num_prefix_tokens:].transpose(1, 2).reshape(batch, channels, *grid_size)  # (B, C, H, W)
    return patches, prefix


def merge_tokens(patches: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """Inverse of `split_tokens`: ``(B, C, H, W)`` and ``(B*P, C, 1, 1)`` -> tokens ``(B, T, C)``."""
    batch, channels = patches.shape[:2]
    prefix = prefix.reshape(batch, -1, channels)  # (B, P, C)
    return torch.cat([prefix, patches.flatten(2).transpose(1, 2)], dim=1)  # (B, P + H*W, C)


class MultiReceptiveField(nn.Module):
    """MRF operator: parallel dilated 3x3 convs, concatenated, fused by a 1x1 conv."""

    def __init__(self, d: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(d, d, 3, padding=r, dilation=r) for r in dilations)
        self.fuse = nn.Conv2d(len(dilations) * d, d, 1)

    def forward(self, m: torch.Tensor) -> torch.Tensor:  # (B, d, H, W) -> (B, d, H, W)
        return self.fuse(torch.cat([branch(m) for branch in self.branches], dim=1))


class ContextAware(nn.Module):
    """CA operator: 1x1 Q, K, V convs and neighbourhood attention (eq. 5)."""

    def __init__(self, d: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.q = nn.Conv2d(d, d, 1)
        self.k = nn.Conv2d(d, d, 1)
        self.v = nn.Conv2d(d, d, 1)

    def forward(self, m: torch.Tensor) -> torch.Tensor:  # (B, d, H, W) -> (B, d, H, W)
        return context_attention(self.q(m), self.k(m), self.v(m), self.size, m.shape[1])


class Expert(nn.Module):
    """One MoKE: tokens ``(B, T, D)`` -> knowledge ``(B, T, D)`` (zero at init)."""

    def __init__(
        self,
        dim: int,
        *,
        d: int,
        dilations: Sequence[int],
        ca_size: int,
        use_mrf: bool,
        use_ca: bool,
        dropout: float,
        scale: float,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(dim, d)
        self.conv = nn.Conv2d(d, d, 3, padding=1)
        self.mrf = MultiReceptiveField(d, dilations) if use_mrf else None
        self.ca = ContextAware(d, ca_size) if use_ca else None
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(d, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Convpass init: Xavier down, identity 3x3 conv, zero up, so the untrained model is the frozen ViT."""
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        with torch.no_grad():
            self.conv.weight[:, :, 1, 1] = torch.eye(self.conv.out_channels)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def knowledge(self, a: torch.Tensor) -> torch.Tensor:
        """Basic features and their MRF/CA knowledge on one image ``(B, d, H, W)``: ``M'' + K_MRF + K_CA``."""
        m = quick_gelu(self.conv(a))
        h = m
        if self.mrf is not None:
            h = h + self.mrf(m)
        if self.ca is not None:
            h = h + self.ca(m)
        return h

    def hidden(self, tokens: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        """d-space output before the up-projection, after dropout: ``(B, T, D)`` -> ``(B, T, d)``."""
        a = quick_gelu(self.down(tokens))  # (B, T, d)
        patches, prefix = split_tokens(a, grid_size, num_prefix_tokens)
        h = merge_tokens(self.knowledge(patches), self.knowledge(prefix))  # (B, T, d)
        return self.dropout(h)

    def forward(self, tokens: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        return self.scale * self.up(self.hidden(tokens, grid_size, num_prefix_tokens))  # (B, T, D)


class MoKEGroup(nn.Module):
    """An expert group beside MHSA or MLP (eqs. 2-4), literal reference form.

    ``forward(x_norm, carry)`` takes the block's pre-norm tokens ``(B, T, D)`` and the
    previous group's state (or None), and returns the collaboration output
    ``mean_i K_i`` ``(B, T, D)`` to add to the residual stream, plus this group's state
    for the next group. Here the state is all expert outputs ``(B, E, T, D)``.
    `FusedMoKEGroup` keeps the same parameters and a d-space state instead.
    """

    def __init__(
        self, dim: int, num_experts: int, *, grid_size: tuple[int, int], num_prefix_tokens: int, **expert_options
    ) -> None:
        """``expert_options`` are `Expert`'s keyword arguments, the same for every expert."""
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.experts = nn.ModuleList(Expert(dim, **expert_options) for _ in range(num_experts))

    def forward(self, x_norm: torch.Tensor, carry: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = []
        for i, expert in enumerate(self.experts):
            expert_input = x_norm if carry is None else x_norm + carry[:, i]  # eq. 2, (B, T, D)
            outputs.append(expert(expert_input, self.grid_size, self.num_prefix_tokens))
        outputs = torch.stack(outputs, dim=1)  # (B, E, T, D)
        return outputs.mean(dim=1), outputs  # eq. 3

    def cls_outputs(self, state: torch.Tensor) -> torch.Tensor:
        """Each expert's CLS-token output ``(B, E, D)`` from this group's state (for the aux head)."""
        return state[:, :, 0]
