"""hf-ropeid: RoPE-ID positions for Llama-family models in Hugging Face transformers.

``import hf_ropeid`` registers the rope type ``"rope_id"`` (usable from any Llama, Mistral or
Qwen2 config's ``rope_parameters``) and the ``llama_rope_id`` model type with the Auto classes.
"""

from .configuration_rope_id import RopeIDConfig
from .modeling_rope_id import LlamaRopeIDForCausalLM, LlamaRopeIDModel, LlamaRopeIDPreTrainedModel
from .registration import register
from .rope_id import RopeIDParameterError, RopeIDParameters

__version__ = "0.1.0"

register()

__all__ = [
    "LlamaRopeIDForCausalLM",
    "LlamaRopeIDModel",
    "LlamaRopeIDPreTrainedModel",
    "RopeIDConfig",
    "RopeIDParameterError",
    "RopeIDParameters",
    "__version__",
]
