"""``hf-ropeid``: the command line. Each command is a thin wrapper over a library function."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RoPE-ID for Llama-family models.")

# Commands are registered below, one line each, from the module that owns them.
# --- commands ---
# --- end commands ---


def main() -> None:
    app()


if __name__ == "__main__":
    main()
