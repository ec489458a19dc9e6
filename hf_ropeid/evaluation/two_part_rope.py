"""Self-Extend and ReRoPE: training-free extensions that keep a RoPE model exact inside a window.

Both score a key at distance ``t = i - j`` from its query with the model's own RoPE at the true
distance when ``t < W`` (the neighbour window) and at a substitute distance beyond it:

- ReRoPE (Su 2023): the distance is clamped to ``W``;
- Self-Extend (Jin et al., ICML 2024): grouped positions, ``floor(i / G) - floor(j / G) + W - floor(W / G)``
  (``G``: group size; continuous with the window at ``t = W``).

This is a two-part attention of the kind RoPE-ID's ``rotary_window`` kernel computes: every key is offered
twice to one fused ``scaled_dot_product_attention`` call, once as is (visible only within W) and once
re-rotated to its substitute position (visible only beyond W), so the softmax is exactly the two-part one.
The two copies need different *queries* as well, so queries and keys are widened to two head dims:
``[q, q_far]`` against ``[k, 0]`` (near copy) and ``[0, k_far]`` (far copy).

It is an evaluation baseline for plain-RoPE (``rope_type="default"``) Llama-family checkpoints, installed
by ``baselines.build_variant`` as attention implementation ``"two_part_rope"`` (registered here with
transformers' ``AttentionInterface`` and its sdpa mask); the settings travel in ``config.two_part_rope``.
Queries are processed 256 at a time without gradients (bounded memory at long lengths).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

IMPLEMENTATION = "two_part_rope"
KINDS = ("rerope", "self_extend")
QUERY_BLOCK = 256


def substitute_positions(kind: str, query_positions: torch.Tensor, key_positions: torch.Tensor, window: int,
                         group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, key) positions of the far copy; their difference is the substitute distance."""
    if kind == "rerope":
        return torch.full_like(query_positions, window), torch.zeros_like(key_positions)
    if kind == "self_extend":
        return query_positions // group + window - window // group, key_positions // group
    raise ValueError(f"Unknown two-part RoPE kind {kind!r}; accepted: {', '.join(KINDS)}.")


def _rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Llama's rotation of ``x`` [..., seq, d] to ``positions`` [seq] (negative positions un-rotate)."""
    from transformers.models.llama.modeling_llama import rotate_half

    angles = positions[:, None].to(torch.float32) * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return x * cos + rotate_half(x) * sin


def _inv_freq(config: Any, head_dim: int, device: torch.device) -> torch.Tensor:
    theta = float((config.rope_parameters or {}).get("rope_theta", 10_000.0))
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)


def two_part_rope_attention(module: nn.Module, query, key, value, attention_mask, dropout: float = 0.0,
                            scaling: float | None = None, position_ids: torch.Tensor | None = None, **kwargs):
    """Attention function (transformers' format) of the Self-Extend / ReRoPE baselines.

    ``query``/``key`` arrive rotated to their true positions (``position_ids``, else ``0..n-1`` ending at the
    last key); they are un-rotated and re-rotated to the substitute positions for the far copy.
    """
    from transformers.models.llama.modeling_llama import repeat_kv

    settings = module.config.two_part_rope
    kind, window, group = settings["kind"], int(settings["window"]), int(settings.get("group", 1))
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    batch, heads, q_len, head_dim = query.shape
    k_len = key.shape[2]
    if position_ids is not None and position_ids.shape[0] > 1 and not (position_ids == position_ids[:1]).all():
        raise ValueError("The Self-Extend / ReRoPE baselines need the same positions in every row of a batch.")
    if position_ids is not None and position_ids.shape[-1] == k_len:
        key_positions = position_ids[0].to(query.device)
    else:
        key_positions = torch.arange(k_len, device=query.device)
    query_positions = key_positions[k_len - q_len:]
    inv_freq = _inv_freq(module.config, head_dim, query.device)
    query_plain = _rotate(query, -query_positions, inv_freq)
    key_plain = _rotate(key, -key_positions, inv_freq)
    far_query_positions, far_key_positions = substitute_positions(kind, query_positions, key_positions, window, group)
    far_query = _rotate(query_plain, far_query_positions, inv_freq)
    far_key = _rotate(key_plain, far_key_positions, inv_freq)
    zeros = torch.zeros_like(key)
    keys = torch.cat([torch.cat([key, zeros], dim=-1), torch.cat([zeros, far_key], dim=-1)], dim=2)
    queries = torch.cat([query, far_query], dim=-1)
    values = torch.cat([value, value], dim=2)
    scale = scaling if scaling is not None else 1.0 / math.sqrt(head_dim)
    lowest = torch.finfo(query.dtype).min / 4
    padding = None
    if isinstance(attention_mask, torch.Tensor):
        padding = attention_mask[..., :k_len]
        if padding.dtype == torch.bool:
            padding = torch.zeros(padding.shape, dtype=query.dtype, device=query.device).masked_fill_(~padding, lowest)
        padding = padding.to(query.dtype).clamp(min=lowest)
    block = QUERY_BLOCK if not torch.is_grad_enabled() else q_len
    parts = []
    for start in range(0, q_len, block):
        stop = min(start + block, q_len)
        distance = query_positions[start:stop, None] - key_positions[None, :]
        causal = torch.arange(k_len - q_len + start, k_len - q_len + stop, device=query.device)[:, None] < \
            torch.arange(k_len, device=query.device)[None, :]
        near = torch.zeros(distance.shape, dtype=query.dtype, device=query.device)
        near.masked_fill_(causal | (distance >= window), lowest)
        far = torch.zeros_like(near).masked_fill_(causal | (distance < window), lowest)
        mask = torch.cat([near, far], dim=-1)[None, None]
        if padding is not None:
            rows = padding[..., start:stop, :] if padding.shape[-2] == q_len else padding
            mask = (mask + torch.cat([rows, rows], dim=-1)).clamp(min=lowest)
        out = nn.functional.scaled_dot_product_attention(
            queries[:, :, start:stop], keys, values, attn_mask=mask, dropout_p=dropout if module.training else 0.0,
            scale=scale,
        )
        parts.append(out)
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register() -> str:
    """Registers ``"two_part_rope"`` with transformers (attention and mask interfaces); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, two_part_rope_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)
    return IMPLEMENTATION


def self_extend_group(target_length: int, length: int, window: int) -> int:
    """The oracle group size: the smallest ``G`` with ``(L - W) * G + W >= n`` (1 inside L: plain RoPE)."""
    if target_length <= length:
        return 1
    return max(1, math.ceil((target_length - window) / (length - window)))


__all__ = ["IMPLEMENTATION", "KINDS", "register", "self_extend_group", "substitute_positions",
           "two_part_rope_attention"]
