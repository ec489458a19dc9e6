"""RopeIDConfig: a Llama configuration whose positional encoding is RoPE-ID.

This file travels with saved checkpoints as remote code: it imports only torch, transformers, the
standard library and its sibling ``rope_id.py`` (relatively).
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig

from .rope_id import ROPE_TYPE, RopeIDParameters, explicit_rope_parameters, rope_id_settings


def validate_rope_id_rope_parameters(
    config: Any, rope_parameters: dict[str, Any], ignore_keys: set[str] | None = None
) -> None:
    """``_validate_rope_id_rope_parameters``, the hook transformers' ``validate_rope()`` looks up by name.

    RopeIDConfig has it as a method; ``import hf_ropeid`` also puts it on PreTrainedConfig, for stock
    configs. It runs when a config is constructed or saved, when the sizes may not be final yet, so it
    checks every setting except those that depend on the head size: those are checked when a model
    is built (``RopeIDParameters.from_config``). Raises RopeIDParameterError (a ValueError).
    """
    rope_id_settings(dict(rope_parameters), default_training_length=config.max_position_embeddings)


class RopeIDConfig(LlamaConfig):
    r"""Configuration of [`LlamaRopeIDForCausalLM`]: every Llama setting, plus RoPE-ID in ``rope_parameters``.

    ``rope_parameters`` has ``rope_type == "rope_id"`` (the default); missing RoPE-ID keys take the paper's
    defaults and are written out explicitly, so a saved config never depends on defaults. Any stock rope type
    (``default``, ``linear``, ``yarn``, ...) is accepted too and means exactly what it means for Llama.
    The RoPE-ID keys:

    - ``training_length`` (int, default ``max_position_embeddings``): ``L``, the length the model
      was (pre)trained at. Raise ``max_position_embeddings`` freely; ``L`` stays put.
    - ``rotary_fraction`` (0.5), ``shortest_period`` (32), ``turns_per_training_length`` (2),
      ``spectrum`` ("rope_id" | "original" | "minimal"), ``temperature``
      ("query_log" | "length_log" | "floor_log" | "none"), ``temperature_coefficient`` (0.1), ``rope_theta``,
      and the experimental ``rotary_window`` (None), ``far_field`` ("none"), ``temperature_channels`` ("all") and
      ``local_layers`` ([]: layers that see only the window and the first key).

    Like every transformers config it constructs from any sizes; checks that depend on the head size
    (``head_dim`` even, ``rotary_fraction`` a whole number of pairs) run when a model is built, or in
    ``from_llama_config``, whose sizes are those of an existing model.

    Example:

    ```python
    >>> from hf_ropeid import RopeIDConfig, LlamaRopeIDForCausalLM
    >>> config = RopeIDConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
    ...                       intermediate_size=512, max_position_embeddings=4096)
    >>> config.rope_parameters["rotary_fraction"]
    0.5
    >>> model = LlamaRopeIDForCausalLM(config)
    ```
    """

    model_type = "llama_rope_id"

    def __post_init__(self, **kwargs: Any) -> None:
        # Legacy ``rope_scaling`` in a config.json still arrives through kwargs; the parent folds it
        # into ``rope_parameters`` first, then we fill RoPE-ID defaults.
        if self.rope_parameters is None and not kwargs.get("rope_scaling"):
            self.rope_parameters = {"rope_type": ROPE_TYPE}
        super().__post_init__(**kwargs)
        # Any stock rope type (default, linear, yarn, ...) is accepted and behaves exactly as in LlamaConfig:
        # RoPE-ID's classes are a superset of Llama's. Only "rope_id" gets its defaults written out.
        if self.rope_parameters.get("rope_type") == ROPE_TYPE:
            self.rope_parameters = explicit_rope_parameters(self.rope_parameters, self.max_position_embeddings)

    _validate_rope_id_rope_parameters = validate_rope_id_rope_parameters

    @classmethod
    def from_llama_config(cls, llama_config: LlamaConfig, **rope_id_parameters: Any) -> "RopeIDConfig":
        """A RopeIDConfig with every setting of ``llama_config`` and RoPE-ID positions.

        ``rope_theta`` is kept; ``training_length`` defaults to the source's
        ``max_position_embeddings``; any other RoPE-ID key can be given as a keyword.
        """
        values = llama_config.to_dict()
        for key in ("model_type", "architectures", "auto_map", "transformers_version", "rope_scaling"):
            values.pop(key, None)
        source_rope = dict(values.pop("rope_parameters", None) or {})
        if source_rope.get("rope_type", "default") not in ("default", ROPE_TYPE):
            raise ValueError(
                f"The source config uses rope_type {source_rope.get('rope_type')!r}; only plain RoPE ('default') "
                "checkpoints can be converted to RoPE-ID."
            )
        rope = {"rope_type": ROPE_TYPE, "rope_theta": source_rope.get("rope_theta", 10_000.0)}
        if source_rope.get("rope_type") == ROPE_TYPE:
            rope.update(source_rope)
        rope.update({k: v for k, v in rope_id_parameters.items() if v is not None})
        config = cls(**values, rope_parameters=rope)
        RopeIDParameters.from_config(config)  # the sizes are an existing model's, so final: check them now
        return config


__all__ = ["RopeIDConfig", "validate_rope_id_rope_parameters"]
