"""What ``import hf_ropeid`` does to transformers: registers the rope type and the Auto classes."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig

from .configuration_rope_id import RopeIDConfig, validate_rope_id_rope_parameters
from .modeling_rope_id import LlamaRopeIDForCausalLM, LlamaRopeIDModel, register_rope_type


def register() -> None:
    """Idempotent: safe to call again, and safe next to a checkpoint's remote-code copy."""
    register_rope_type()
    # transformers' validate_rope() looks the validator up by name on the config: stock configs
    # (Llama, Mistral, Qwen2...) with rope_type "rope_id" get RopeIDConfig's own.
    if not hasattr(PreTrainedConfig, "_validate_rope_id_rope_parameters"):
        PreTrainedConfig._validate_rope_id_rope_parameters = validate_rope_id_rope_parameters
    AutoConfig.register(RopeIDConfig.model_type, RopeIDConfig, exist_ok=True)
    AutoModel.register(RopeIDConfig, LlamaRopeIDModel, exist_ok=True)
    AutoModelForCausalLM.register(RopeIDConfig, LlamaRopeIDForCausalLM, exist_ok=True)
