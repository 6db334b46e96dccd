"""The fused expert group: the exact fast form of `moke.MoKEGroup` (SPEC "Fast form").

Same parameters (it subclasses the reference and only replaces ``forward``), same
outputs and gradients, but N experts cost about as much as one. With ``C = E*d``
channels (E experts of width d side by side):

- the N down-projections are one matmul ``D -> C``; the collaboration mean
  ``(1/N) sum_i s Up_i(h_i)`` is one matmul ``C -> D`` with ``s/N`` folded into its weight;
- the carry stays in d-space: ``Down_next,i(LN(X) + s (W_up,i h_i + b_up,i))
  = Down_next,i(LN(X)) + s (W_down,next,i W_up,i) h_i + s W_down,next,i b_up,i``,
  a d x d map per expert (one block-diagonal C x C matmul), so no D-wide per-expert
  tensor is ever built;
- MRF folds its 1x1 fuse conv into the dilated branches (``Fuse_j * Branch_j`` is again a
  3x3 conv with dilation r_j) and the ``M''`` identity into the centre tap of the first
  branch, so ``M'' + K_MRF`` is the sum of k grouped convolutions;
- CA's Q, K, V 1x1 convs are one block-diagonal ``C -> 3C`` matmul (``1/sqrt(d)`` folded
  into Q) and its S x S neighbourhoods are shifted windows of the padded map, stacked
  channels-innermost so the softmax over neighbours is vectorised; positions outside the map
  get an additive -inf mask built once per group;
- patch tokens are run channels-last, which is how the tokens already lie in memory
  (``(B, H*W, C)``), so no layout change is needed and oneDNN's grouped convolutions run
  fast (about 10x faster than channels-first at batch 32 on CPU);
- a prefix token (CLS) is a 1x1 image: every 3x3 conv sees only its centre tap and CA's
  softmax sees only the token itself (weight 1, output V), so the whole prefix path is
  two block-diagonal C x C matmuls instead of convolutions on 1x1 images;
- all these fused weights are derived from the per-expert parameters in one place,
  `fused_weights`; without autograd (inference, evaluation) they are cached and reused while
  every parameter and buffer of the group holds the same values (see `fused_weights` for why
  the values themselves are compared, and how that check is kept to a sixth of a rebuild);
- in training the d-space ops are recomputed in backward (activation checkpointing), so
  activation memory does not grow with the 9x-wide CA neighbourhood tensors.
"""

from __future__ import annotations

import contextlib
import math
from itertools import chain
from operator import attrgetter, itemgetter
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from auformer.model.moke import MoKEGroup, quick_gelu


class ExpertState(NamedTuple):
    """What a fused group hands to the next one: enough to rebuild every ``K_i`` on demand."""

    hidden: torch.Tensor  # (B, T, E*d) expert outputs before the up-projection (after dropout)
    up_weight: torch.Tensor  # (D, E*d) the N up-projections side by side
    up_bias: torch.Tensor  # (E, D)


class FusedWeights(NamedTuple):
    """Every fused tensor the forward uses, derived from the per-expert parameters by `fused_weights`."""

    down_weight: torch.Tensor  # (C, D)
    down_bias: torch.Tensor  # (C,)
    conv_weight: torch.Tensor  # (C, d, 3, 3) grouped, channels-last
    conv_bias: torch.Tensor  # (C,)
    conv_centre: torch.Tensor  # (C, C) block-diagonal centre taps: the 3x3 conv on a 1x1 prefix image
    branch_weights: tuple[torch.Tensor, ...]  # k x (C, d, 3, 3): Fuse_j * Branch_j, identity in the first centre
    branch_bias: torch.Tensor  # (C,)
    qkv_weight: torch.Tensor | None  # (3C, C) block-diagonal Q (times 1/sqrt(d)), K, V; None without CA
    qkv_bias: torch.Tensor | None  # (3C,)
    ca_mask: torch.Tensor | None  # (H, W, S*S, 1) -inf where a CA neighbour falls outside the map, else 0
    prefix_weight: torch.Tensor  # (C, C) M'' -> M'' + K_MRF + K_CA on a 1x1 image (centre taps + V)
    prefix_bias: torch.Tensor  # (C,)
    up_weight: torch.Tensor  # (D, C) unscaled, for the carry and the CLS outputs
    up_bias: torch.Tensor  # (E, D) unscaled
    mean_weight: torch.Tensor  # (D, C) up_weight * s / E
    mean_bias: torch.Tensor  # (D,) sum of up biases * s / E


def _block_diagonal(blocks: torch.Tensor) -> torch.Tensor:
    """``(E, o, i)`` per-expert maps -> the ``(E*o, E*i)`` block-diagonal matrix that applies them side by side.

    One broadcast product with the identity (one op forward and backward), where ``torch.block_diag``
    costs a copy per block and a slice per block in backward.
    """
    experts, rows, cols = blocks.shape
    eye = torch.eye(experts, dtype=blocks.dtype, device=blocks.device)
    return (blocks.unsqueeze(2) * eye.view(experts, 1, experts, 1)).reshape(experts * rows, experts * cols)


def _outside_mask(grid: tuple[int, int], size: int, like: torch.Tensor) -> torch.Tensor:
    """``(H, W, S*S, 1)``: -inf where a CA neighbour falls outside the map (excluded from the softmax), else 0.

    Added to the scores rather than applied with ``masked_fill``, whose broadcast boolean mask
    costs as much as the softmax itself on CPU.
    """
    height, width = grid
    ones = like.new_ones(1, 1, height, width)
    inside = F.unfold(ones, size, padding=size // 2).view(size * size, height, width)  # (S*S, H, W)
    mask = like.new_zeros(size * size, height, width).masked_fill(inside == 0, float("-inf"))
    return mask.permute(1, 2, 0).unsqueeze(3)


class _Cached(NamedTuple):
    """A group's fused weights and what they were derived from (see `FusedMoKEGroup.fused_weights`)."""

    key: tuple[torch.dtype, torch.device, float]  # dtype and device of the values, the output scale
    order: tuple[int, ...]  # the group's tensors (`_Walk.tensors`' order) sorted into concatenable runs
    runs: tuple[tuple[int, int, bool], ...]  # each run's (start, stop) in ``order``; True: 0-d tensors, stacked
    values: torch.Tensor  # (P,) every parameter and buffer of the group, concatenated run by run
    weights: FusedWeights


_submodules = attrgetter("_modules")
_parameters = attrgetter("_parameters")
_buffers = attrgetter("_buffers")


class _Walk(NamedTuple):
    """A group's ``modules()`` as it was recorded, and what that result depends on: every module's submodules.

    Checked per call with C-level maps over the recorded modules, no Python loop per module: the walk
    itself cost almost half of the old reuse check. The group itself is not recorded (no reference
    cycle, so a dropped model is freed at once; a copy sharing its ``__dict__`` is still checked right:
    the walk depends only on the submodules, and the group's own are compared).
    """

    children: tuple[torch.nn.Module | None, ...]  # the group's submodules
    branches: tuple[torch.nn.Module, ...]  # the rest of ``modules()`` that had submodules, and theirs, in order
    branch_children: list[tuple[torch.nn.Module | None, ...]]
    leaves: tuple[torch.nn.Module, ...]  # the descendants that had none
    with_parameters: tuple[torch.nn.Module, ...]  # the descendants that had parameters, and those that had none
    without_parameters: tuple[torch.nn.Module, ...]
    with_buffers: tuple[torch.nn.Module, ...]  # the same for buffers
    without_buffers: tuple[torch.nn.Module, ...]

    @classmethod
    def of(cls, root: torch.nn.Module) -> _Walk:
        descendants = tuple(root.modules())[1:]
        branches = tuple(m for m in descendants if m._modules)
        return cls(
            tuple(root._modules.values()), branches, list(map(tuple, map(dict.values, map(_submodules, branches)))),
            tuple(m for m in descendants if not m._modules),
            tuple(m for m in descendants if m._parameters), tuple(m for m in descendants if not m._parameters),
            tuple(m for m in descendants if m._buffers), tuple(m for m in descendants if not m._buffers),
        )  # fmt: skip

    def holds(self, root: torch.nn.Module) -> bool:
        """Whether ``root.modules()`` would still give the recorded modules, none of which has gained a first
        parameter or buffer: no submodule anywhere added, removed or replaced, by any route (``setattr``,
        writes to ``_modules`` such as ``ModuleList.insert`` or ``swap_submodule``, a module's dicts replaced)."""
        return (
            tuple(root._modules.values()) == self.children
            and list(map(tuple, map(dict.values, map(_submodules, self.branches)))) == self.branch_children
            and not any(map(_submodules, self.leaves))
            and not any(map(_parameters, self.without_parameters))
            and not any(map(_buffers, self.without_buffers))
        )

    def tensors(self, root: torch.nn.Module) -> list[torch.Tensor]:
        """Every parameter and buffer of ``root.modules()`` (given `holds`), read now from the modules' own
        dicts, where ``functional_call``, ``load_state_dict(assign=True)`` and ``.data =`` leave theirs."""
        found = chain(
            root._parameters.values(),
            root._buffers.values(),
            chain.from_iterable(map(dict.values, map(_parameters, self.with_parameters))),
            chain.from_iterable(map(dict.values, map(_buffers, self.with_buffers))),
        )
        return [t for t in found if t is not None]


def _runs(tensors: list[torch.Tensor]) -> tuple[tuple[int, ...], tuple[tuple[int, int, bool], ...]]:
    """An order of ``tensors`` and its runs that one ``cat`` each joins: same trailing shape, dtype, device
    (0-d tensors, which ``cat`` refuses, are stacked). One ``cat`` of many tensors costs a fraction of
    flattening each tensor first, which is what a single ``cat`` of all of them would need."""
    kinds: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        kinds.setdefault((tuple(t.shape[1:]) if t.dim() else None, t.dtype, t.device), []).append(i)
    order, runs = [], []
    for (trailing, _, _), indices in kinds.items():
        runs.append((len(order), len(order) + len(indices), trailing is None))
        order += indices
    return tuple(order), tuple(runs)


def _concatenated(tensors: list[torch.Tensor], order: tuple[int, ...], runs: tuple[tuple[int, int, bool], ...]) -> torch.Tensor:
    """``(P,)``: the values of ``tensors`` run by run (raises if a tensor no longer fits its run's shape)."""
    ordered = itemgetter(*order)(tensors) if len(order) > 1 else tuple(tensors)
    joined = [(torch.stack if zero_d else torch.cat)(ordered[start:stop]) for start, stop, zero_d in runs]
    return torch.cat([t.view(-1) for t in joined]) if len(joined) > 1 else joined[0].view(-1)


def _may_cache() -> bool:
    """Whether fused weights may be cached: autograd is off, and no compiler or tracer (ONNX, TorchScript)
    has to see them derived from the parameters (it would record the cached tensors as constants)."""
    return not (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing())


def _full_precision(like: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off while deriving fused weights from the parameters: they come out in the parameters' dtype
    whatever the caller's autocast, so weights cached under bf16 autocast also serve an fp32 call (the
    forward's own ops still autocast them), and the products are rounded once, not twice. (A device
    without autocast, such as ``meta`` for FLOP counts, has none to turn off.)"""
    device = like.device.type
    return torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else contextlib.nullcontext()


class FusedMoKEGroup(MoKEGroup):
    """`MoKEGroup` computed with grouped ops and a d-space carry (identical results)."""

    # Recompute the d-space ops in backward (activation checkpointing): less memory for large models
    # and batches, about 30% more time per training step on a small model (set by `AUFormer`).
    recompute: bool = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cache: _Cached | None = None  # the fused weights of the last call without autograd
        self._walk: _Walk | None = None  # self.modules(), recorded for that cache's check
        # (the previous group's up_weight, this group's cached weights, their carry map and bias)
        self._carry_cache: tuple[torch.Tensor, FusedWeights, tuple[torch.Tensor, torch.Tensor]] | None = None
        # Depends on the grid and S only: built once, moved and cast with the module (not saved).
        ca = self.experts[0].ca
        mask = _outside_mask(self.grid_size, ca.size, torch.zeros(())) if ca is not None else None
        self.register_buffer("ca_mask", mask, persistent=False)

    def _cat(self, name: str, dim: int = 0) -> torch.Tensor:
        """The experts' parameter ``name`` (e.g. ``"ca.q.weight"``) concatenated along ``dim``."""
        get = attrgetter(name)  # C-level attribute walk: Module.get_parameter costs more than the cat itself
        return torch.cat([get(expert) for expert in self.experts], dim=dim)

    @property
    def d(self) -> int:
        return self.experts[0].down.out_features

    @property
    def scale(self) -> float:
        return self.experts[0].scale

    def fused_weights(self) -> FusedWeights:
        """The fused tensors; without autograd, cached and reused while the group's values are unchanged.

        Why the values themselves are compared: a parameter can change with neither a new storage
        nor a version-counter bump (fused optimiser kernels, ``.data`` writes, collectives such as
        ``dist.broadcast``), and ``functional_call`` swaps in other tensors for one call. So every
        call reads the group's current parameters and buffers and reuses the weights only when their
        values, dtype, device and the output scale are those they were built from (``equal``: a NaN
        never equals, so NaN weights are rebuilt every call).

        How the check is kept cheap (a ViT-B/16 group, 1 thread: about 260 against 470 us for the old
        walk-flatten-compare when called alone, a rebuild 1.5 ms; inside the forward, where caches are
        cold, 550 against 710 us; docs/performance.md), with nothing cached but where to look:
        the ``self.modules()`` walk is recorded once and per call only checked, each module's submodules
        against the record (`_Walk.holds`: any route of change, hooks or none, makes a re-walk); the tensors
        are read afresh from the modules' own dicts; they are joined by one ``cat`` per run of like-shaped
        tensors (`_runs`), not flattened one by one; a tensor no longer fitting its run makes that ``cat``
        raise, which counts as a change. On a GPU the ``equal`` waits for the device, once per group.
        """
        if not _may_cache():
            return self._build_fused_weights()
        walk = self._walk
        if walk is None or not walk.holds(self):
            walk = self._walk = _Walk.of(self)
        tensors = walk.tensors(self)
        cache = self._cache
        if cache is not None and len(tensors) == len(cache.order):
            with contextlib.suppress(RuntimeError):  # a tensor reshaped out of its run (see the docstring)
                values = _concatenated(tensors, cache.order, cache.runs)  # (P,)
                if cache.key == (values.dtype, values.device, self.scale) and torch.equal(cache.values, values):
                    return cache.weights
        order, runs = _runs(tensors)
        values = _concatenated(tensors, order, runs)
        weights = self._build_fused_weights()
        self._cache = _Cached((values.dtype, values.device, self.scale), order, runs, values, weights)
        return weights

    def _build_fused_weights(self) -> FusedWeights:
        with _full_precision(self.experts[0].down.weight):  # weights in the parameters' dtype (see the helper)
            return self._derive_fused_weights()

    def _derive_fused_weights(self) -> FusedWeights:
        experts, d, first = len(self.experts), self.d, self.experts[0]
        conv_weight, conv_bias = self._cat("conv.weight"), self._cat("conv.bias")  # (C, d, 3, 3), (C,)
        eye = torch.eye(d, dtype=conv_weight.dtype, device=conv_weight.device).expand(experts, d, d)  # (E, d, d)
        prefix_blocks = eye  # (E, d_out, d_in): M'' itself, when no MRF branch carries the identity
        branch_weights, branch_bias = (), torch.zeros_like(conv_bias)
        if first.mrf is not None:
            k = len(first.mrf.branches)
            fuse = self._cat("mrf.fuse.weight").view(experts, d, k, d)  # (E, d_out, k, d_mid)
            branches = torch.stack([self._cat(f"mrf.branches.{j}.weight") for j in range(k)])  # (k, C, d, 3, 3)
            branches = branches.view(k, experts, d, d, 3, 3)  # (k, E, d_mid, d_in, 3, 3)
            folded = torch.einsum("eojc,jeciyx->jeoiyx", fuse, branches)  # (k, E, d_out, d_in, 3, 3)
            centre = torch.zeros_like(folded)
            centre[0, :, :, :, 1, 1] = eye  # + M'': the centre tap of any dilation is the pixel itself
            folded = folded + centre
            branch_weights = tuple(w.reshape(experts * d, d, 3, 3).contiguous(memory_format=torch.channels_last) for w in folded)
            branch_biases = torch.stack([self._cat(f"mrf.branches.{j}.bias") for j in range(k)])  # (k, C)
            branch_bias = torch.einsum("eojc,jec->eo", fuse, branch_biases.view(k, experts, d)).reshape(-1)
            branch_bias = branch_bias + self._cat("mrf.fuse.bias")
            prefix_blocks = folded[..., 1, 1].sum(0)  # (E, d_out, d_in)
        qkv_weight = qkv_bias = ca_mask = None
        prefix_bias = branch_bias
        if first.ca is not None:
            temperature = 1.0 / math.sqrt(d)
            q, k_, v = (self._cat(f"ca.{n}.weight").view(experts, d, d) for n in "qkv")  # (E, d_out, d_in) each
            qkv_weight = torch.cat([_block_diagonal(q * temperature), _block_diagonal(k_), _block_diagonal(v)])
            qkv_bias = torch.cat([self._cat("ca.q.bias") * temperature, self._cat("ca.k.bias"), self._cat("ca.v.bias")])
            prefix_blocks = prefix_blocks + v  # CA on a 1x1 image is V itself
            prefix_bias = prefix_bias + self._cat("ca.v.bias")
            ca_mask = self.ca_mask
        up_weight = self._cat("up.weight", dim=1)  # (D, C)
        up_bias = torch.stack([expert.up.bias for expert in self.experts])  # (E, D)
        mean = self.scale / experts
        return FusedWeights(
            down_weight=self._cat("down.weight"), down_bias=self._cat("down.bias"),
            conv_weight=conv_weight.contiguous(memory_format=torch.channels_last), conv_bias=conv_bias,
            conv_centre=_block_diagonal(conv_weight[:, :, 1, 1].view(experts, d, d)),
            branch_weights=branch_weights, branch_bias=branch_bias, qkv_weight=qkv_weight, qkv_bias=qkv_bias,
            ca_mask=ca_mask, prefix_weight=_block_diagonal(prefix_blocks), prefix_bias=prefix_bias,
            up_weight=up_weight, up_bias=up_bias, mean_weight=up_weight * mean, mean_bias=up_bias.sum(0) * mean,
        )  # fmt: skip

    def _context_attention(self, m: torch.Tensor, w: FusedWeights) -> torch.Tensor:
        """Eq. 5 on channels-last ``m`` ``(B, H, W, C)`` -> ``(B, H, W, C)`` (as `moke.context_attention`)."""
        size = self.experts[0].ca.size
        pad, channels = size // 2, m.shape[-1]
        qkv = F.linear(m, w.qkv_weight, w.qkv_bias)  # (B, H, W, 3C), Q already divided by sqrt(d)
        q = qkv[..., :channels]
        kv = F.pad(qkv[..., channels:], (0, 0, pad, pad, pad, pad))  # (B, H+2p, W+2p, 2C), zeros outside
        # The S*S shifted maps stacked on dim 3, channels innermost, so that the softmax over the
        # neighbours runs vectorised across channels: one copy of the 2C-wide K|V map per shift.
        height, width = m.shape[1:3]
        kv_nbr = torch.stack([kv[:, i : i + height, j : j + width] for i in range(size) for j in range(size)], dim=3)
        k_nbr, v_nbr = kv_nbr[..., :channels], kv_nbr[..., channels:]  # (B, H, W, S*S, C) each
        scores = (q.unsqueeze(3) * k_nbr).add_(w.ca_mask)  # (B, H, W, S*S, C); in place: one 9x tensor less
        return (scores.softmax(dim=3) * v_nbr).sum(dim=3)  # (B, H, W, C)

    def _hidden(self, z: torch.Tensor, w: FusedWeights) -> torch.Tensor:
        """Down-projected tokens ``(B, T, C)`` -> every expert's ``M'' + K_MRF + K_CA`` ``(B, T, C)``."""
        batch, _, channels = z.shape
        prefix_count, (height, width) = self.num_prefix_tokens, self.grid_size
        dilations = [branch.dilation[0] for branch in self.experts[0].mrf.branches] if self.experts[0].mrf else []
        # Patch tokens as a channels-last image: (B, H*W, C) -> (B, C, H, W) is a view, no copy.
        a = quick_gelu(z[:, prefix_count:]).view(batch, height, width, channels).permute(0, 3, 1, 2)
        m = quick_gelu(F.conv2d(a, w.conv_weight, w.conv_bias, padding=1, groups=len(self.experts)))  # (B, C, H, W)
        h = m
        for j, (weight, r) in enumerate(zip(w.branch_weights, dilations)):  # M'' + K_MRF, k grouped convs
            branch = F.conv2d(m, weight, w.branch_bias if j == 0 else None, padding=r, dilation=r, groups=len(self.experts))
            h = branch if j == 0 else h + branch
        h = h.permute(0, 2, 3, 1)  # (B, H, W, C), a view
        if w.qkv_weight is not None:
            h = h + self._context_attention(m.permute(0, 2, 3, 1), w)
        # Prefix tokens: 1x1 images, where every operator reduces to its centre tap (see the module docstring).
        m_prefix = quick_gelu(F.linear(quick_gelu(z[:, :prefix_count]), w.conv_centre, w.conv_bias))  # (B, P, C)
        h_prefix = F.linear(m_prefix, w.prefix_weight, w.prefix_bias)  # (B, P, C)
        return torch.cat([h_prefix, h.reshape(batch, height * width, channels)], dim=1)  # (B, P + H*W, C)

    def _carry_down(self, carry: ExpertState, w: FusedWeights) -> tuple[torch.Tensor, torch.Tensor]:
        """``Down_i(K_prev,i) = h_prev @ map^T + bias``: the block-diagonal ``(C, C)`` map and ``(C,)`` bias."""
        # Both inputs are derived tensors that nothing writes in place: their identity names their values.
        if self._carry_cache is not None and self._carry_cache[0] is carry.up_weight and self._carry_cache[1] is w:
            return self._carry_cache[2]
        experts = len(self.experts)
        down = w.down_weight.view(experts, self.d, -1)  # (E, d_out, D)
        up = carry.up_weight.view(-1, experts, self.d)  # (D, E, d_in)
        with _full_precision(down):
            carry_map = _block_diagonal(torch.einsum("eoD,Dei->eoi", down, up) * self.scale)  # (C, C)
            carry_bias = torch.einsum("eoD,eD->eo", down, carry.up_bias).reshape(-1) * self.scale  # (C,)
        if self._cache is not None and self._cache.weights is w:  # cached weights: cache their carry too
            self._carry_cache = (carry.up_weight, w, (carry_map, carry_bias))
        return carry_map, carry_bias

    def forward(self, x_norm: torch.Tensor, carry: ExpertState | None) -> tuple[torch.Tensor, ExpertState]:
        w = self.fused_weights()
        z = F.linear(x_norm, w.down_weight, w.down_bias)  # (B, T, C)
        if carry is not None:
            carry_map, carry_bias = self._carry_down(carry, w)
            z = z + F.linear(carry.hidden, carry_map, carry_bias)
        if torch.is_grad_enabled() and self.recompute:
            # Keep only z for backward and recompute the d-space ops there: CA's 9x unfolded tensors
            # would otherwise make activation memory grow with N (see benchmarks/README.md).
            hidden = checkpoint(self._hidden, z, w, use_reentrant=False)
        else:
            hidden = self._hidden(z, w)
        hidden = F.dropout(hidden, self.experts[0].dropout.p, self.training)
        mean_output = F.linear(hidden, w.mean_weight, w.mean_bias)  # (B, T, D)
        return mean_output, ExpertState(hidden, w.up_weight, w.up_bias)

    def cls_outputs(self, state: ExpertState) -> torch.Tensor:
        """Each expert's CLS-token output ``(B, E, D)``, built only for that one token."""
        cls_hidden = state.hidden[:, 0].view(state.hidden.shape[0], len(self.experts), self.d)  # (B, E, d)
        up = state.up_weight.view(-1, len(self.experts), self.d)  # (D, E, d)
        return self.scale * (torch.einsum("bei,Dei->beD", cls_hidden, up) + state.up_bias)
