"""The fused expert group: the exact fast form of `moke.MoKEGroup` (SPEC "Fast form").

Same parameters (it subclasses the reference and only replaces ``forward``), same
outputs and gradients, but N experts cost about as much as one:

- the N down-projections are one matmul ``D -> N*d``; the 3x3, dilated, 1x1 and CA
  operators run once over ``N*d`` channels as grouped convolutions (``groups=N``);
- the collaboration mean ``(1/N) sum_i Up_i(h_i)`` is one matmul ``N*d -> D``;
- the d-space ops are recomputed in backward (activation checkpointing), so
  activation memory does not grow with the 9x-wide CA neighbourhood tensors;
- the carry stays in d-space: ``Down_next,i(LN(X) + s (W_up,i h_i + b_up,i))
  = Down_next,i(LN(X)) + s (W_down,next,i W_up,i) h_i + s W_down,next,i b_up,i``,
  a d x d map per expert, so no D-wide per-expert tensor is ever built.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from auformer.model.moke import MoKEGroup, context_attention, merge_tokens, quick_gelu, split_tokens


class ExpertState(NamedTuple):
    """What a fused group hands to the next one: enough to rebuild every ``K_i`` on demand."""

    hidden: torch.Tensor  # (B, T, E*d) expert outputs before the up-projection (after dropout)
    up_weight: torch.Tensor  # (D, E*d) the N up-projections side by side
    up_bias: torch.Tensor  # (E, D)


class FusedMoKEGroup(MoKEGroup):
    """`MoKEGroup` computed with grouped ops and a d-space carry (identical results)."""

    def _cat(self, name: str, dim: int = 0) -> torch.Tensor:
        """The experts' parameter ``name`` (e.g. ``"ca.q.weight"``) concatenated along ``dim``."""
        return torch.cat([expert.get_parameter(name) for expert in self.experts], dim=dim)

    @property
    def d(self) -> int:
        return self.experts[0].down.out_features

    @property
    def scale(self) -> float:
        return self.experts[0].scale

    def _knowledge(self, a: torch.Tensor) -> torch.Tensor:
        """``M'' + K_MRF + K_CA`` of all experts at once on ``(B, E*d, H, W)``."""
        experts, first = len(self.experts), self.experts[0]
        m = quick_gelu(F.conv2d(a, self._cat("conv.weight"), self._cat("conv.bias"), padding=1, groups=experts))
        h = m
        if first.mrf is not None:
            branches = [
                F.conv2d(m, self._cat(f"mrf.branches.{j}.weight"), self._cat(f"mrf.branches.{j}.bias"),
                         padding=branch.padding, dilation=branch.dilation, groups=experts)
                for j, branch in enumerate(first.mrf.branches)
            ]  # each (B, E*d, H, W)
            batch, _, height, width = m.shape
            # Per expert the fuse conv expects its own [r1 | r2 | r3] channel block: (B, E*k*d, H, W).
            stacked = torch.stack(branches, dim=1).view(batch, len(branches), experts, self.d, height, width)
            stacked = stacked.transpose(1, 2).reshape(batch, experts * len(branches) * self.d, height, width)
            h = h + F.conv2d(stacked, self._cat("mrf.fuse.weight"), self._cat("mrf.fuse.bias"), groups=experts)
        if first.ca is not None:
            q, k, v = (F.conv2d(m, self._cat(f"ca.{n}.weight"), self._cat(f"ca.{n}.bias"), groups=experts) for n in "qkv")
            h = h + context_attention(q, k, v, first.ca.size, self.d)
        return h

    def _hidden(self, z: torch.Tensor) -> torch.Tensor:
        """Down-projected tokens ``(B, T, E*d)`` -> every expert's ``M'' + K_MRF + K_CA`` ``(B, T, E*d)``."""
        patches, prefix = split_tokens(quick_gelu(z), self.grid_size, self.num_prefix_tokens)
        return merge_tokens(self._knowledge(patches), self._knowledge(prefix))

    def _carry_down(self, carry: ExpertState, down_weight: torch.Tensor) -> torch.Tensor:
        """``Down_i(K_prev,i)`` for every expert without building ``K_prev,i``: ``(B, T, E*d)``."""
        batch, tokens, _ = carry.hidden.shape
        experts = len(self.experts)
        down = down_weight.view(experts, self.d, -1)  # (E, d_out, D)
        up = carry.up_weight.view(-1, experts, self.d)  # (D, E, d_in)
        carry_map = torch.einsum("eoD,Dei->eoi", down, up)  # (E, d_out, d_in)
        carry_bias = torch.einsum("eoD,eD->eo", down, carry.up_bias)  # (E, d_out)
        hidden = carry.hidden.view(batch, tokens, experts, self.d)  # (B, T, E, d_in)
        mapped = torch.einsum("btei,eoi->bteo", hidden, carry_map) + carry_bias  # (B, T, E, d_out)
        return self.scale * mapped.reshape(batch, tokens, experts * self.d)

    def forward(self, x_norm: torch.Tensor, carry: ExpertState | None) -> tuple[torch.Tensor, ExpertState]:
        down_weight = self._cat("down.weight")  # (E*d, D)
        z = F.linear(x_norm, down_weight, self._cat("down.bias"))  # (B, T, E*d)
        if carry is not None:
            z = z + self._carry_down(carry, down_weight)
        if torch.is_grad_enabled():
            # Keep only z for backward and recompute the d-space ops there: CA's 9x unfolded tensors
            # would otherwise make activation memory grow with N (see benchmarks/README.md).
            hidden = checkpoint(self._hidden, z, use_reentrant=False)
        else:
            hidden = self._hidden(z)
        hidden = F.dropout(hidden, self.experts[0].dropout.p, self.training)
        up_weight = self._cat("up.weight", dim=1)  # (D, E*d)
        up_bias = torch.stack([expert.up.bias for expert in self.experts])  # (E, D)
        mean_output = F.linear(hidden, up_weight, up_bias.sum(0)) * (self.scale / len(self.experts))  # (B, T, D)
        return mean_output, ExpertState(hidden, up_weight, up_bias)

    def cls_outputs(self, state: ExpertState) -> torch.Tensor:
        """Each expert's CLS-token output ``(B, E, D)``, built only for that one token."""
        cls_hidden = state.hidden[:, 0].view(state.hidden.shape[0], len(self.experts), self.d)  # (B, E, d)
        up = state.up_weight.view(-1, len(self.experts), self.d)  # (D, E, d)
        return self.scale * (torch.einsum("bei,Dei->beD", cls_hidden, up) + state.up_bias)
