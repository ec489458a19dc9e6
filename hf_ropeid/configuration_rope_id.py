"""RopeIDConfig: a Llama configuration whose positional encoding is RoPE-ID.

This file travels with saved checkpoints as remote code: it imports only torch, transformers, the
standard library and its sibling ``rope_id.py`` (relatively).
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig

from .rope_id import ROPE_TYPE, RopeIDParameters


class RopeIDConfig(LlamaConfig):
    r"""Configuration of [`LlamaRopeIDForCausalLM`]: every Llama setting, plus RoPE-ID in ``rope_parameters``.

    ``rope_parameters`` must have ``rope_type == "rope_id"``; missing RoPE-ID keys take the paper's
    defaults and are written out explicitly, so a saved config never depends on defaults:

    - ``training_length`` (int, default ``max_position_embeddings``): ``L``, the length the model
      was (pre)trained at. Raise ``max_position_embeddings`` freely; ``L`` stays put.
    - ``rotary_fraction`` (0.5), ``shortest_period`` (32), ``turns_per_training_length`` (2),
      ``spectrum`` ("rope_id" | "original" | "minimal"), ``temperature``
      ("query_log" | "length_log" | "none"), ``temperature_coefficient`` (0.1), ``rope_theta``.

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
        rope_type = self.rope_parameters.get("rope_type")
        if rope_type != ROPE_TYPE:
            raise ValueError(
                f"RopeIDConfig needs rope_parameters['rope_type'] == 'rope_id', got {rope_type!r}. "
                "Use LlamaConfig for other rope types, or RopeIDConfig.from_llama_config(...) to convert."
            )
        explicit = RopeIDParameters.from_config(self).to_rope_parameters()
        self.rope_parameters = explicit

    def _validate_rope_id_rope_parameters(
        self, rope_parameters: dict[str, Any], ignore_keys: set[str] | None = None
    ) -> None:
        # Called by transformers' validate_rope(); raises RopeIDParameterError (a ValueError).
        head_dim = getattr(self, "head_dim", None) or self.hidden_size // self.num_attention_heads
        RopeIDParameters.from_rope_parameters(
            dict(rope_parameters), head_dim=head_dim, default_training_length=self.max_position_embeddings
        )

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
        return cls(**values, rope_parameters=rope)


__all__ = ["RopeIDConfig"]
