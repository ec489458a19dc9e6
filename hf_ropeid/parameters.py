"""RoPE-ID parameters as the tools take them: which ones a conversion accepts, and the values users type.

``convert`` and ``finetune`` accept every key of ``ROPE_ID_OPTION_KEYS`` (the frozen
``rope_parameters`` keys plus ``rope_theta``); the model layer (``rope_id.py``) checks the values.
"""

from __future__ import annotations

import math

from .rope_id import PARAMETER_KEYS, RopeIDParameterError

ROPE_ID_OPTION_KEYS = ("rope_theta", *PARAMETER_KEYS)
# What convert and finetune pass to the conversion: the parameters and the name of a recipe.
CONVERSION_OPTION_KEYS = ("recipe", *ROPE_ID_OPTION_KEYS)

# Named sets of RoPE-ID parameters for a conversion; options given explicitly override them.
# "far-context" (the default of the convert and finetune commands, not of the Python functions): the
# configuration measured best past L after LoRA at L (benchmarks/RESULTS.md §6 from scratch, §10 converted +
# LoRA; SmolLM2 at 16k tokens §11): half the pairs at their original frequencies, keys L/2 or more
# tokens back scored by the unrotated half only, the length-log temperature ln(p)/ln(L) past L on every
# channel, and layer 0 a sliding window (the last L/2 keys and the first; no temperature), which took passkey at
# 16x L from 0.20 to 0.88 on the toy route (RESULTS §10, round 3). Its attention needs RoPE-ID's own eager / sdpa
# kernels. ``--local-layers ""`` leaves every layer global.
# "portable": no window, the query-log temperature (conversion.DEFAULT_CONVERSION for the rest): every
# kernel runs it (vLLM, llama.cpp via GGUF, flash-attention), and it has the lowest perplexity inside L
# without training, but after LoRA at L it collapsed past L on the toy (RESULTS §10).
# "paper": the paper's RoPE-ID (geometric spectrum, half the pairs, query-log temperature), no window.
RECIPES: dict[str, dict] = {
    "far-context": {"spectrum": "original", "rotary_fraction": 0.5, "rotary_window": "half",
                    "temperature": "length_log", "temperature_channels": "all", "local_layers": [0]},
    "portable": {},
    "paper": {"spectrum": "rope_id", "rotary_fraction": 0.5, "temperature": "query_log"},
}
DEFAULT_RECIPE = "far-context"


def check_recipe(recipe: str | None) -> None:
    """Raises ``RopeIDParameterError`` naming the accepted recipes unless ``recipe`` is one of them (or None)."""
    if recipe is not None and recipe not in RECIPES:
        raise RopeIDParameterError(f"Unknown recipe {recipe!r}; accepted: {', '.join(RECIPES)}.")


def apply_recipe(params: dict, recipe: str | None) -> dict:
    """``params`` with the recipe's values filled in where not given (``training_length`` must be set).

    ``None``: no recipe (the Python API converts with exactly what it is given); the commands pass
    ``DEFAULT_RECIPE`` when the user names none (``default_recipe``).
    """
    check_recipe(recipe)
    if recipe is None:
        return dict(params)
    out = dict(params)
    for key, value in RECIPES[recipe].items():
        if out.get(key) is None:
            out[key] = max(1, int(out["training_length"]) // 2) if value == "half" else value
    return out


def default_recipe(parameters: dict) -> dict:
    """The conversion options of ``convert`` / ``finetune``: ``DEFAULT_RECIPE`` unless a recipe is named."""
    return {**parameters, "recipe": parameters.get("recipe") or DEFAULT_RECIPE}


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
