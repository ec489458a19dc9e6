"""``hf-ropeid verify``: check a checkpoint folder for corruption (sha256, finiteness, shapes) without loading it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def verify_command(
    folder: Annotated[Path, typer.Argument(help="A checkpoint folder (converted, merged or any Llama).")],
) -> None:
    """Check a checkpoint for corruption: recorded sha256 of every weight file, finite tensors, shapes vs config."""
    from ..integrity import verify_folder

    report = verify_folder(folder)  # IntegrityError: exit 2, naming each corrupt file or tensor
    for note in report["notes"]:
        typer.echo(f"note: {note}", err=True)
    hashed = f"{report['files_hashed']} files match their recorded sha256, " if report["files_hashed"] else ""
    typer.echo(f"ok: {folder} ({hashed}{report['tensors_checked']} tensors finite)")
