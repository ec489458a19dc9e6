"""Llama with RoPE-ID positions: LlamaRopeIDModel and LlamaRopeIDForCausalLM.

Only what differs from Llama is written here:
- the rotary module computes angles in float64, reduced modulo 2*pi, from the RoPE-ID spectrum,
  and also returns the per-query temperature;
- the attention multiplies queries (never keys, so a KV cache stays valid) by that temperature.
Everything else (MLP, norms, masks, caches, generation, attention kernels) is Llama's own.

This file travels with saved checkpoints as remote code: it imports only torch, transformers, the
standard library and its siblings (relatively), never ``hf_ropeid``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers
from packaging import version
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    eager_attention_forward,
    repeat_kv,
    rotate_half,
)

from .configuration_rope_id import RopeIDConfig
from .rope_id import ROPE_TYPE, RopeIDParameters, far_field_bias, inv_freq, query_temperature, rotation_angles

MIN_TRANSFORMERS = "5.24.0"  # the oldest release this file was tested with
if version.parse(transformers.__version__) < version.parse(MIN_TRANSFORMERS):
    raise ImportError(
        f"RoPE-ID models need transformers>={MIN_TRANSFORMERS} (rope_parameters API); found "
        f"{transformers.__version__}. Upgrade with: pip install -U 'transformers>={MIN_TRANSFORMERS}'"
    )


def compute_rope_id_parameters(config, device=None, seq_len=None, layer_type=None) -> tuple[torch.Tensor, float]:
    """``ROPE_INIT_FUNCTIONS["rope_id"]``: the spectrum for stock rotary modules (float32 inv_freq).

    Stock Llama/Mistral/Qwen2 get the RoPE-ID spectrum this way; the temperature and the exact
    float64 phases need LlamaRopeIDForCausalLM.
    """
    frequencies = inv_freq(RopeIDParameters.from_config(config))
    return frequencies.to(device=device, dtype=torch.float32), 1.0


compute_rope_id_parameters.rope_id_implementation = 1  # marks our function (any copy of this file)


def register_rope_type() -> None:
    """Adds "rope_id" to transformers' ROPE_INIT_FUNCTIONS; refuses to replace somebody else's."""
    existing = ROPE_INIT_FUNCTIONS.get(ROPE_TYPE)
    if existing is None or getattr(existing, "rope_id_implementation", None) is not None:
        # Another copy of this file (the package and a checkpoint's remote code) computes the same spectrum.
        ROPE_INIT_FUNCTIONS[ROPE_TYPE] = compute_rope_id_parameters
        return
    raise RuntimeError(
        f"transformers' ROPE_INIT_FUNCTIONS already maps {ROPE_TYPE!r} to {existing.__module__}.{existing.__qualname__}, "
        "which is not RoPE-ID's. Two plugins claim the same rope type; import only one of them."
    )


register_rope_type()


class LlamaRopeIDRotaryEmbedding(nn.Module):
    """Returns ``(cos, sin, query_cos, query_sin)`` per position.

    The query's pair is the key's multiplied by the temperature: folding the temperature in here,
    once per forward pass, leaves each attention layer with exactly stock Llama's arithmetic.
    """

    def __init__(self, config: RopeIDConfig, device=None):
        super().__init__()
        self.config = config
        self.rope_type = ROPE_TYPE
        self.rope_id = RopeIDParameters.from_config(config)
        # float64 frequencies are a plain attribute, not a buffer: model.to(bfloat16) must not round
        # them, and from_pretrained's meta-device init must not leave them empty.
        self.frequencies = inv_freq(self.rope_id)
        # float32 copies for tools that read them; transformers' _init_weights refills both through
        # ROPE_INIT_FUNCTIONS["rope_id"] after from_pretrained (they would be uninitialised otherwise).
        self.inv_freq = nn.Buffer(self.frequencies.to(torch.float32), persistent=False)
        self.original_inv_freq = nn.Buffer(self.inv_freq.clone(), persistent=False)
        self.attention_scaling = 1.0
        self._frequencies_on_device = self.frequencies

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        if self._frequencies_on_device.device != x.device:
            self._frequencies_on_device = self.frequencies.to(x.device)
        angles = rotation_angles(position_ids, self._frequencies_on_device)
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        p = self.rope_id
        if p.temperature == "none":
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
            return cos, sin, cos, sin
        scale = query_temperature(position_ids, p.training_length, p.temperature, p.temperature_coefficient)
        scale = scale.to(torch.float64)[..., None]
        return cos.to(x.dtype), sin.to(x.dtype), (cos * scale).to(x.dtype), (sin * scale).to(x.dtype)


def apply_rope_id(q, k, cos, sin, query_cos, query_sin):
    """RoPE on q and k ([batch, heads, seq, head_dim]); the query's cos/sin carry the temperature."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    query_cos, query_sin = query_cos.unsqueeze(1), query_sin.unsqueeze(1)
    q_embed = (q * query_cos) + (rotate_half(q) * query_sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


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
    if kernel not in ("sdpa", "eager"):
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
    if p.far_field == "log_count":
        far_bias = far_field_bias(query_positions, key_positions, p.training_length, p.rotary_window)
    attend = _rotary_window_sdpa if kernel == "sdpa" else _rotary_window_eager
    return attend(module, query, key, value, attention_mask, distance, far_bias, dropout)


def _rotary_window_eager(module, query, key, value, attention_mask, distance, far_bias, dropout):
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
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill_(~attention_mask[..., :k_len], lowest)
    elif attention_mask is not None:
        scores = scores.add_(attention_mask[..., :k_len]).clamp_(min=lowest)
    # at least float32 (bf16 scores), and float64 stays float64: its masked minimum would be -inf in float32
    softmax_dtype = torch.promote_types(scores.dtype, torch.float32)
    weights = nn.functional.softmax(scores, dim=-1, dtype=softmax_dtype).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def _rotary_window_sdpa(module, query, key, value, attention_mask, distance, far_bias, dropout):
    """One fused sdpa call over every key twice: once as is (allowed only within W) and once with its
    rotated pairs zeroed (allowed only beyond W). Each key is visible in exactly one copy, so the softmax
    is exactly the windowed one; the cost is twice the keys, in exchange for the fused kernel."""
    p: RopeIDParameters = module.rope_id
    n, half, k_len = p.num_rotated_pairs, query.shape[-1] // 2, key.shape[2]
    far_key = key.clone()
    far_key[..., :n] = 0
    far_key[..., half:half + n] = 0
    # A quarter of the dtype's minimum: kernels that rescale the mask (exp2 tricks) must not reach -inf,
    # or fully masked (padding) rows become NaN instead of staying finite as in the eager path.
    lowest = torch.finfo(query.dtype).min / 4
    near_mask = torch.zeros(distance.shape, dtype=query.dtype, device=query.device)
    near_mask.masked_fill_((distance < 0) | (distance >= p.rotary_window), lowest)
    far_mask = torch.zeros_like(near_mask) if far_bias is None else far_bias.to(query.dtype)
    far_mask = far_mask.masked_fill(distance < p.rotary_window, lowest)
    mask = torch.cat([near_mask, far_mask], dim=-1)[None, None]
    if attention_mask is not None:
        padding = attention_mask[..., :k_len]
        if padding.dtype == torch.bool:
            padding = torch.zeros(padding.shape, dtype=query.dtype, device=query.device).masked_fill_(~padding, lowest)
        padding = padding.to(query.dtype).clamp(min=lowest)
        mask = (mask + torch.cat([padding, padding], dim=-1)).clamp(min=lowest)
    output = nn.functional.scaled_dot_product_attention(
        query, torch.cat([key, far_key], dim=2), torch.cat([value, value], dim=2), attn_mask=mask,
        dropout_p=dropout, scale=module.scaling,
    )
    return output.transpose(1, 2).contiguous(), None


class LlamaRopeIDAttention(LlamaAttention):
    def __init__(self, config: RopeIDConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.rope_id = RopeIDParameters.from_config(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if cache is None:  # the name transformers used before 5.24 (still passed by some callers)
            cache = kwargs.pop("past_key_values", None)
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)

        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        query_states, key_states = apply_rope_id(query_states, key_states, *position_embeddings)

        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)

        if self.rope_id.rotary_window is not None:
            filled = cache.get_seq_length(self.layer_idx) if cache is not None else key_states.shape[2]
            attn_output, attn_weights = rotary_window_attention(
                self, query_states, key_states, value_states, attention_mask,
                query_start=filled - query_states.shape[2], dropout=self.attention_dropout if self.training else 0.0,
                # eager returns attention weights; every other implementation gets the fused sdpa kernel
                kernel="eager" if self.config._attn_implementation == "eager" else "sdpa",
            )
            attn_output = self.o_proj(attn_output.reshape(*input_shape, -1).contiguous())
            return attn_output, attn_weights

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights


class LlamaRopeIDDecoderLayer(LlamaDecoderLayer):
    def __init__(self, config: RopeIDConfig, layer_idx: int):
        nn.Module.__init__(self)
        self.hidden_size = config.hidden_size
        self.self_attn = LlamaRopeIDAttention(config=config, layer_idx=layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class LlamaRopeIDPreTrainedModel(LlamaPreTrainedModel):
    config_class = RopeIDConfig
    config: RopeIDConfig
    _no_split_modules = ["LlamaRopeIDDecoderLayer"]
    _can_record_outputs = {
        "hidden_states": LlamaRopeIDDecoderLayer,
        "attentions": LlamaRopeIDAttention,
    }

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers writes only the saved class's own auto_map key; write all three so that
        # AutoConfig, AutoModel and AutoModelForCausalLM all load the checkpoint as remote code.
        self.config.auto_map = dict(AUTO_MAP)
        return super().save_pretrained(save_directory, *args, **kwargs)


class LlamaRopeIDModel(LlamaRopeIDPreTrainedModel, LlamaModel):
    def __init__(self, config: RopeIDConfig):
        LlamaRopeIDPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [LlamaRopeIDDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRopeIDRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


class LlamaRopeIDForCausalLM(LlamaRopeIDPreTrainedModel, LlamaForCausalLM):
    def __init__(self, config: RopeIDConfig):
        LlamaRopeIDPreTrainedModel.__init__(self, config)
        self.model = LlamaRopeIDModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


AUTO_MAP = {
    "AutoConfig": f"{RopeIDConfig.__module__.split('.')[-1]}.RopeIDConfig",
    "AutoModel": f"{__name__.split('.')[-1]}.LlamaRopeIDModel",
    "AutoModelForCausalLM": f"{__name__.split('.')[-1]}.LlamaRopeIDForCausalLM",
}

RopeIDConfig.register_for_auto_class("AutoConfig")
LlamaRopeIDModel.register_for_auto_class("AutoModel")
LlamaRopeIDForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "LlamaRopeIDForCausalLM",
    "LlamaRopeIDModel",
    "LlamaRopeIDPreTrainedModel",
    "compute_rope_id_parameters",
]
