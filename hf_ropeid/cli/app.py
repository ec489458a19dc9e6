"""The ``hf-ropeid`` typer app, and the one place where errors become exit codes.

Exit codes:

- 0: done;
- 2: the command refused or failed for a reason the user can act on: an ``HfRopeIDError`` (bad
  option value or input, a target that exists, a failed verification, the Hub refusing, a missing
  extra) or ``RopeIDParameterError``. The message goes to stderr as ``error: <message>``, without
  a traceback unless ``--debug`` or ``HF_ROPEID_DEBUG=1``. Click's own usage errors (an unknown
  option, a missing argument) also exit 2, in click's format;
- 1: anything else: a bug, reported with its traceback.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import typer

from ..errors import HfRopeIDError
from ..rope_id import RopeIDParameterError
from .convert import convert_command
from .eval import eval_command
from .fetch_smollm2 import fetch_smollm2_command
from .finetune import finetune_command
from .merge import merge_command
from .push import push_command

EXIT_USER_ERROR = 2
# RopeIDParameterError lives in a remote-code file that may import nothing from hf_ropeid, so it
# cannot derive from HfRopeIDError; it is listed here instead.
USER_ERRORS = (HfRopeIDError, RopeIDParameterError)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RoPE-ID for Llama-family models.")
_debug = {"on": False}


def debugging() -> bool:
    return _debug["on"] or os.environ.get("HF_ROPEID_DEBUG", "") not in ("", "0")


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error (also: HF_ROPEID_DEBUG=1)."),
) -> None:
    """RoPE-ID for Llama-family models: convert, fine-tune, merge, evaluate, publish."""
    # An explicit callback keeps subcommands as subcommands even if only one were registered.
    _debug["on"] = debug


def reporting_errors(command: Callable) -> Callable:
    """``command``, with user errors turned into ``error: <message>`` on stderr and exit code 2."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            if debugging():
                raise
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return run


for name, command in (
    ("convert", convert_command),
    ("finetune", finetune_command),
    ("merge", merge_command),
    ("eval", eval_command),
    ("push", push_command),
    ("fetch-smollm2", fetch_smollm2_command),
):
    app.command(name)(reporting_errors(command))


def main(argv: Sequence[str] | None = None) -> None:
    """The console script; ``argv`` (without the program name) defaults to ``sys.argv[1:]``."""
    app(args=list(argv) if argv is not None else None, prog_name="hf-ropeid")
