"""The one error base class of the tool layer, and the error for a missing optional dependency.

Every error the tools raise for a reason the user can act on (bad input, a refused target, a failed
check, a missing extra) derives from ``HfRopeIDError``; the command line turns exactly these into
``error: <message>`` on stderr and exit code 2 (``hf_ropeid/cli/app.py``). Anything else is a bug
and keeps its traceback.

``rope_id.RopeIDParameterError`` is the one exception to the rule: it lives in a remote-code file,
which must import nothing from this package, so the command line lists it next to this class.
"""

from __future__ import annotations

import importlib


class HfRopeIDError(Exception):
    """Base of every hf-ropeid error whose message tells the user what was wrong and what is accepted."""


class MissingDependencyError(HfRopeIDError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, purpose: str) -> None:
    """Raises MissingDependencyError naming ``pip install 'hf-ropeid[extra]'`` unless ``module`` imports."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{purpose} needs the package {module!r}, which is not installed: pip install 'hf-ropeid[{extra}]'"
        ) from error
