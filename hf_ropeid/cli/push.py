"""``hf-ropeid push``: upload a converted or merged folder to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .options import push_options, with_options


@with_options(push_options())
def push_command(
    folder: Annotated[Path, typer.Argument(help="A converted or merged checkpoint folder.")],
    repo_id: Annotated[str, typer.Argument(help="Hub repo, e.g. your-name/SmolLM2-135M-Instruct-rope-id.")],
    **push: Any,
) -> None:
    """Push a converted folder to the Hugging Face Hub (token from HF_TOKEN or `hf auth login`)."""
    from ..hub import push_to_hub

    typer.echo(push_to_hub(folder, repo_id, **push))
