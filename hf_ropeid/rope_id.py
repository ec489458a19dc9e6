"""The mathematics of RoPE-ID, in plain PyTorch.

RoPE-ID (Wertheimer et al., ICLR 2026, "Frayed RoPE and Long Inputs") rotates a fraction of each
head's channel pairs with a spectrum whose every frequency completes whole turns inside the
training length ``L``, leaves the other pairs unrotated (NoPE), and multiplies the queries of
positions beyond ``L`` by a length-dependent temperature.

This module knows nothing of transformers: it turns numbers into frequencies and scales. It is
copied next to the modeling code when a model is saved, so it must stay self-contained (torch and
the standard library only). Everything is computed in float64: at positions past a million a
float32 angle is off by whole radians.

Channel layout follows the Hugging Face "half split" convention: channel ``i`` pairs with
``i + head_dim/2`` and both use ``inv_freq[i]``; index 0 is the fastest pair. Rotated pairs are
indices ``0..n-1`` (the first and third quarters of the head for a rotated fraction of 1/2);
``inv_freq[i] == 0`` means "not rotated".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

ROPE_TYPE = "rope_id"
SPECTRA = ("rope_id", "original", "minimal")
TEMPERATURES = ("query_log", "length_log", "floor_log", "ssmax", "none")
TEMPERATURE_CHANNELS = ("all", "unrotated")
FAR_FIELDS = ("none", "log_count")

# Keys of ``rope_parameters`` for ``rope_type == "rope_id"``. These names are a public format:
# once released they never change (add aliases instead of renaming).
PARAMETER_KEYS = (
    "training_length",
    "rotary_fraction",
    "shortest_period",
    "turns_per_training_length",
    "spectrum",
    "temperature",
    "temperature_coefficient",
    "rotary_window",
    "far_field",
    "temperature_channels",
    "local_layers",
)


class RopeIDParameterError(ValueError):
    """A ``rope_id`` parameter is out of range; the message says what is accepted."""


@dataclass(frozen=True)
class RopeIDParameters:
    """The settings of one RoPE-ID positional encoding.

    Attributes:
        head_dim: channels per attention head (even).
        rope_theta: base of the original RoPE spectrum (used by the "original" and "minimal"
            spectra, and kept so a converted checkpoint remembers where it came from).
        training_length: ``L``, the context length the spectrum must complete turns in.
        rotary_fraction: fraction of ``head_dim`` that rotates (0.5 in the paper). The number of
            rotated pairs is ``rotary_fraction * head_dim / 2`` and must be a whole number.
        shortest_period: period in tokens of the fastest rotated pair (32 in the paper).
        turns_per_training_length: turns the slowest rotated pair completes inside ``L`` (2).
        spectrum: "rope_id" (geometric between the two, the paper), "original" (the fastest
            original RoPE frequencies, i.e. p-RoPE), or "minimal" (original frequencies that
            already complete the required turns inside ``L`` are kept, only slower ones are
            re-spaced geometrically down to the slowest allowed frequency).
        temperature: "query_log" (queries at 1-based position ``p`` are multiplied by
            ``(1 + c * ln(max(p, L) / L))**2``, YaRN's factor with ``s = p / L``), "length_log"
            (``ln(max(p, L)) / ln(L)``), "floor_log" (queries at 0-based position ``i`` are multiplied by
            ``1 + c * ln(1 + floor(i / L))``, llama.cpp's Llama-4 temperature, so a GGUF export is exact at
            every length), "ssmax" (``ln(max(p, 2)) / ln(L)`` at every position, inside ``L`` too:
            Scalable-Softmax's ``s * ln(n)`` with ``s = 1 / ln(L)``, so a model must be trained with it), or
            "none". All but "ssmax" are exactly 1 inside ``L``.
        temperature_coefficient: ``c`` of "query_log" (0.1, as in YaRN) and of "floor_log" (0.1 is Llama 4's
            value; 0.2 follows query_log's c = 0.1 at long lengths, where ``(1 + c ln s)**2 ~ 1 + 2c ln s``).
        temperature_channels: "all" (the paper) or "unrotated": only the unrotated (NoPE) channels of the
            query are multiplied, so the logits of far keys under ``rotary_window`` (scored by those
            channels alone) sharpen while the rotated part, which places near keys, is left as trained;
            SWAN-GPT's log scaling of its NoPE attention, in one head.
        rotary_window: None (the paper: every key is scored on all channels) or a whole number of
            tokens ``W``: a key ``W`` or more tokens before the query is scored by the unrotated pairs
            only (the rotated pairs' part of its logit is dropped). Far keys then carry no phase at
            all, so they can never mimic near keys by a chance alignment of phases, which is what
            breaks RoPE-ID at many times ``L``. Train with it (``W < L``, e.g. ``L / turns``) so that
            the model learns the phase-free far field. Needs LlamaRopeIDForCausalLM (own attention).
        far_field: "none" or "log_count" (needs ``rotary_window``): far keys other than the first (the
            attention sink) get the logit bias ``-ln(max(m, M) / M)``, ``m`` = far keys of the query,
            ``M = L - 1 - W``; the far field as a whole keeps the weight it had at ``L``. Exactly 0
            inside ``L``, so it can be switched on for a trained model.
        local_layers: layer indices (0-based) that attend only to keys less than ``rotary_window`` back, plus
            the first key (the attention sink): sliding-window layers, as in SWAN-GPT. Their outputs do not
            depend on how long the input is, so tokens deep in a long input are encoded as in training; the
            query temperature is not applied on them (they have no far field). Needs ``rotary_window``; train
            with it. Empty (the default): every layer sees every key.
    """

    head_dim: int
    rope_theta: float = 10_000.0
    training_length: int = 4096
    rotary_fraction: float = 0.5
    shortest_period: float = 32.0
    turns_per_training_length: float = 2.0
    spectrum: str = "rope_id"
    temperature: str = "query_log"
    temperature_coefficient: float = 0.1
    rotary_window: int | None = None
    far_field: str = "none"
    temperature_channels: str = "all"
    local_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "local_layers", parse_local_layers(self.local_layers))
        validate(self)

    @property
    def num_pairs(self) -> int:
        return self.head_dim // 2

    @property
    def num_rotated_pairs(self) -> int:
        return int(round(self.rotary_fraction * self.num_pairs))

    @property
    def longest_period(self) -> float:
        return self.training_length / self.turns_per_training_length

    def query_scale(self, positions: torch.Tensor) -> torch.Tensor:
        """The temperature's multiplier for the query at each 0-based position (float32, shape of ``positions``)."""
        return query_temperature(positions, self.training_length, self.temperature, self.temperature_coefficient)

    @classmethod
    def from_config(cls, config: Any) -> "RopeIDParameters":
        """Reads any transformers config whose ``rope_parameters`` has ``rope_type == "rope_id"``.

        Duck-typed on purpose (no transformers import): works for Llama, Mistral, Qwen2 and
        RopeIDConfig alike. The training length defaults to ``max_position_embeddings``. Every
        check runs here, including those that depend on the head size: call it where the
        config's shape is final (when a model is built).
        """
        params = cls.from_rope_parameters(
            dict(config.rope_parameters), head_dim=head_dim_of(config), default_training_length=config.max_position_embeddings
        )
        layers = getattr(config, "num_hidden_layers", None)
        if params.local_layers and layers is not None and max(params.local_layers) >= layers:
            raise RopeIDParameterError(
                f"rope_parameters 'local_layers' {list(params.local_layers)} names a layer the model does not have: "
                f"its layers are 0..{layers - 1}."
            )
        return params

    @classmethod
    def from_config_if_rope_id(cls, config: Any) -> "RopeIDParameters | None":
        """``from_config`` for a config whose ``rope_type`` is ``"rope_id"``; None for any other rope type.

        The RoPE-ID classes are a superset of Llama: given a stock rope type (default, linear, yarn, ...)
        they behave exactly as Llama does with it, and RoPE-ID's own keys are neither read nor checked.
        """
        if (getattr(config, "rope_parameters", None) or {}).get("rope_type") != ROPE_TYPE:
            return None
        return cls.from_config(config)

    @classmethod
    def from_rope_parameters(
        cls, rope_parameters: dict[str, Any], head_dim: int, default_training_length: int
    ) -> "RopeIDParameters":
        """Reads a transformers ``rope_parameters`` dict (unknown keys are an error)."""
        return cls(head_dim=head_dim, **rope_id_settings(rope_parameters, default_training_length))

    def to_rope_parameters(self) -> dict[str, Any]:
        """The ``rope_parameters`` dict that reproduces these settings (every key explicit)."""
        out = {"rope_type": ROPE_TYPE, **asdict(self)}
        out.pop("head_dim")
        out["local_layers"] = list(self.local_layers)
        return out


def parse_local_layers(value: Any) -> tuple[int, ...]:
    """``local_layers`` as a sorted tuple of layer indices; accepts a list, a tuple or text such as ``"0,1"``."""
    if value is None:
        return ()
    items = [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else list(value)

    def is_index(item: Any) -> bool:
        if isinstance(item, str):
            return item.isdigit()
        return isinstance(item, int) and not isinstance(item, bool) and item >= 0

    if not all(is_index(item) for item in items):
        raise RopeIDParameterError(
            f"local_layers must be layer indices (whole numbers from 0), e.g. [0] or \"0,1\"; got {value!r}."
        )
    return tuple(sorted({int(item) for item in items}))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def head_dim_of(config: Any) -> int:
    """Channels per attention head of a transformers config (or its dict): ``head_dim`` if set, else
    ``hidden_size // num_attention_heads``. The one place the project derives it."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    return get("head_dim", None) or get("hidden_size", 0) // max(get("num_attention_heads", 1) or 1, 1)


def rope_id_settings(rope_parameters: dict[str, Any], default_training_length: int) -> dict[str, Any]:
    """Every RoPE-ID setting of a ``rope_parameters`` dict (defaults filled in), all but ``head_dim``.

    Checks what can be checked without the head size (names, ranges, periods against the training
    length); the head-size checks run when a RopeIDParameters is made, i.e. when a model is built.
    That split lets a config be constructed from any sizes, as every transformers config can.
    """
    known = set(PARAMETER_KEYS) | {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
    unknown = sorted(set(rope_parameters) - known)
    if unknown:
        raise RopeIDParameterError(
            f"Unknown rope_parameters key(s) for rope_type 'rope_id': {unknown}. "
            f"Accepted keys: {sorted(PARAMETER_KEYS) + ['rope_theta', 'rope_type']}."
        )
    if rope_parameters.get("partial_rotary_factor", 1.0) not in (1.0, None):
        raise RopeIDParameterError(
            "rope_type 'rope_id' does not use 'partial_rotary_factor' (it crashes Llama's "
            "rotary code); set 'rotary_fraction' instead."
        )
    settings = {f.name: f.default for f in fields(RopeIDParameters) if f.name != "head_dim"}
    settings["training_length"] = default_training_length
    settings.update({k: rope_parameters[k] for k in PARAMETER_KEYS if rope_parameters.get(k) is not None})
    settings["rope_theta"] = rope_parameters.get("rope_theta", settings["rope_theta"])
    settings["local_layers"] = list(parse_local_layers(settings["local_layers"]))  # JSON-friendly
    _validate_settings(settings)
    return settings


def explicit_rope_parameters(rope_parameters: dict[str, Any], default_training_length: int) -> dict[str, Any]:
    """The ``rope_parameters`` dict with every RoPE-ID key written out (checked as in ``rope_id_settings``)."""
    return {"rope_type": ROPE_TYPE, **rope_id_settings(rope_parameters, default_training_length)}


def validate(p: RopeIDParameters) -> None:
    """Raises RopeIDParameterError with an actionable message for any out-of-range setting."""
    values = asdict(p)
    _validate_settings(values)
    _validate_head_dim(values)


def _validate_settings(v: dict[str, Any]) -> None:
    """The checks that do not depend on the head size."""
    for name, value in v.items():
        if name in ("head_dim", "spectrum", "temperature", "far_field", "temperature_channels", "local_layers") or (
            name == "rotary_window" and value is None
        ):
            continue
        if not _is_number(value) or value <= 0:
            raise RopeIDParameterError(f"rope_id parameter '{name}' must be a positive number, got {value!r}.")
    if int(v["training_length"]) != v["training_length"] or v["training_length"] < 2:
        raise RopeIDParameterError(
            f"training_length must be a whole number of tokens, at least 2, got {v['training_length']}."
        )
    if not 0 < v["rotary_fraction"] <= 1:
        raise RopeIDParameterError(
            f"rotary_fraction must be in (0, 1], got {v['rotary_fraction']} (0.5 rotates half of each head, as in the paper)."
        )
    if v["spectrum"] not in SPECTRA:
        raise RopeIDParameterError(f"Unknown spectrum {v['spectrum']!r}; accepted: {', '.join(SPECTRA)}.")
    if v["temperature"] not in TEMPERATURES:
        raise RopeIDParameterError(f"Unknown temperature {v['temperature']!r}; accepted: {', '.join(TEMPERATURES)}.")
    if v["temperature_channels"] not in TEMPERATURE_CHANNELS:
        raise RopeIDParameterError(
            f"Unknown temperature_channels {v['temperature_channels']!r}; accepted: {', '.join(TEMPERATURE_CHANNELS)}."
        )
    window = v["rotary_window"]
    if window is not None and int(window) != window:
        raise RopeIDParameterError(f"rotary_window must be a whole number of tokens or None (off), got {window!r}.")
    if v["far_field"] not in FAR_FIELDS:
        raise RopeIDParameterError(f"Unknown far_field {v['far_field']!r}; accepted: {', '.join(FAR_FIELDS)}.")
    if v["far_field"] != "none" and (window is None or window > v["training_length"] - 2):
        raise RopeIDParameterError(
            f"far_field {v['far_field']!r} needs a rotary_window of at most training_length - 2 = "
            f"{v['training_length'] - 2} tokens (it weighs the keys beyond the window), got {window!r}."
        )
    if v["local_layers"] and window is None:
        raise RopeIDParameterError(
            f"local_layers {list(v['local_layers'])} needs a rotary_window (the span those layers see); none is set."
        )
    if v["spectrum"] != "original":
        longest_period = v["training_length"] / v["turns_per_training_length"]
        if v["shortest_period"] < 2:
            raise RopeIDParameterError(
                f"shortest_period must be at least 2 tokens (a faster rotation aliases), got {v['shortest_period']}."
            )
        if v["shortest_period"] >= longest_period:
            raise RopeIDParameterError(
                f"shortest_period ({v['shortest_period']}) must be shorter than training_length / "
                f"turns_per_training_length = {v['training_length']} / {v['turns_per_training_length']} = "
                f"{longest_period:g} tokens, the period of the slowest rotated pair."
            )


def _validate_head_dim(v: dict[str, Any]) -> None:
    """The checks that depend on the head size (final only once a model is built)."""
    head_dim = v["head_dim"]
    if not _is_number(head_dim) or head_dim <= 0:
        raise RopeIDParameterError(f"rope_id parameter 'head_dim' must be a positive number, got {head_dim!r}.")
    if int(head_dim) != head_dim or head_dim % 2:
        raise RopeIDParameterError(f"head_dim must be even (channel i pairs with i + head_dim/2), got {head_dim}.")
    num_pairs = head_dim // 2
    exact = v["rotary_fraction"] * num_pairs
    if abs(exact - round(exact)) > 1e-6:
        step = 1 / num_pairs
        raise RopeIDParameterError(
            f"rotary_fraction {v['rotary_fraction']} gives {exact:g} rotated pairs for head_dim {head_dim}; "
            f"it must be a multiple of 1/{num_pairs} (e.g. {math.floor(exact) * step:g} or {math.ceil(exact) * step:g})."
        )
    if v["spectrum"] != "original" and int(round(exact)) < 2:
        raise RopeIDParameterError(
            f"The '{v['spectrum']}' spectrum spaces frequencies between two ends and needs at least 2 rotated "
            f"pairs; rotary_fraction {v['rotary_fraction']} with head_dim {head_dim} gives {int(round(exact))}."
        )


def original_inv_freq(head_dim: int, rope_theta: float) -> torch.Tensor:
    """Standard RoPE: pair j rotates by ``rope_theta ** (-2j / head_dim)`` radians per token."""
    j = torch.arange(head_dim // 2, dtype=torch.float64, device="cpu")
    return rope_theta ** (-2.0 * j / head_dim)


def geometric_inv_freq(highest: float, lowest: float, count: int) -> torch.Tensor:
    """``count`` angular frequencies from ``highest`` down to ``lowest``, equal ratios between neighbours."""
    if count == 1:
        return torch.tensor([highest], dtype=torch.float64, device="cpu")
    j = torch.arange(count, dtype=torch.float64, device="cpu")
    return highest * (lowest / highest) ** (j / (count - 1))


def inv_freq(p: RopeIDParameters) -> torch.Tensor:
    """Angular frequency (radians per token) of every channel pair, float64, length head_dim/2.

    Indices ``0..n-1`` rotate (fastest first); the rest are 0 (not rotated).
    """
    n = p.num_rotated_pairs
    w_max = 2 * math.pi / p.shortest_period
    w_min = 2 * math.pi / p.longest_period
    if p.spectrum == "rope_id":
        rotated = geometric_inv_freq(w_max, w_min, n)
    else:
        rotated = original_inv_freq(p.head_dim, p.rope_theta)[:n].clone()
        if p.spectrum == "minimal":
            # Keep what already completes the required turns; re-space only the slower tail,
            # continuing geometrically from the last kept frequency down to w_min.
            slow = rotated < w_min * (1 - 1e-12)
            kept = int((~slow).sum())
            if kept < n:
                start = rotated[kept - 1].item() if kept > 0 else w_max
                tail = geometric_inv_freq(start, w_min, n - kept + 1)[1:]
                rotated[kept:] = tail
    out = torch.zeros(p.num_pairs, dtype=torch.float64, device="cpu")
    out[:n] = rotated
    return out


def rotation_angles(positions: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """``positions[..., None] * frequencies`` reduced modulo 2*pi, in float64.

    The reduction keeps cos/sin exact at any position a float64 integer can hold (2**53); the
    float32 product transformers uses loses about 0.1 rad by position 10**6.
    """
    angles = positions.to(torch.float64)[..., None] * frequencies.to(device=positions.device, dtype=torch.float64)
    return torch.remainder(angles, 2 * math.pi)


def far_field_bias(
    query_positions: torch.Tensor, key_positions: torch.Tensor, training_length: int, rotary_window: int
) -> torch.Tensor:
    """Logit bias of far_field "log_count", shape [queries, keys] (float32, 0 for near keys and key 0).

    A query at position ``p`` has ``m = p - W`` far keys besides the first; at the last position
    inside ``L`` it had ``M = L - 1 - W``. Each far key gets ``-ln(max(m, M) / M)``, so that ``m`` far
    keys weigh together what ``M`` weighed in training. Positions are 0-based.
    """
    bias = far_field_query_bias(query_positions, training_length, rotary_window)[:, None]
    far = (query_positions[:, None] - key_positions[None, :] >= rotary_window) & (key_positions[None, :] > 0)
    return bias * far


def far_field_query_bias(query_positions: torch.Tensor, training_length: int, rotary_window: int) -> torch.Tensor:
    """The far-field bias of each query (any shape of 0-based positions), float32: ``-ln(max(m, M) / M)``, the same
    for all its far keys but the first."""
    limit = training_length - 1 - rotary_window
    count = (query_positions.to(torch.float64) - rotary_window).clamp(min=limit)
    return (-torch.log(count / limit)).to(torch.float32)


def scale_queries(query: torch.Tensor, position_ids: torch.Tensor, p: RopeIDParameters) -> torch.Tensor:
    """Rotated queries ``[batch, heads, seq, head_dim]`` times the temperature of each one's position.

    ``position_ids``: ``[batch or 1, seq]`` (or ``[seq]``), the positions the rotation used. The product is
    formed in at least float32 and rounded once to the query's dtype; inside the training length the
    multiplier is exactly 1, so those queries come back unchanged.
    """
    if p.temperature == "none":
        return query
    scale = p.query_scale(position_ids.to(query.device))
    scale = scale.reshape(-1, 1, query.shape[-2], 1)  # [batch or 1, 1, seq, 1]
    if p.temperature_channels == "unrotated":
        rotated = torch.zeros(p.head_dim, dtype=torch.bool, device=query.device)
        n, half = p.num_rotated_pairs, p.head_dim // 2
        rotated[:n] = rotated[half : half + n] = True
        scale = torch.where(rotated, torch.ones((), dtype=scale.dtype, device=scale.device), scale)
    return (query * scale).to(query.dtype)


def query_temperature(
    positions: torch.Tensor, training_length: int, temperature: str, coefficient: float = 0.1
) -> torch.Tensor:
    """Multiplier for the query at each 0-based position (float32, same shape as ``positions``).

    Exactly 1 for positions inside the training length (except "ssmax", which a model is trained with);
    keys (and a KV cache) never change: the temperature depends on the query's own 1-based position
    ``p = position + 1`` only.
    """
    p = positions.to(torch.float64) + 1
    length = float(training_length)
    if temperature == "none":
        scale = torch.ones_like(p)
    elif temperature == "query_log":
        scale = (1 + coefficient * torch.log(torch.clamp(p, min=length) / length)) ** 2
    elif temperature == "length_log":
        scale = torch.log(torch.clamp(p, min=length)) / math.log(length)
    elif temperature == "ssmax":
        scale = torch.log(torch.clamp(p, min=2.0)) / math.log(length)
    elif temperature == "floor_log":
        # llama.cpp's attention temperature (llm_graph_input_attn_temp, archs llama4 / mistral3) with offset 0
        # and floor scale L: constant on each block of L positions, 1 on the first.
        scale = 1 + coefficient * torch.log1p(torch.floor((p - 1) / length))
    else:
        raise RopeIDParameterError(f"Unknown temperature {temperature!r}; accepted: {', '.join(TEMPERATURES)}.")
    return scale.to(torch.float32)
