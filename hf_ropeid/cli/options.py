"""Every option parser and shared option group of the command line, in one place.

Parsers turn what users type (``256,512,1024``, ``auto:0.5``) into values and raise ``OptionError``
(an ``HfRopeIDError``: exit 2, ``error: ...``) naming the option. Option groups are lists of
``inspect.Parameter`` that ``with_options`` appends to a command's signature, so ``convert`` and
``finetune`` offer the very same RoPE-ID options, named after the frozen ``rope_parameters`` keys.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

import typer

from ..errors import HfRopeIDError
from ..parameters import DEFAULT_RECIPE, RECIPES, ROPE_ID_OPTION_KEYS, check_recipe


class OptionError(HfRopeIDError, ValueError):
    """A command-line option's value is not understood; the message names the option and the accepted form."""


# ----------------------------------------------------------------------------------------------
# Parsers


def int_list(value: str | None, option: str) -> list[int]:
    """``256,512,1024`` as ints (empty for no value)."""
    if not value:
        return []
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise OptionError(
            f"{option} must be comma-separated whole numbers, e.g. 256,512,1024; got {value!r}."
        ) from None


def float_list(value: str | None, option: str) -> list[float]:
    """``0,0.5,1`` as floats (empty for no value)."""
    try:
        return [float(part) for part in (value or "").split(",") if part.strip()]
    except ValueError:
        raise OptionError(f"{option} must be comma-separated numbers, e.g. 0,0.5,1; got {value!r}.") from None


def name_list(value: str | None, accepted: Sequence[str], what: str) -> list[str]:
    """``rope,yarn`` as names, each one of ``accepted``."""
    names = [part.strip() for part in (value or "").split(",") if part.strip()]
    unknown = [n for n in names if n not in accepted]
    if unknown:
        raise OptionError(f"Unknown {what} {unknown}; accepted: {', '.join(accepted)}.")
    return names


def lengths(value: str, option: str) -> tuple[int, ...]:
    """At least one window length of 2 tokens or more."""
    parsed = tuple(int_list(value, option))
    if not parsed or min(parsed) < 2:
        raise OptionError(f"{option}: give at least one length of 2 tokens or more, got {value!r}.")
    return parsed


# ----------------------------------------------------------------------------------------------
# Option groups


def option(name: str, annotation: Any, default: Any, *flags: str, **kwargs: Any) -> inspect.Parameter:
    """One keyword-only typer option (``flags`` default to ``--name-with-dashes``)."""
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=typer.Option(default, *flags, **kwargs)
    )


_ROPE_ID_HELP = {
    "rope_theta": (float, "Base of the original RoPE spectrum. Default: the source's."),
    "training_length": (int, "Training length L. Default: the source's max_position_embeddings."),
    "rotary_fraction": (
        str,
        "Fraction of pairs that rotate (a multiple of 2/head_dim); 'auto' (pairs whose original "
        "frequency turns --turns-per-training-length times inside L) or 'auto:T' (at least T turns). "
        "Default: auto:0.5 (minimal), auto (original), 0.5 (rope_id).",
    ),
    "shortest_period": (float, "Period in tokens of the fastest pair of the rope_id spectrum (32)."),
    "turns_per_training_length": (float, "Turns the slowest rotated pair completes inside L (2)."),
    "spectrum": (
        str,
        "rope_id (paper) | original (p-RoPE) | minimal (original where it turns enough, slower pairs "
        "sped up). Default: minimal.",
    ),
    "temperature": (
        str, "Query temperature past L: query_log | length_log | floor_log (llama.cpp's) | ssmax (at every "
        "position) | none (query_log)."
    ),
    "temperature_coefficient": (float, "c of query_log (0.1)."),
    "rotary_window": (int, "Keys this many tokens back or more are scored by the unrotated pairs only (far-context: L/2)."),
    "far_field": (str, "Experimental: none | log_count (needs rotary_window <= L-2)."),
    "temperature_channels": (str, "Channels the temperature multiplies: all (paper) | unrotated (NoPE only) (all)."),
    "local_layers": (str, "Layers, e.g. 0 or 0,1, that see only the rotary window and the first key (sliding "
                          "window, no temperature; needs --rotary-window; far-context: 0; \"\" for none). Adapt with it."),
}
# Old spellings, accepted but not shown: alias -> key
ROPE_ID_ALIASES = {"train_length": "training_length", "turns": "turns_per_training_length"}
assert set(_ROPE_ID_HELP) == set(ROPE_ID_OPTION_KEYS)


def rope_id_options() -> list[inspect.Parameter]:
    """Every RoPE-ID parameter as ``--key-with-dashes`` (default None: the model's / the converter's default)."""
    recipe = option("recipe", str | None, None, help=(
        f"Named set of the options below ({' | '.join(RECIPES)}; default {DEFAULT_RECIPE}); options given explicitly "
        "override it. far-context: --spectrum original --rotary-fraction 0.5 --rotary-window L/2 --temperature "
        "length_log --local-layers 0, measured best past L after LoRA at L; its attention runs only in transformers "
        "(eager / sdpa). "
        "portable: no window, query_log temperature: runs in vLLM, llama.cpp (GGUF) and flash-attention too. paper: the "
        "paper's spectrum, no window."))
    shown = [recipe] + [option(key, kind | None, None, help=help_text) for key, (kind, help_text) in _ROPE_ID_HELP.items()]
    hidden = [
        option(alias, _ROPE_ID_HELP[key][0] | None, None, "--" + alias.replace("_", "-"), hidden=True)
        for alias, key in ROPE_ID_ALIASES.items()
    ]
    return shown + hidden


def rope_id_values(options: dict[str, Any]) -> dict[str, Any]:
    """Pops the RoPE-ID options (aliases folded in, values as typed) out of ``options``."""
    values = {key: options.pop(key, None) for key in ("recipe", *ROPE_ID_OPTION_KEYS)}
    check_recipe(values["recipe"])  # before any download or work
    for alias, key in ROPE_ID_ALIASES.items():
        value = options.pop(alias, None)
        if value is not None:
            if values[key] is not None and values[key] != value:
                raise OptionError(
                    f"--{alias.replace('_', '-')} is the old name of --{key.replace('_', '-')}; give one of them."
                )
            values[key] = value
    return values


def push_options() -> list[inspect.Parameter]:
    """How a folder is pushed to the Hub (``--push-to-hub`` itself belongs to each command)."""
    return [
        option("private", bool, True, "--private/--public", help="Create the Hub repo private."),
        option("revision", str | None, None, help="Branch to push to (created if missing)."),
        option("commit_message", str | None, None, help="Commit message of the push."),
        option("create_pr", bool, False, help="Open a pull request instead of committing."),
    ]


def with_options(*groups: list[inspect.Parameter]) -> Callable[[Callable], Callable]:
    """Appends option groups to a command's signature; the command receives them in ``**options``."""

    def decorate(command: Callable) -> Callable:
        hints = typing.get_type_hints(command, include_extras=True)  # typer reads no string annotations here
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(command).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            return command(**kwargs)

        wrapper.__signature__ = inspect.Signature([*own, *(p for group in groups for p in group)])
        return wrapper

    return decorate
