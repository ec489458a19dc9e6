"""``hf-ropeid``: the command line, one module per command over the library (needs the ``[cli]`` extra).

``app`` is the typer app (``hf_ropeid/cli/app.py``, which also maps errors to exit codes),
``main`` the console script. Option parsers and shared option groups live in ``options.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

try:
    import typer  # noqa: F401
except ImportError:  # the library works without typer; only the command line needs it
    app = None

    def main(argv: Sequence[str] | None = None) -> None:
        print("error: the hf-ropeid command line needs typer: pip install 'hf-ropeid[cli]'", file=sys.stderr)
        raise SystemExit(2)
else:
    from .app import app, main

__all__ = ["app", "main"]
