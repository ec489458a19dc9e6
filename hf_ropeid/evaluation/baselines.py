"""Positional-encoding baselines on the same weights: each variant is only a config change.

A variant is one of ``VARIANTS``:

- ``rope``: the model as it is.
- ``linear``: position interpolation, ``rope_type="linear"`` with ``factor = s``.
- ``ntk``: NTK-aware scaling, ``rope_theta * s**(d / (d - 2))``.
- ``dynamic``: dynamic NTK (``rope_type="dynamic"``); one model for every length, the base grows
  with the input length at run time, ``factor`` fixed (``DYNAMIC_FACTOR`` unless given).
- ``yarn``: YaRN with the oracle factor ``s`` (given the target length in advance, as in the paper).
- ``p_rope``: RoPE-ID's channel layout with the original frequencies (``spectrum="original"``), no
  temperature: p-RoPE (Barbero et al. 2024).
- ``rope_id``: the RoPE-ID spectrum with its query temperature (needs ``LlamaRopeIDForCausalLM``).
- ``rope_id_no_temp``: the RoPE-ID spectrum without temperature.
- ``rerope``: ReRoPE, true distances within ``W = L/2``, distance ``W`` beyond (``two_part_rope.py``).
- ``self_extend``: Self-Extend, true distances within ``W = L/4``, grouped positions beyond it with the
  oracle group size ``G = ceil((n - W) / (L - W))`` (plain RoPE inside L).

The last two are opt-in (``--baselines rerope,self_extend``): they are not among the defaults, because their
attention is a slower two-part kernel.

``s = max(1, target_length / L)``: the rescaled variants equal plain RoPE inside the training length.
A RoPE-ID checkpoint can only be evaluated as itself (``rope_id``) or with the temperature off
(``rope_id_no_temp``): its weights were trained for that spectrum.

Variants share the source model's parameter tensors (nothing is copied or reloaded): the model
object is rebuilt on the meta device, the state dict is assigned, and a fresh rotary module is
built for the new config.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..errors import HfRopeIDError
from ..rope_id import ROPE_TYPE, RopeIDParameters
from ..utils import head_dim_of

VARIANTS = ("rope", "linear", "ntk", "dynamic", "yarn", "p_rope", "rope_id", "rope_id_no_temp", "rerope", "self_extend")
TWO_PART_VARIANTS = ("rerope", "self_extend")
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v not in TWO_PART_VARIANTS)
REROPE_WINDOW_FRACTION = 0.5
SELF_EXTEND_WINDOW_FRACTION = 0.25
ROPE_ID_CHECKPOINT_VARIANTS = ("rope_id", "rope_id_no_temp")
LENGTH_DEPENDENT_VARIANTS = ("linear", "ntk", "yarn")
# emozilla's dynamic NTK and transformers' documentation use factor 2; with factor 1 a single
# forward pass would equal the oracle "ntk" variant exactly.
DYNAMIC_FACTOR = 2.0
DEFAULT_TEMPERATURE = "query_log"


class BaselineError(HfRopeIDError, ValueError):
    """A variant cannot be built for this model; the message says what is possible."""


def is_rope_id_config(config: Any) -> bool:
    return (config.rope_parameters or {}).get("rope_type") == ROPE_TYPE


def training_length(config: Any) -> int:
    """``L``: RoPE-ID's ``training_length``, a scaled model's original length, else ``max_position_embeddings``."""
    rope = config.rope_parameters or {}
    if rope.get("rope_type") == ROPE_TYPE:
        return int(RopeIDParameters.from_config(config).training_length)
    if rope.get("original_max_position_embeddings"):
        return int(rope["original_max_position_embeddings"])
    return int(config.max_position_embeddings)


def default_variants(config: Any) -> tuple[str, ...]:
    """The variants evaluated when none are named: the available ones but the opt-in two-part kernels."""
    return tuple(v for v in available_variants(config) if v not in TWO_PART_VARIANTS)


def available_variants(config: Any) -> tuple[str, ...]:
    """The variants that make sense for this checkpoint (all of them for a plain RoPE model)."""
    if is_rope_id_config(config):
        return ROPE_ID_CHECKPOINT_VARIANTS
    if (config.rope_parameters or {}).get("rope_type", "default") != "default":
        return ("rope",)
    if config.model_type != "llama":  # the temperature needs LlamaRopeIDForCausalLM
        return tuple(v for v in VARIANTS if v != "rope_id")
    return VARIANTS


def scale_factor(target_length: int, length: int) -> float:
    """``s``: how far past the training length the target is (1 inside it)."""
    return max(1.0, target_length / length)


def variant_rope_parameters(
    config: Any,
    variant: str,
    target_length: int,
    length: int | None = None,
    dynamic_factor: float = DYNAMIC_FACTOR,
) -> dict[str, Any]:
    """The ``rope_parameters`` dict of ``variant`` for inputs of ``target_length`` tokens.

    ``length`` overrides the training length read from the config.
    """
    if variant not in VARIANTS:
        raise BaselineError(f"Unknown baseline {variant!r}; accepted: {', '.join(VARIANTS)}.")
    allowed = available_variants(config)
    if variant not in allowed:
        if is_rope_id_config(config):
            reason = "a RoPE-ID checkpoint was trained for its own spectrum"
        elif config.model_type != "llama" and variant == "rope_id":
            reason = f"the temperature needs a Llama model (LlamaRopeIDForCausalLM), this is {config.model_type!r}"
        else:
            reason = f"the checkpoint already uses rope_type {config.rope_parameters.get('rope_type')!r}"
        raise BaselineError(f"Baseline {variant!r} is not available: {reason}. Available: {', '.join(allowed)}.")
    source = dict(config.rope_parameters)
    theta = float(source.get("rope_theta", 10_000.0))
    length = int(length or training_length(config))
    s = scale_factor(target_length, length)
    d = head_dim_of(config)
    if variant == "rope":
        return source
    if variant == "linear":
        return {"rope_type": "linear", "rope_theta": theta, "factor": s}
    if variant == "ntk":
        return {"rope_type": "default", "rope_theta": theta * s ** (d / (d - 2))}
    if variant == "dynamic":
        return {"rope_type": "dynamic", "rope_theta": theta, "factor": float(dynamic_factor)}
    if variant == "yarn":
        return {"rope_type": "yarn", "rope_theta": theta, "factor": s, "original_max_position_embeddings": length}
    if variant in TWO_PART_VARIANTS:
        from .two_part_rope import self_extend_group

        if variant == "rerope":
            extension = {"kind": "rerope", "window": max(1, int(length * REROPE_WINDOW_FRACTION))}
        else:
            window = max(1, int(length * SELF_EXTEND_WINDOW_FRACTION))
            extension = {"kind": "self_extend", "window": window,
                         "group": self_extend_group(target_length, length, window)}
        return {**source, "two_part_rope": extension}
    # The RoPE-ID family: keep a RoPE-ID checkpoint's own settings, else the paper's defaults at L.
    if is_rope_id_config(config):
        params = RopeIDParameters.from_config(config).to_rope_parameters()
    else:
        params = RopeIDParameters(head_dim=d, rope_theta=theta, training_length=length).to_rope_parameters()
    if variant == "p_rope":
        params.update(spectrum="original", temperature="none")
    elif variant == "rope_id_no_temp":
        params["temperature"] = "none"
    elif params["temperature"] == "none":  # "rope_id" always means: with a temperature
        params["temperature"] = DEFAULT_TEMPERATURE
    return params


def variant_config(config: Any, variant: str, target_length: int, length: int | None = None, **kwargs: Any):
    """A copy of ``config`` with the variant's ``rope_parameters`` (a RopeIDConfig for ``rope_id``)."""
    from ..configuration_rope_id import RopeIDConfig

    rope = variant_rope_parameters(config, variant, target_length, length=length, **kwargs)
    length = int(length or training_length(config))
    if variant == "rope_id" and not is_rope_id_config(config):
        new = RopeIDConfig.from_llama_config(config, **{k: v for k, v in rope.items() if k != "rope_type"})
        new._attn_implementation = config._attn_implementation
        return new
    new = copy.deepcopy(config)
    if variant in TWO_PART_VARIANTS:
        from .two_part_rope import register

        new.two_part_rope = rope.pop("two_part_rope")
        new._attn_implementation = register()
    new.rope_parameters = rope
    if variant == "dynamic":
        new.max_position_embeddings = length  # dynamic NTK measures growth from max_position_embeddings
    if variant == "yarn":
        # Keeps transformers' "implicit factor" consistency check quiet; the factor is explicit anyway.
        new.max_position_embeddings = max(length, int(round(rope["factor"] * length)))
    new.validate_rope()
    return new


def _model_class_for(model: torch.nn.Module, variant: str):
    from ..modeling_rope_id import LlamaRopeIDForCausalLM

    if variant == "rope_id":
        return LlamaRopeIDForCausalLM
    return type(model)


def build_variant(
    model: torch.nn.Module, variant: str, target_length: int, length: int | None = None, **kwargs: Any
) -> torch.nn.Module:
    """``model`` with the variant's positions, sharing its weights (no copy); in eval mode.

    ``model`` must be a ``*ForCausalLM`` whose decoder has a ``rotary_emb`` module (Llama, Mistral,
    Qwen2, LlamaRopeIDForCausalLM).
    """
    config = variant_config(model.config, variant, target_length, length=length, **kwargs)
    if variant == "rope":
        return model
    cls = _model_class_for(model, variant)
    decoder = model.get_decoder()
    if not hasattr(decoder, "rotary_emb"):
        raise BaselineError(
            f"{type(model).__name__} has no decoder.rotary_emb module; baselines support Llama-family models only."
        )
    with torch.device("meta"):
        variant_model = cls(config)
    # assign=True: the variant's parameters are the source's tensors; nothing is copied.
    variant_model.load_state_dict(model.state_dict(), assign=True, strict=True)
    device = next(model.parameters()).device
    rotary = type(variant_model.get_decoder().rotary_emb)(config=config)
    variant_model.get_decoder().rotary_emb = rotary.to(device)
    leftover = [name for name, t in [*variant_model.named_parameters(), *variant_model.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"Variant {variant!r} left tensors on the meta device: {leftover}")
    variant_model.generation_config = model.generation_config
    return variant_model.eval()


__all__ = [
    "DYNAMIC_FACTOR",
    "LENGTH_DEPENDENT_VARIANTS",
    "DEFAULT_VARIANTS",
    "TWO_PART_VARIANTS",
    "VARIANTS",
    "BaselineError",
    "available_variants",
    "default_variants",
    "build_variant",
    "scale_factor",
    "training_length",
    "variant_config",
    "variant_rope_parameters",
]
