"""``hf-ropeid finetune``: LoRA (or full) continued training; one option per ``FinetuneArguments`` field.

The conversion options are the shared RoPE-ID group (``options.rope_id_options``), the same as
``hf-ropeid convert``'s; every other option is generated from the argument groups' fields and help.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from typing import Any

import typer

from ..conversion import CHANNEL_SELECTIONS
from ..parameters import CONVERSION_OPTION_KEYS
from ..training import ARGUMENT_GROUPS, FinetuneArguments, train
from .options import option, rope_id_options, rope_id_values, with_options

# Accepted values of string options, shown in --help
_ACCEPTED = {"channel_selection": f" Accepted: {' | '.join(CHANNEL_SELECTIONS)}."}


def _field_options() -> list[inspect.Parameter]:
    """Every argument-group field but the RoPE-ID ones as a typer option (``--lora-r``, repeated ``--data`` ...)."""
    parameters = []
    for group in ARGUMENT_GROUPS.values():
        hints = typing.get_type_hints(group)
        for f in dataclasses.fields(group):
            if f.name in CONVERSION_OPTION_KEYS:
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory() or None  # typer shows an empty list as "None"
            else:
                default = ...  # required
            help_text = f.metadata["help"] + _ACCEPTED.get(f.name, "")
            parameters.append(
                option(f.name, hints[f.name], default, help=help_text, show_default=default not in (None, ...))
            )
    return parameters


# Fields whose own default is None: a None from typer is passed on, not dropped.
_NULLABLE = {f.name for group in ARGUMENT_GROUPS.values() for f in dataclasses.fields(group) if f.default is None}

# Other spellings of a field's flag, accepted but not shown: alias -> field
ALIASES = {"gradient_checkpointing": "activation_checkpointing"}


def _alias_options() -> list[inspect.Parameter]:
    return [
        option(alias, bool, False, "--" + alias.replace("_", "-"), hidden=True, help=f"Same as --{field}.")
        for alias, field in ALIASES.items()
    ]


@with_options(_field_options(), rope_id_options(), _alias_options())
def finetune_command(**options: Any) -> None:
    """LoRA (or full) continued training of a RoPE-ID model, or of a Llama converted on the fly."""
    for alias, field in ALIASES.items():
        if options.pop(alias, False):
            options[field] = True
    rope_id_parameters = rope_id_values(options)  # rotary_fraction stays as typed: the arguments check it
    values = {k: v for k, v in {**options, **rope_id_parameters}.items() if v is not None or k in _NULLABLE}
    summary = train(FinetuneArguments.from_flat(**values))
    from accelerate import PartialState

    summary.pop("model")
    if PartialState().is_main_process:
        typer.echo(json.dumps(summary, indent=2, default=str))
