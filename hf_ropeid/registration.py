"""What ``import hf_ropeid`` does to transformers: registers the rope type and the Auto classes."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig

from .configuration_rope_id import RopeIDConfig
from .modeling_rope_id import LlamaRopeIDForCausalLM, LlamaRopeIDModel, register_rope_type
from .rope_id import RopeIDParameters


def _validate_rope_id_rope_parameters(
    self: PreTrainedConfig, rope_parameters: dict[str, Any], ignore_keys: set[str] | None = None
) -> None:
    """Validation hook transformers' ``validate_rope()`` looks up by name, for stock configs."""
    head_dim = getattr(self, "head_dim", None) or self.hidden_size // self.num_attention_heads
    RopeIDParameters.from_rope_parameters(
        dict(rope_parameters), head_dim=head_dim, default_training_length=self.max_position_embeddings
    )


def register() -> None:
    """Idempotent: safe to call again, and safe next to a checkpoint's remote-code copy."""
    register_rope_type()
    if not hasattr(PreTrainedConfig, "_validate_rope_id_rope_parameters"):
        PreTrainedConfig._validate_rope_id_rope_parameters = _validate_rope_id_rope_parameters
    AutoConfig.register(RopeIDConfig.model_type, RopeIDConfig, exist_ok=True)
    AutoModel.register(RopeIDConfig, LlamaRopeIDModel, exist_ok=True)
    AutoModelForCausalLM.register(RopeIDConfig, LlamaRopeIDForCausalLM, exist_ok=True)
