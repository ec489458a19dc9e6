"""Attention for RoPE-ID's experimental ``rotary_window`` and ``far_field`` options.

With ``rotary_window = W``, a key ``W`` or more tokens before the query is scored by the unrotated
channel pairs only; ``far_field = "log_count"`` adds a logit bias to those far keys, and the layers of ``local_layers``
do not see them at all (a sliding window; see ``RopeIDParameters`` in ``rope_id.py``). No stock attention kernel computes this, so this file brings
its own, in transformers' attention-function format, on a model-local ``AttentionInterface``:

- ``"eager"``: scores built by hand (returns the attention weights);
- ``"sdpa"``: the two-pass kernel (``TwoPassAttention``): ordinary fused attentions over disjoint key sets
  merged by log-sum-exp, at the cost of plain causal attention.

Every other implementation (flash_attention_*, flex_attention, paged, a serving engine's backend such
as vLLM's) would ignore the window, so it is refused with one clear error instead of silently
computing plain RoPE-ID attention. LlamaRopeIDAttention picks this interface at construction when the
config sets a window; without one it uses transformers' ``ALL_ATTENTION_FUNCTIONS`` unchanged.

This file travels with saved checkpoints as remote code: it imports only torch, transformers, the
standard library and its sibling ``rope_id.py`` (relatively), never ``hf_ropeid``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import AttentionInterface
from transformers.models.llama.modeling_llama import repeat_kv

from .rope_id import ROPE_TYPE, RopeIDParameters, far_field_bias, far_field_query_bias

WINDOW_IMPLEMENTATIONS = ("eager", "sdpa")


def window_implementation_error(attn_implementation: Any) -> ValueError:
    """The one-line error for an attention implementation that cannot honour ``rotary_window``."""
    return ValueError(
        f"rope_parameters 'rotary_window'/'far_field' need attn_implementation 'eager' or 'sdpa' (RoPE-ID's own "
        f"window kernels); {attn_implementation!r} would ignore the window. Load the model with "
        "attn_implementation='sdpa' (fused) or 'eager', or convert with --recipe portable (no window) to use other "
        "kernels."
    )


def check_window_implementation(rope_parameters: dict[str, Any] | None, attn_implementation: str | None) -> None:
    """Raises ``window_implementation_error`` when a window is set and the implementation cannot honour it.

    ``None`` is accepted (transformers then picks sdpa, or eager where sdpa is unavailable).
    """
    rope_parameters = rope_parameters or {}
    if rope_parameters.get("rope_type") != ROPE_TYPE or rope_parameters.get("rotary_window") is None:
        return
    if attn_implementation is not None and attn_implementation not in WINDOW_IMPLEMENTATIONS:
        raise window_implementation_error(attn_implementation)


class RotaryWindowAttentionInterface(AttentionInterface):
    """The attention functions of a model with ``rotary_window``: its own eager and sdpa, nothing else.

    Unlike the global interface, a name it does not hold is an error rather than a fall-through to
    transformers' kernels, which know nothing of the window.
    """

    def get_interface(self, attn_implementation: str, default: Callable) -> Callable:
        if attn_implementation not in self._local_mapping:
            raise window_implementation_error(attn_implementation)
        return self._local_mapping[attn_implementation]


# ----------------------------------------------------------------------------------------------
# Positions: the one place where the window's distances, the sink and the far-field count come from.
#
# Every row is measured from its own first real token, which is where its position_ids start (a left-padded
# row of a batch, as generate() builds it, has positions 0, 1, ... from its first real token). Inside a row
# positions are contiguous, so the distance between two of its tokens is the difference of their cache
# indices; what padding changes is where the row starts: its sink (the first real key) and, with far_field,
# how many far keys a query has. Both backends below take the row starts from here.


def _visible(mask: torch.Tensor) -> torch.Tensor:
    """True where a boolean or additive mask lets a key through."""
    return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2


def row_starts(attention_mask: torch.Tensor | None, batch: int, key_stop: int) -> list[int]:
    """Cache index of each row's first real key: the first key its last query may attend to (0 without a mask)."""
    if attention_mask is None:
        return [0] * batch
    visible = _visible(attention_mask[:, 0, -1, :key_stop]).expand(batch, -1)
    first = torch.where(visible.any(-1), visible.int().argmax(-1), torch.zeros((), dtype=torch.long))
    return [int(x) for x in first.tolist()]


def mask_is_causal_after(attention_mask: torch.Tensor | None, starts: list[int], query_start: int, q_len: int,
                         key_stop: int) -> bool:
    """True when the mask says no more than "causal, from each row's first real key": what the two-pass kernel
    computes without reading the mask. A mask with holes (a fully masked query row, packed documents) is not."""
    if attention_mask is None:
        return True
    counts = _visible(attention_mask[..., :key_stop]).sum(-1)[:, 0]  # [batch or 1, q]: keys each query may attend to
    positions = torch.arange(query_start, query_start + q_len, device=counts.device)
    start = torch.tensor(starts, device=counts.device)[:, None]
    expected = (positions[None, :] - start + 1).clamp(min=0)
    real = positions[None, :] >= start  # queries before a row's first real key are padding: never compared
    return bool(((counts.expand_as(expected) == expected) | ~real).all())


# ----------------------------------------------------------------------------------------------
# The reference: every score built by hand (eager; returns the weights). Exact for any mask.


def _row_positions(starts: list[int], query_start: int, q_len: int, k_len: int, device) -> tuple[torch.Tensor, ...]:
    start = torch.tensor(starts, device=device)[:, None]
    query_positions = torch.arange(query_start, query_start + q_len, device=device)[None, :] - start  # [b, q]
    key_positions = torch.arange(k_len, device=device)[None, :] - start  # [b, k]; < 0: padding before the row
    return query_positions, key_positions


def _eager_attention(module, query, key, value, attention_mask, query_start, dropout):
    p: RopeIDParameters = module.rope_id
    n, half, k_len = p.num_rotated_pairs, query.shape[-1] // 2, key.shape[2]
    local = module.layer_idx in p.local_layers
    starts = row_starts(attention_mask, query.shape[0], k_len)
    query_positions, key_positions = _row_positions(starts, query_start, query.shape[2], k_len, query.device)
    distance = (query_positions[:, :, None] - key_positions[:, None, :])[:, None]  # [b, 1, q, k]

    def split(x):  # (rotated channels, unrotated channels); channel i pairs with i + half
        return (torch.cat([x[..., :n], x[..., half:half + n]], -1), torch.cat([x[..., n:half], x[..., half + n:]], -1))

    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    (q_rot, q_free), (k_rot, k_free) = split(query), split(key)
    near = (q_rot @ k_rot.transpose(2, 3)).masked_fill_(distance >= p.rotary_window, 0.0)
    scores = (q_free @ k_free.transpose(2, 3)).add_(near).mul_(module.scaling)
    sink = (key_positions == 0)[:, None, None, :]
    if p.far_field == "log_count" and not local:
        scores = scores.add_(far_field_bias_per_row(query_positions, key_positions, p).to(scores.dtype)[:, None])
    lowest = torch.finfo(scores.dtype).min  # not -inf: fully masked (padding) rows stay finite
    scores = scores.masked_fill_((distance < 0) | (key_positions < 0)[:, None, None, :], lowest)
    if local:  # a sliding window: far keys are not seen at all, except the row's first (the sink)
        scores = scores.masked_fill_((distance >= p.rotary_window) & ~sink, lowest)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill_(~attention_mask[..., :k_len], lowest)
    elif attention_mask is not None:
        scores = scores.add_(attention_mask[..., :k_len]).clamp_(min=lowest)
    # at least float32 (bf16 scores), and float64 stays float64: its masked minimum would be -inf in float32
    softmax_dtype = torch.promote_types(scores.dtype, torch.float32)
    weights = nn.functional.softmax(scores, dim=-1, dtype=softmax_dtype).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def far_field_bias_per_row(query_positions: torch.Tensor, key_positions: torch.Tensor, p: RopeIDParameters):
    """far_field_bias for rows of positions: ``[b, q]`` and ``[b, k]`` -> ``[b, q, k]`` (0 for padding keys)."""
    return torch.stack([far_field_bias(qp, kp.clamp(min=0), p.training_length, p.rotary_window) * (kp >= 0)
                        for qp, kp in zip(query_positions, key_positions)])


# ----------------------------------------------------------------------------------------------
# The two-pass kernel: the same attention as a few ordinary attentions over disjoint key sets, merged by
# their log-sum-exp (ring attention's merge). Near keys (distance < W, every channel) are a sliding window,
# computed in blocks of W queries; far keys (distance >= W, unrotated channels only) are one causal attention of
# q[W:] against k[:n-W]. Every part is an unmasked or a top-left causal attention, so each runs on the fused
# kernel with its causal block skipping, and no tensor of [queries, keys] is ever formed.


@dataclass(frozen=True)
class Span:
    """Indices ``start + c * stride + (0 .. length-1)`` for blocks ``c = 0 .. blocks-1``, each block in reverse
    order if ``reverse``: rows of a [b, h, n, d] tensor taken as views, not gathered (blocks must not overlap:
    ``stride >= length``, so that writes through the views are exact)."""

    start: int
    length: int
    blocks: int = 1
    stride: int = 0
    reverse: bool = False

    @property
    def index(self) -> torch.Tensor:  # [blocks, length]
        offsets = torch.arange(self.length - 1, -1, -1) if self.reverse else torch.arange(self.length)
        return self.start + torch.arange(self.blocks)[:, None] * self.stride + offsets

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [b, h, n, ...] -> [b, blocks, h, length, ...]: a view of x, rows in x's order (written in place)."""
        if self.blocks == 1:
            return x[:, :, self.start:self.start + self.length].unsqueeze(1)
        y = x[:, :, self.start:self.start + (self.blocks - 1) * self.stride + self.length]
        y = y.unfold(2, self.length, self.stride)  # [b, h, blocks, ..., length]
        return y.movedim(-1, 3).transpose(1, 2)  # [b, blocks, h, length, ...]

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel's input: [b * blocks, h, length, d], each block in the span's order (a view unless reversed)."""
        y = self.rows(x)
        y = y.flip(3) if self.reverse else y
        return y.reshape(y.shape[0] * y.shape[1], *y.shape[2:])

    def put(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        """A kernel output [b * blocks, h, length, ...] in ``rows``' layout and order."""
        y = y.unflatten(0, (batch, self.blocks))
        return y.flip(3) if self.reverse else y


@dataclass(frozen=True)
class Part:
    """One ordinary attention: queries ``q`` against keys ``k`` (spans of the row's queries and keys), causal
    (top-left) or not, on every channel or on the unrotated ones (``far``), with the far-field bias added to its
    log-sum-exp (``biased``)."""

    q: Span
    k: Span
    causal: bool
    far: bool = False
    biased: bool = False

    @property
    def q_index(self) -> torch.Tensor:
        return self.q.index

    @property
    def k_index(self) -> torch.Tensor:
        return self.k.index


EDGE_ROWS = 2048  # queries per reversed edge part (bounds the copy it makes)


def plan_parts(query_start: int, q_len: int, window: int, local: bool, far_field: bool) -> list[Part]:
    """The parts whose union is far-context attention for queries at ``query_start .. query_start + q_len - 1``
    over keys ``0 .. query_start + q_len - 1`` (indices from the row's first real key). Each (query, key) pair
    with ``0 <= distance`` is in exactly one part (``tests/test_two_pass_attention.py`` checks this against the
    distances): distance < W in a near part; otherwise, in a far part (key 0 apart under far_field, so that the
    bias spares the sink), or only key 0 on a local layer."""
    W, parts = window, []
    regular = []  # near blocks of W queries with a whole window of keys before them: one batched part each
    for first in range(0, q_len, W):
        m, a0 = min(W, q_len - first), query_start + first
        if m == W and a0 >= W:
            regular.append(first)
            continue
        parts.append(Part(Span(first, m), Span(a0, m), causal=True))  # the diagonal block
        full_start = max(0, a0 - W + m)
        if full_start < a0:  # keys every query of the block sees
            parts.append(Part(Span(first, m), Span(full_start, a0 - full_start), causal=False))
        edge = min(m - 1, a0 - W + m)  # keys a0-W+1 .. a0-W+m-1, seen by the block's earlier queries
        if edge > 0:  # reversed, they are a causal attention of queries m-1..1 against keys a0-W+m-1 down
            parts.append(Part(Span(first, m - 1, reverse=True),
                              Span(a0 - W + m - edge, edge, reverse=True), causal=True))
    if regular:  # consecutive blocks (the irregular ones are the first and the last)
        first, blocks = regular[0], len(regular)
        parts.append(Part(Span(first, W, blocks, W), Span(query_start + first, W, blocks, W), causal=True))
        # The edges are reversed copies, not views: a few thousand rows at a time keeps that copy small.
        group = max(1, EDGE_ROWS // W)
        for start in range(0, blocks, group):
            count, at = min(group, blocks - start), first + start * W
            parts.append(Part(Span(at, W - 1, count, W, reverse=True),
                              Span(query_start + at - W + 1, W - 1, count, W, reverse=True), causal=True))
    # Far keys: key j for the query at position a when j <= a - W.
    first_far_key = 1 if (far_field or local) else 0  # key 0 gets its own part: no bias, or the local sink
    if not local:
        i_first = max(0, W + first_far_key - query_start)  # the first query with a far key
        if i_first < q_len:
            last_seen = query_start + i_first - W  # the last far key of that query
            queries = Span(i_first, q_len - i_first)
            if last_seen > first_far_key:  # keys that every such query sees
                parts.append(Part(queries, Span(first_far_key, last_seen - first_far_key), causal=False, far=True,
                                  biased=far_field))
            parts.append(Part(queries, Span(last_seen, q_len - i_first), causal=True, far=True, biased=far_field))
    if first_far_key == 1:
        i_first = max(0, W - query_start)
        if i_first < q_len:
            parts.append(Part(Span(i_first, q_len - i_first), Span(0, 1), causal=False, far=True))
    return parts


class FusedKernel:
    """torch's fused attention that returns its log-sum-exp, and its backward (CPU: the flash kernel)."""

    @staticmethod
    def supports(query: torch.Tensor) -> bool:
        return query.device.type == "cpu" and query.dtype in (torch.float32, torch.float64, torch.bfloat16,
                                                              torch.float16)

    @staticmethod
    def forward(q, k, v, causal, scale):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out, lse

    @staticmethod
    def backward(grad_out, q, k, v, out, lse, causal, scale):
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out, q, k, v, out, lse, 0.0, causal, scale=scale)


class MathKernel:
    """The same contract in plain torch operations (any device and dtype); scores of one part at a time."""

    @staticmethod
    def _scores(q, k, causal, scale):
        k = repeat_kv(k, q.shape[1] // k.shape[1])
        acc = torch.promote_types(q.dtype, torch.float32)
        scores = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * scale
        if causal:
            above = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(above, float("-inf"))
        return scores

    @staticmethod
    def forward(q, k, v, causal, scale):
        scores = MathKernel._scores(q, k, causal, scale)
        lse = scores.logsumexp(-1)
        weights = (scores - lse[..., None]).exp()
        out = weights @ repeat_kv(v, q.shape[1] // v.shape[1]).to(weights.dtype)
        return out.to(q.dtype), lse

    @staticmethod
    def backward(grad_out, q, k, v, out, lse, causal, scale):
        groups = q.shape[1] // k.shape[1]
        weights = (MathKernel._scores(q, k, causal, scale) - lse[..., None]).exp()  # the merged probabilities
        acc = weights.dtype
        g = grad_out.to(acc)
        grad_v = weights.transpose(-1, -2) @ g
        grad_p = g @ repeat_kv(v, groups).to(acc).transpose(-1, -2)
        delta = (g * out.to(acc)).sum(-1, keepdim=True)
        grad_s = weights * (grad_p - delta) * scale
        grad_q = grad_s @ repeat_kv(k, groups).to(acc)
        grad_k = grad_s.transpose(-1, -2) @ q.to(acc)

        def fold(x):  # sum the query heads that share a key/value head
            return x.unflatten(1, (k.shape[1], groups)).sum(2) if groups > 1 else x

        return grad_q.to(q.dtype), fold(grad_k).to(k.dtype), fold(grad_v).to(v.dtype)


class TwoPassAttention(torch.autograd.Function):
    """Parts merged by log-sum-exp, with the exact backward: each part's backward kernel is run with the MERGED
    output and log-sum-exp (ring attention), since the fused kernels do not differentiate their log-sum-exp.
    Parts read and write their rows as views (``Span``), so nothing of [queries, keys] is formed."""

    @staticmethod
    def forward(ctx, query, key, value, far_key, query_bias, parts, scale, kernel):
        batch, heads, q_len, _ = query.shape
        acc = torch.promote_types(query.dtype, torch.float32)  # merged in at least float32; float64 stays
        out = torch.zeros(query.shape[:3] + (value.shape[-1],), dtype=acc, device=query.device)
        lse = torch.full((batch, heads, q_len), float("-inf"), dtype=acc, device=query.device)
        for part in parts:
            keys = far_key if part.far else key
            part_out, part_lse = kernel.forward(part.q.take(query), part.k.take(keys), part.k.take(value),
                                                part.causal, scale)
            part_out, part_lse = part.q.put(part_out, batch).to(acc), part.q.put(part_lse, batch).to(acc)
            if part.biased:
                part_lse = part_lse + part.q.rows(query_bias[:, None].to(acc))
            out_rows, lse_rows = part.q.rows(out), part.q.rows(lse)  # views: updated in place
            merged = torch.logaddexp(lse_rows, part_lse)
            out_rows.mul_((lse_rows - merged).exp()[..., None]).add_(part_out * (part_lse - merged).exp()[..., None])
            lse_rows.copy_(merged)
        out = out.to(query.dtype)
        ctx.save_for_backward(query, key, value, far_key, query_bias, out, lse)
        ctx.parts, ctx.scale, ctx.kernel = parts, scale, kernel
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, far_key, query_bias, out, lse = ctx.saved_tensors
        batch, acc = query.shape[0], torch.promote_types(query.dtype, torch.float32)
        grad_q = torch.zeros(query.shape, dtype=acc, device=query.device)
        grad_k, grad_far_k = (torch.zeros(key.shape, dtype=acc, device=key.device) for _ in range(2))
        grad_v = torch.zeros(value.shape, dtype=acc, device=value.device)
        grad_out = grad_out.to(query.dtype)
        lse_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32  # what the kernels take
        lse = lse.to(lse_dtype)
        biased_lse = lse - query_bias[:, None].to(lse_dtype) if any(part.biased for part in ctx.parts) else None
        for part in ctx.parts:
            keys = far_key if part.far else key
            part_lse = biased_lse if part.biased else lse
            dq, dk, dv = ctx.kernel.backward(
                part.q.take(grad_out), part.q.take(query), part.k.take(keys), part.k.take(value),
                part.q.take(out), part.q.take(part_lse).contiguous(), part.causal, ctx.scale)
            part.q.rows(grad_q).add_(part.q.put(dq, batch))
            part.k.rows(grad_far_k if part.far else grad_k).add_(part.k.put(dk, batch))
            part.k.rows(grad_v).add_(part.k.put(dv, batch))
        return (grad_q.to(query.dtype), grad_k.to(key.dtype), grad_v.to(value.dtype), grad_far_k.to(key.dtype),
                None, None, None, None)


class CudaFlashKernel:
    """torch's CUDA flash kernel (fp16 / bf16), which returns its log-sum-exp, and its backward op.

    Not exercised on this project's CPU machines: ``kernel_for`` checks it once per device and dtype against
    ``MathKernel`` (values and gradients, causal and not) and uses it only if it agrees; otherwise it warns once
    and the math kernel runs. Causal parts whose queries and keys differ in number go to the math kernel (flash's
    causal alignment for them is not the top-left one the plan needs)."""

    @staticmethod
    def _expand(q, x):
        return repeat_kv(x, q.shape[1] // x.shape[1])

    @staticmethod
    def forward(q, k, v, causal, scale):
        if causal and q.shape[2] != k.shape[2]:
            return MathKernel.forward(q, k, v, causal, scale)
        k, v = CudaFlashKernel._expand(q, k), CudaFlashKernel._expand(q, v)
        out, lse, *_ = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
        return out, lse

    @staticmethod
    def backward(grad_out, q, k, v, out, lse, causal, scale):
        if causal and q.shape[2] != k.shape[2]:
            return MathKernel.backward(grad_out, q, k, v, out, lse, causal, scale)
        groups = q.shape[1] // k.shape[1]
        k_full, v_full = CudaFlashKernel._expand(q, k), CudaFlashKernel._expand(q, v)
        empty = torch.empty(0, device=q.device)
        seed = torch.zeros(2, dtype=torch.int64, device=q.device)  # no dropout: the RNG state is never read
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_backward(
            grad_out.contiguous(), q, k_full, v_full, out, lse.float().contiguous(), empty, empty, q.shape[2],
            k.shape[2], 0.0, causal, seed, torch.zeros((), dtype=torch.int64, device=q.device), scale=scale)
        if groups > 1:
            dk, dv = (x.unflatten(1, (k.shape[1], groups)).sum(2) for x in (dk, dv))
        return dq, dk, dv


_CHECKED_KERNELS: dict = {}


def kernel_for(query: torch.Tensor):
    """The fastest kernel that is known to agree with ``MathKernel`` for this device and dtype."""
    if FusedKernel.supports(query):
        return FusedKernel
    if query.device.type != "cuda" or query.dtype not in (torch.float16, torch.bfloat16):
        return MathKernel
    key = (query.device, query.dtype)
    if key not in _CHECKED_KERNELS:
        _CHECKED_KERNELS[key] = CudaFlashKernel if _agrees(CudaFlashKernel, query.device, query.dtype) else MathKernel
    return _CHECKED_KERNELS[key]


def _agrees(kernel, device, dtype) -> bool:
    import warnings

    generator = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, g = (torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
                  for shape in ((1, 4, 96, 64), (1, 2, 96, 64), (1, 2, 96, 64), (1, 4, 96, 64)))
    try:
        for causal in (False, True):
            out, lse = kernel.forward(q, k, v, causal, 0.125)
            ref_out, ref_lse = MathKernel.forward(q, k, v, causal, 0.125)
            grads = kernel.backward(g, q, k, v, ref_out, ref_lse, causal, 0.125)
            ref_grads = MathKernel.backward(g, q, k, v, ref_out, ref_lse, causal, 0.125)
            for a, b in ((out, ref_out), (lse, ref_lse), *zip(grads, ref_grads)):
                if not torch.allclose(a.float(), b.float(), atol=3e-2, rtol=3e-2):
                    raise AssertionError("differs from the math kernel")
        return True
    except Exception as error:  # noqa: BLE001  (any failure of the op means: do not use it)
        warnings.warn(f"RoPE-ID two-pass attention: torch's CUDA flash kernel failed its check on {device} "
                      f"{dtype} ({error}); using the exact math kernel instead (slower).", stacklevel=3)
        return False


def _two_pass_rows(module, query, key, value, query_start, kernel):
    """Far-context attention for rows that share their first real key (index 0 here): [b, q, h, d]."""
    p: RopeIDParameters = module.rope_id
    n, half = p.num_rotated_pairs, query.shape[-1] // 2
    local = module.layer_idx in p.local_layers
    far_field = p.far_field == "log_count" and not local
    parts = plan_parts(query_start, query.shape[2], p.rotary_window, local, far_field)
    unrotated = torch.ones(query.shape[-1], dtype=query.dtype, device=query.device)
    unrotated[:n] = unrotated[half:half + n] = 0
    far_key = key * unrotated  # far keys are scored by the unrotated pairs only
    positions = torch.arange(query_start, query_start + query.shape[2], device=query.device)
    query_bias = far_field_query_bias(positions, p.training_length, p.rotary_window)
    query_bias = query_bias[None].expand(query.shape[0], -1).contiguous()
    out = TwoPassAttention.apply(query, key, value, far_key, query_bias, parts, module.scaling, kernel)
    return out.transpose(1, 2)


# Run as written under torch.compile (a graph break per layer, no fullgraph): the plan is Python over the
# positions, and dynamo's tracing of the in-place merge through strided views gave wrong values (aot_eager,
# torch 2.13), which tests/test_support.py catches.
@torch.compiler.disable
def _two_pass_attention(module, query, key, value, attention_mask, query_start):
    """The sdpa backend: the two-pass kernel per group of rows with the same first real key; rows of padding
    before it get zeros. A mask it cannot express (holes, packed documents) goes to the reference."""
    batch, _, q_len, _ = query.shape
    key_stop = query_start + q_len  # keys past the last query (a static cache's empty slots) are never seen
    starts = row_starts(attention_mask, batch, key_stop)
    if not mask_is_causal_after(attention_mask, starts, query_start, q_len, key_stop):
        return _eager_attention(module, query, key, value, attention_mask, query_start, 0.0)[0], None
    kernel = kernel_for(query)
    if len(set(starts)) == 1 and starts[0] == 0:
        return _two_pass_rows(module, query, key[:, :, :key_stop], value[:, :, :key_stop], query_start, kernel), None
    rows = []
    for row, start in enumerate(starts):  # left padding: each row measured from its own first real key
        skip = min(q_len, max(0, start - query_start))
        part = query.new_zeros(1, skip, query.shape[1], value.shape[-1])
        if skip < q_len:
            sl = slice(row, row + 1)
            own = _two_pass_rows(module, query[sl, :, skip:], key[sl, :, start:key_stop], value[sl, :, start:key_stop],
                                 query_start + skip - start, kernel)
            part = torch.cat([part, own], dim=1)
        rows.append(part)
    return torch.cat(rows, dim=0), None


def rotary_window_attention(
    module, query, key, value, attention_mask, query_start: int, dropout: float = 0.0, kernel: str = "sdpa"
):
    """Attention for ``rotary_window``: keys W or more tokens back are scored by the unrotated pairs only.

    ``query_start`` is the cache index of the first query; key ``j`` sits at index ``j``; each row's distances,
    sink and far-field count are measured from its first real key (``row_starts``). ``attention_mask`` may be
    None (causal), a boolean mask (True = attend) or an additive float mask, shaped [batch, 1, q, k].
    ``kernel``: "sdpa" (the two-pass kernel: no [queries, keys] tensor, no attention weights returned) or
    "eager" (scores built by hand; returns the weights). The two-pass kernel hands dropout and masks it cannot
    express (holes other than padding before a row) to the eager reference.
    """
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 4):
        implementation = getattr(getattr(module, "config", None), "_attn_implementation", None)
        raise ValueError(
            f"rotary_window needs a 4-D tensor attention mask, which attn_implementation={implementation!r} does "
            "not build; load the model with attn_implementation='sdpa' (fused) or 'eager'."
        )
    if kernel not in WINDOW_IMPLEMENTATIONS:
        raise ValueError(f"Unknown rotary_window kernel {kernel!r}; accepted: 'sdpa', 'eager'.")
    if kernel == "eager" or (dropout > 0.0 and module.training):
        return _eager_attention(module, query, key, value, attention_mask, query_start, dropout)
    return _two_pass_attention(module, query, key, value, attention_mask, query_start)


# The two in transformers' attention-function format. ``query_offset`` is the cache index of the first query
# (LlamaRopeIDAttention passes it; 0 without a cache); ``scaling`` arrives in kwargs and equals module.scaling,
# which the kernels read.
def rotary_window_eager_attention_forward(module, query, key, value, attention_mask, dropout=0.0, query_offset=0, **kwargs):
    return rotary_window_attention(
        module, query, key, value, attention_mask, query_start=query_offset, dropout=dropout, kernel="eager"
    )


def rotary_window_sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, query_offset=0, **kwargs):
    return rotary_window_attention(
        module, query, key, value, attention_mask, query_start=query_offset, dropout=dropout, kernel="sdpa"
    )


ROTARY_WINDOW_ATTENTION_FUNCTIONS = RotaryWindowAttentionInterface()
ROTARY_WINDOW_ATTENTION_FUNCTIONS["eager"] = rotary_window_eager_attention_forward
ROTARY_WINDOW_ATTENTION_FUNCTIONS["sdpa"] = rotary_window_sdpa_attention_forward

__all__ = [
    "ROTARY_WINDOW_ATTENTION_FUNCTIONS",
    "WINDOW_IMPLEMENTATIONS",
    "RotaryWindowAttentionInterface",
    "check_window_implementation",
    "rotary_window_attention",
    "rotary_window_eager_attention_forward",
    "rotary_window_sdpa_attention_forward",
]
