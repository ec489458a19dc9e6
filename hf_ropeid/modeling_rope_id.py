"""Llama with RoPE-ID positions: LlamaRopeIDModel and LlamaRopeIDForCausalLM.

Only what differs from Llama is written here; each class builds Llama's and replaces the one
module that differs:
- the rotary module computes angles in float64, reduced modulo 2*pi, from the RoPE-ID spectrum;
- the attention multiplies rotated queries (never keys, so a KV cache stays valid) by the query
  temperature of their position, and with the experimental ``rotary_window`` takes its attention
  functions from ``rotary_window.py`` instead of transformers' ALL_ATTENTION_FUNCTIONS.
Everything else (MLP, norms, masks, caches, generation, attention kernels) is Llama's own.

This file travels with saved checkpoints as remote code: it imports only torch, transformers, the
standard library and its siblings (relatively), never ``hf_ropeid``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import transformers
from packaging import version
from torch import nn
from transformers import initialization as init
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from .configuration_rope_id import RopeIDConfig
from .rope_id import ROPE_TYPE, RopeIDParameters, inv_freq, rotation_angles, scale_queries
from .rotary_window import ROTARY_WINDOW_ATTENTION_FUNCTIONS, check_window_implementation

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


class LlamaRopeIDRotaryEmbedding(LlamaRotaryEmbedding):
    """RoPE-ID's rotary module: returns ``(cos, sin)`` per position, like every transformers rotary module.

    Angles are formed in float64 and reduced modulo 2*pi (exact at any position), from the RoPE-ID
    spectrum. The query temperature is not folded in here: LlamaRopeIDAttention applies it to the
    rotated queries (never to keys, so a KV cache stays valid). Given a config of a stock rope type
    (default, linear, dynamic, yarn, ...) it is exactly Llama's rotary module.
    """

    def __init__(self, config: RopeIDConfig, device=None):
        super().__init__(config)  # Llama's buffers; for "rope_id" from ROPE_INIT_FUNCTIONS["rope_id"]
        self.rope_id = RopeIDParameters.from_config_if_rope_id(config)
        if self.rope_id is None:
            return
        # float64 frequencies, a non-persistent buffer: it follows the model's device (no copy inside
        # forward, so torch.compile sees a plain input), and _apply keeps it float64 when the model's
        # dtype changes. from_pretrained leaves non-persistent buffers uninitialised:
        # LlamaRopeIDPreTrainedModel._init_weights refills it. inv_freq / original_inv_freq stay the
        # float32 copies for tools that read them (transformers' _init_weights refills both).
        self.frequencies = nn.Buffer(inv_freq(self.rope_id), persistent=False)
        self.attention_scaling = 1.0

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) / .half() would round the frequencies (bfloat16 is off by whole turns at long
        # positions): move them with the module, but keep the float64 values.
        frequencies = getattr(self, "frequencies", None)
        super()._apply(fn, recurse)
        if frequencies is not None and self.frequencies.dtype != torch.float64:
            self.frequencies = frequencies.to(device=self.frequencies.device)
        return self

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rope_id is None:
            return super().forward(x, position_ids)
        with torch.no_grad():
            angles = rotation_angles(position_ids, self.frequencies)
            angles = torch.cat((angles, angles), dim=-1)
            return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


class LlamaRopeIDAttention(LlamaAttention):
    """Llama's attention, with the query temperature applied to the rotated queries.

    The attention function comes from transformers' ``ALL_ATTENTION_FUNCTIONS`` (stock kernels and any
    backend a serving engine registers there), looked up once per call with ``**kwargs`` passed down,
    as in Llama. A config with ``rotary_window`` gets ``ROTARY_WINDOW_ATTENTION_FUNCTIONS`` instead
    (rotary_window.py): its own eager and sdpa kernels, and a clear error for any other implementation.
    """

    def __init__(self, config: RopeIDConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.rope_id = RopeIDParameters.from_config_if_rope_id(config)  # None: a stock rope type, Llama's attention
        windowed = self.rope_id is not None and self.rope_id.rotary_window is not None
        self.attention_functions: AttentionInterface = (
            ROTARY_WINDOW_ATTENTION_FUNCTIONS if windowed else ALL_ATTENTION_FUNCTIONS
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
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

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        rope_id = self.rope_id
        if rope_id is not None and rope_id.temperature != "none" and self.layer_idx not in rope_id.local_layers:
            # A local layer sees no far field, so it gets no temperature. The decoder layer passes position_ids
            # down (the same ones the rotary module used).
            position_ids = kwargs.get("position_ids")
            if position_ids is None:
                raise ValueError(
                    "LlamaRopeIDAttention needs position_ids in its keyword arguments to apply the query "
                    "temperature (LlamaRopeIDDecoderLayer passes them); pass position_ids when calling it directly."
                )
            query_states = scale_queries(query_states, position_ids, self.rope_id)

        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
        # Cache index of the first query: the rotary_window kernels need it (stock kernels ignore it).
        query_offset = cache.get_seq_length(self.layer_idx) - query_states.shape[2] if cache is not None else 0

        attention_interface: Callable = self.attention_functions.get_interface(
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
            query_offset=query_offset,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights


class LlamaRopeIDDecoderLayer(LlamaDecoderLayer):
    def __init__(self, config: RopeIDConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.self_attn = LlamaRopeIDAttention(config=config, layer_idx=layer_idx)


class LlamaRopeIDPreTrainedModel(LlamaPreTrainedModel):
    config_class = RopeIDConfig
    config: RopeIDConfig
    _no_split_modules = ["LlamaRopeIDDecoderLayer"]
    _can_record_outputs = {
        "hidden_states": LlamaRopeIDDecoderLayer,
        "attentions": LlamaRopeIDAttention,
    }
    # Every implementation transformers offers Llama works without rotary_window (eager, sdpa, flash, flex,
    # and registered backends such as vLLM's, which also needs _supports_attention_backend); with
    # rotary_window only eager and sdpa do, which _check_and_adjust_attn_implementation enforces.
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _check_and_adjust_attn_implementation(self, attn_implementation, is_init_check=False, **kwargs):
        # Before transformers' own checks, so that e.g. a missing flash_attn does not hide the real reason; a name
        # transformers does not know at all gets transformers' own error.
        if attn_implementation in (None, "eager") or attn_implementation in ALL_ATTENTION_FUNCTIONS.valid_keys():
            check_window_implementation(self.config.rope_parameters, attn_implementation)
        return super()._check_and_adjust_attn_implementation(attn_implementation, is_init_check, **kwargs)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LlamaRopeIDRotaryEmbedding) and module.rope_id is not None:
            init.copy_(module.frequencies, inv_freq(module.rope_id))

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers writes only the saved class's own auto_map key; write all three so that
        # AutoConfig, AutoModel and AutoModelForCausalLM all load the checkpoint as remote code.
        self.config.auto_map = dict(AUTO_MAP)
        return super().save_pretrained(save_directory, *args, **kwargs)


@contextmanager
def legacy_checkpointing_held(config):
    """Holds back the legacy ``config.gradient_checkpointing = True`` while Llama's __init__ runs.

    The first post_init would consume it (enable checkpointing, then delete the attribute) on the Llama
    modules that the RoPE-ID ones then replace; it is put back for the RoPE-ID class's own post_init.
    """
    held = config.__dict__.pop("gradient_checkpointing", None)
    try:
        yield
    finally:
        if held is not None:
            config.gradient_checkpointing = held


class LlamaRopeIDModel(LlamaRopeIDPreTrainedModel, LlamaModel):
    def __init__(self, config: RopeIDConfig):
        with legacy_checkpointing_held(config):
            super().__init__(config)
            self.layers = nn.ModuleList(
                [LlamaRopeIDDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
            )
            self.rotary_emb = LlamaRopeIDRotaryEmbedding(config=config)
        self.post_init()


class LlamaRopeIDForCausalLM(LlamaRopeIDPreTrainedModel, LlamaForCausalLM):
    def __init__(self, config: RopeIDConfig):
        with legacy_checkpointing_held(config):
            super().__init__(config)
            self.model = LlamaRopeIDModel(config)
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
