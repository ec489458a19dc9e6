"""RoPE-ID parameters as the tools take them: which ones a conversion accepts, and the values users type.

``convert`` and ``finetune`` accept every key of ``ROPE_ID_OPTION_KEYS`` (the frozen
``rope_parameters`` keys plus ``rope_theta``); the model layer (``rope_id.py``) checks the values.
"""

from __future__ import annotations

import math

from .rope_id import PARAMETER_KEYS, RopeIDParameterError

ROPE_ID_OPTION_KEYS = ("rope_theta", *PARAMETER_KEYS)


def parse_rotary_fraction(value: str | float | None) -> float | str | None:
    """A rotary fraction as users type it: a number, ``"auto"`` or ``"auto:T"`` (kept as text)."""
    if value is None or isinstance(value, (int, float)):
        return value
    if value.startswith("auto"):
        parse_auto_turns(value, 2.0)  # syntax check only; the turns are resolved against the model later
        return value
    try:
        return float(value)
    except ValueError:
        raise RopeIDParameterError(
            f"rotary_fraction {value!r} is not understood; give a number in (0, 1] such as 0.5, 'auto' (pairs "
            "whose original frequency completes turns_per_training_length turns inside L) or 'auto:T'."
        ) from None


def parse_auto_turns(value: str, turns_per_training_length: float) -> float:
    """Turns of ``"auto"`` (``turns_per_training_length``) or ``"auto:T"`` (``T``)."""
    if value == "auto":
        return float(turns_per_training_length)
    name, _, turns = value.partition(":")
    try:
        result = float(turns)
    except ValueError:
        result = None
    if name != "auto" or result is None or not 0 < result < math.inf:
        raise RopeIDParameterError(
            f"rotary_fraction {value!r} is not understood; give a number in (0, 1], 'auto' (pairs whose original "
            "frequency completes turns_per_training_length turns inside L) or 'auto:T' (at least T turns, T > 0)."
        )
    return result
