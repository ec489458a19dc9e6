"""``hf-ropeid export-gguf``: a converted, merged or plain Llama folder to a llama.cpp GGUF file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export_gguf_command(
    folder: Annotated[Path, typer.Argument(help="Checkpoint folder (converted, merged or plain Llama; safetensors).")],
    output: Annotated[Path, typer.Argument(help="The .gguf file to write.")],
    dtype: Annotated[
        str, typer.Option(help="f32 | f16 | q8_0 for the matrices (norms and rope_freqs stay F32).")
    ] = "f32",
    force: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    tokenizer_pre: Annotated[
        str | None,
        typer.Option(help="llama.cpp's pre-tokenizer name, for a tokenizer llama.cpp's table does not know."),
    ] = None,
) -> None:
    """Export to llama.cpp's GGUF (llama arch, RoPE-ID pairs in rope_freqs); says what llama.cpp reproduces exactly."""
    from ..errors import require

    require("gguf", "gguf", "GGUF export")
    from ..gguf_export import describe_summary, export_gguf

    summary = export_gguf(folder, output, dtype=dtype, force=force, tokenizer_pre=tokenizer_pre)
    typer.echo(describe_summary(summary))
