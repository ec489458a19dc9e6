"""Attention for RoPE-ID's experimental ``rotary_window`` and ``far_field`` options.

With ``rotary_window = W``, a key ``W`` or more tokens before the query is scored by the unrotated
channel pairs only; ``far_field = "log_count"`` adds a logit bias to those far keys, and the layers of ``local_layers``
do not see them at all (a sliding window; see ``RopeIDParameters`` in ``rope_id.py``). No stock attention kernel computes this, so this file brings
its own, in transformers' attention-function format, on a model-local ``AttentionInterface``:

- ``"eager"``: scores built by hand (returns the attention weights);
- ``"sdpa"``: one fused ``scaled_dot_product_attention`` call over every key twice.

Every other implementation (flash_attention_*, flex_attention, paged, a serving engine's backend such
as vLLM's) would ignore the window, so it is refused with one clear error instead of silently
computing plain RoPE-ID attention. LlamaRopeIDAttention picks this interface at construction when the
config sets a window; without one it uses transformers' ``ALL_ATTENTION_FUNCTIONS`` unchanged.

This file travels with saved checkpoints as remote code: it imports only torch, transformers, the
standard library and its sibling ``rope_id.py`` (relatively), never ``hf_ropeid``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import AttentionInterface
from transformers.models.llama.modeling_llama import repeat_kv

from .rope_id import RopeIDParameters, far_field_bias

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
    if (rope_parameters or {}).get("rotary_window") is None:
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


def rotary_window_attention(
    module, query, key, value, attention_mask, query_start: int, dropout: float = 0.0, kernel: str = "sdpa"
):
    """Attention for ``rotary_window``: keys W or more tokens back are scored by the unrotated pairs only.

    ``query_start`` is the cache index of the first query; key ``j`` sits at index ``j``.
    ``attention_mask`` may be None (causal), a boolean mask (True = attend) or an additive float mask,
    shaped [batch, 1, q, k]. ``kernel``: "sdpa" (fused kernel, no attention weights returned) or "eager"
    (scores built by hand; returns the weights). Long no-grad inputs are processed 256 queries at a time
    (bounded memory; on CPU this was also the fastest block for the sdpa kernel, of 128..2048).
    """
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 4):
        implementation = getattr(getattr(module, "config", None), "_attn_implementation", None)
        raise ValueError(
            f"rotary_window needs a 4-D tensor attention mask, which attn_implementation={implementation!r} does "
            "not build; load the model with attn_implementation='sdpa' (fused) or 'eager'."
        )
    if kernel not in WINDOW_IMPLEMENTATIONS:
        raise ValueError(f"Unknown rotary_window kernel {kernel!r}; accepted: 'sdpa', 'eager'.")
    q_len, k_len = query.shape[2], key.shape[2]
    block = 256
    if not torch.is_grad_enabled() and q_len > 2 * block:
        parts = []
        for start in range(0, q_len, block):
            stop, visible = min(start + block, q_len), min(k_len, query_start + start + block)
            mask = None if attention_mask is None else attention_mask[:, :, start:stop, :visible]
            part, _ = rotary_window_attention(
                module, query[:, :, start:stop], key[:, :, :visible], value[:, :, :visible], mask,
                query_start + start, kernel=kernel,
            )
            parts.append(part)
        return torch.cat(parts, dim=1), None
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    p: RopeIDParameters = module.rope_id
    query_positions = torch.arange(query_start, query_start + q_len, device=query.device)
    key_positions = torch.arange(k_len, device=query.device)
    distance = query_positions[:, None] - key_positions[None, :]
    far_bias = None
    local = module.layer_idx in p.local_layers
    if p.far_field == "log_count" and not local:
        far_bias = far_field_bias(query_positions, key_positions, p.training_length, p.rotary_window)
    attend = _rotary_window_sdpa if kernel == "sdpa" else _rotary_window_eager
    return attend(module, query, key, value, attention_mask, distance, far_bias, dropout, local=local)


def _rotary_window_eager(module, query, key, value, attention_mask, distance, far_bias, dropout, local=False):
    p: RopeIDParameters = module.rope_id
    n, half, k_len = p.num_rotated_pairs, query.shape[-1] // 2, key.shape[2]

    def split(x):  # (rotated channels, unrotated channels); channel i pairs with i + half
        return (torch.cat([x[..., :n], x[..., half:half + n]], -1), torch.cat([x[..., n:half], x[..., half + n:]], -1))

    (q_rot, q_free), (k_rot, k_free) = split(query), split(key)
    near = (q_rot @ k_rot.transpose(2, 3)).masked_fill_(distance >= p.rotary_window, 0.0)
    scores = (q_free @ k_free.transpose(2, 3)).add_(near).mul_(module.scaling)
    if far_bias is not None:
        scores = scores.add_(far_bias.to(scores.dtype))
    lowest = torch.finfo(scores.dtype).min  # not -inf: fully masked (padding) rows stay finite
    scores = scores.masked_fill_(distance < 0, lowest)
    if local:  # a sliding window: far keys are not seen at all, except the first (the sink)
        outside = distance >= p.rotary_window
        outside[:, 0] = False
        scores = scores.masked_fill_(outside, lowest)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill_(~attention_mask[..., :k_len], lowest)
    elif attention_mask is not None:
        scores = scores.add_(attention_mask[..., :k_len]).clamp_(min=lowest)
    # at least float32 (bf16 scores), and float64 stays float64: its masked minimum would be -inf in float32
    softmax_dtype = torch.promote_types(scores.dtype, torch.float32)
    weights = nn.functional.softmax(scores, dim=-1, dtype=softmax_dtype).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def _rotary_window_sdpa(module, query, key, value, attention_mask, distance, far_bias, dropout, narrow=True,
                        local=False):
    """One fused sdpa call over the keys twice: once as is (allowed only within W) and once with its
    rotated pairs zeroed (allowed only beyond W). Each key is visible in exactly one copy, so the softmax
    is exactly the windowed one. Each copy holds only the keys some query of this call can see in it (the
    near copy the last W + queries keys, the far copy the keys W or more before the last query), so a
    block of queries late in a long input costs about one pass over its keys, not two."""
    p: RopeIDParameters = module.rope_id
    n, half, k_len = p.num_rotated_pairs, query.shape[-1] // 2, key.shape[2]
    # Columns j with 0 <= distance < W for some query (near) and distance >= W for some query (far);
    # distance[i, j] = query_position_i - j, rows in increasing position.
    first, last = int(distance[0, 0]), int(distance[-1, 0])  # positions of the first and last query
    near_start = min(k_len - 1, max(0, first - p.rotary_window + 1)) if narrow else 0
    far_stop = max(0, min(k_len, last - p.rotary_window + 1)) if narrow else k_len
    if local:  # a sliding window: the far copy holds only the first key (the sink)
        far_stop = min(far_stop, 1)
    whole = (key, value, distance, far_bias)
    far_key = key[:, :, :far_stop].clone()
    far_key[..., :n] = 0
    far_key[..., half:half + n] = 0
    far_value, far_distance = value[:, :, :far_stop], distance[:, :far_stop]
    key, value, distance = key[:, :, near_start:], value[:, :, near_start:], distance[:, near_start:]
    if far_bias is not None:
        far_bias = far_bias[:, :far_stop]
    # A quarter of the dtype's minimum: kernels that rescale the mask (exp2 tricks) must not reach -inf,
    # or fully masked (padding) rows become NaN instead of staying finite as in the eager path.
    lowest = torch.finfo(query.dtype).min / 4
    near_mask = torch.zeros(distance.shape, dtype=query.dtype, device=query.device)
    near_mask.masked_fill_((distance < 0) | (distance >= p.rotary_window), lowest)
    far_mask = (torch.zeros(far_distance.shape, dtype=query.dtype, device=query.device) if far_bias is None
                else far_bias.to(query.dtype))
    far_mask = far_mask.masked_fill(far_distance < p.rotary_window, lowest)
    mask = torch.cat([near_mask, far_mask], dim=-1)[None, None]
    if attention_mask is not None:
        padding = attention_mask[..., :k_len]
        if padding.dtype == torch.bool:
            padding = torch.zeros(padding.shape, dtype=query.dtype, device=query.device).masked_fill_(~padding, lowest)
        padding = padding.to(query.dtype).clamp(min=lowest)
        padding = torch.cat([padding[..., near_start:], padding[..., :far_stop]], dim=-1)
        mask = (mask + padding).clamp(min=lowest)
        if narrow and bool((mask <= lowest).all(-1).any()):
            # A row that sees no key at all (padding) averages every value, as the eager path does: all keys.
            key, value, distance, far_bias = whole
            return _rotary_window_sdpa(module, query, key, value, attention_mask, distance, far_bias, dropout, False,
                                       local)
    output = nn.functional.scaled_dot_product_attention(
        query, torch.cat([key, far_key], dim=2), torch.cat([value, far_value], dim=2), attn_mask=mask,
        dropout_p=dropout, scale=module.scaling,
    )
    return output.transpose(1, 2).contiguous(), None


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
