"""``hf-ropeid``: the command line. Each command is a thin wrapper over a library function."""

from __future__ import annotations

import typer

from .conversion_cli import convert_command, fetch_smollm2_command, push_command
from .evaluation import eval_command
from .merge import merge_command
from .training import finetune_command

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RoPE-ID for Llama-family models.")


@app.callback()
def _root() -> None:
    """RoPE-ID for Llama-family models: convert, fine-tune, merge, evaluate, publish."""
    # An explicit callback keeps subcommands as subcommands even if only one were registered.


app.command("convert")(convert_command)
app.command("finetune")(finetune_command)
app.command("merge")(merge_command)
app.command("eval")(eval_command)
app.command("push")(push_command)
app.command("fetch-smollm2")(fetch_smollm2_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
