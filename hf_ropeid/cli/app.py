"""The ``hf-ropeid`` typer app, and the one place where errors become exit codes.

Exit codes:

- 0: done;
- 2: the command refused or failed for a reason the user can act on: an ``HfRopeIDError`` (bad
  option value or input, a target that exists, a failed verification, the Hub refusing, a missing
  extra) or ``RopeIDParameterError``. The message goes to stderr as ``error: <message>``, without
  a traceback unless ``--debug`` or ``HF_ROPEID_DEBUG=1``. Click's own usage errors (an unknown
  option, a missing argument) also exit 2, in click's format;
- 2 also for failures of the machine rather than the input, each as one line saying what to do: a
  read-only or not permitted location, a full disk (``OSError`` EROFS / EACCES / EPERM / ENOSPC /
  EDQUOT) and no network (connection errors of requests / httpx / huggingface_hub). They are
  mapped here, in ``environment_message``, and nowhere else;
- 130 after Ctrl-C (SIGINT), 143 after SIGTERM: ``interrupted; nothing was written`` on stderr, no
  traceback. SIGTERM is turned into an exception for the whole command, so every ``finally`` runs:
  partial folders are removed and the verification child is killed and reaped;
- 1: anything else: a bug, reported with its traceback.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

import typer

from ..errors import HfRopeIDError
from ..rope_id import RopeIDParameterError
from .convert import convert_command
from .eval import eval_command
from .export_gguf import export_gguf_command
from .fetch_smollm2 import fetch_smollm2_command
from .finetune import finetune_command
from .merge import merge_command
from .push import push_command
from .verify import verify_command

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
INTERRUPTED_MESSAGE = "interrupted; nothing was written"
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


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup (``finally``, context managers) runs."""


# errno -> what went wrong, what to do
_OS_ERRORS = {
    errno.EROFS: ("is on a read-only file system", "choose an output folder on a writable disk"),
    errno.EACCES: ("cannot be accessed (permission denied)", "choose another folder or fix its permissions"),
    errno.EPERM: ("is not permitted (operation not permitted)", "choose another folder or fix its permissions"),
    errno.ENOSPC: ("cannot be written: no space left on the device", "free some space or write elsewhere"),
    errno.EDQUOT: ("cannot be written: disk quota exceeded", "free some space or write elsewhere"),
}
_CONNECTION_ERROR_NAMES = {"ConnectError", "ConnectTimeout", "ConnectionError", "NetworkError", "TransportError"}


def _is_connection_error(error: BaseException) -> bool:
    if isinstance(error, ConnectionError):  # huggingface_hub's OfflineModeIsEnabled too
        return not isinstance(error, BrokenPipeError)  # a closed stdout (`| head`) is not the network
    return any(
        cls.__name__ in _CONNECTION_ERROR_NAMES and cls.__module__.split(".")[0] in ("httpx", "httpx2", "requests",
                                                                                      "urllib3", "huggingface_hub")
        for cls in type(error).__mro__
    )


def environment_message(error: BaseException) -> str | None:
    """One line for a failure of the machine rather than of the input (disk, permissions, network), else None.

    The error may be wrapped (``raise ... from``): the chain is searched for the first such cause.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if _is_connection_error(error):
            return (
                f"could not reach the network ({type(error).__name__}: {str(error).strip() or 'no details'}); "
                "check the connection (or HF_HUB_OFFLINE), or use local folders."
            )
        if isinstance(error, OSError) and error.errno in _OS_ERRORS:
            what, todo = _OS_ERRORS[error.errno]
            where = error.filename if error.filename is not None else "the output location"
            return f"{where} {what}; {todo}."
        error = error.__cause__ or error.__context__
    return None


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
    raise Terminated()


def reporting_errors(command: Callable) -> Callable:
    """``command``, with user and environment errors as ``error: <message>`` (exit 2), signals as one line."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            if debugging():
                raise
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except (KeyboardInterrupt, Terminated) as error:
            if debugging():
                raise
            typer.echo(INTERRUPTED_MESSAGE, err=True)
            raise typer.Exit(EXIT_INTERRUPTED if isinstance(error, KeyboardInterrupt) else EXIT_TERMINATED) from None
        except Exception as error:
            message = environment_message(error)
            if message is None or debugging():
                raise
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    return run


for name, command in (
    ("convert", convert_command),
    ("finetune", finetune_command),
    ("merge", merge_command),
    ("eval", eval_command),
    ("push", push_command),
    ("verify", verify_command),
    ("fetch-smollm2", fetch_smollm2_command),
    ("export-gguf", export_gguf_command),
):
    app.command(name)(reporting_errors(command))


def main(argv: Sequence[str] | None = None) -> None:
    """The console script; ``argv`` (without the program name) defaults to ``sys.argv[1:]``."""
    app(args=list(argv) if argv is not None else None, prog_name="hf-ropeid")
