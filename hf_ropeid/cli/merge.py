"""``hf-ropeid merge``: a LoRA adapter merged into its base, with remote code and a model card; optionally pushed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .options import push_options, with_options


@with_options(push_options())
def merge_command(
    adapter: Annotated[
        Path, typer.Argument(help="Adapter folder written by `hf-ropeid finetune` (output_dir/adapter).")
    ],
    output: Annotated[Path, typer.Argument(help="Folder for the merged checkpoint.")],
    base: Annotated[
        str | None, typer.Option(help="Base model folder or Hub id. Default: the one the adapter names.")
    ] = None,
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16 | auto (the base's).")] = "auto",
    force: Annotated[
        bool, typer.Option(help="Replace a non-empty output folder (the old one stays until the new one is complete).")
    ] = False,
    base_model: Annotated[
        str | None,
        typer.Option(
            "--card-base-model",
            help="Hub id the model card names as base_model (metadata only; --base is the model merged into).",
        ),
    ] = None,
    base_model_alias: Annotated[str | None, typer.Option("--base-model", hidden=True)] = None,
    license: Annotated[str | None, typer.Option(help="License for the model card.")] = None,
    serving_length: Annotated[
        int | None,
        typer.Option(
            help="max_position_embeddings and the tokenizer's model_max_length to write (the serving cap of vLLM / "
            "SGLang's Transformers backend). Default: 16 x the RoPE-ID training length, as far as RoPE-ID was evaluated; "
            "rope_parameters.training_length stays L and is what the model reads."
        ),
    ] = None,
    push_to_hub: Annotated[str | None, typer.Option(help="Push the merged folder to this Hub repo (org/name).")] = None,
    **push: Any,
) -> None:
    """Merge a LoRA adapter into its base: a full checkpoint with remote code and a model card; optionally push it."""
    from ..hub import push_to_hub as push_folder
    from ..merge import merge_adapter
    from .options import OptionError

    if base_model_alias is not None:  # the old, confusable spelling
        if base_model is not None and base_model != base_model_alias:
            raise OptionError("--base-model is the old name of --card-base-model; give one of them.")
        base_model = base_model_alias

    folder = merge_adapter(
        adapter,
        output,
        base=base,
        dtype=dtype,
        force=force,
        base_model=base_model,
        license=license,
        repo_id=push_to_hub,
        serving_length=serving_length,
    )
    typer.echo(str(folder))
    if push_to_hub:
        push["commit_message"] = (
            push["commit_message"] or f"Upload {folder.name} (RoPE-ID + LoRA, merged, by hf-ropeid)"
        )
        typer.echo(push_folder(folder, push_to_hub, **push))
