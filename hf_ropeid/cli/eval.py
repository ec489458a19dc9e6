"""``hf-ropeid eval``: length generalisation of a model and its positional baselines, written as a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..evaluation.baselines import VARIANTS
from ..evaluation.retrieval import TASKS, TEMPLATES
from .options import float_list, int_list, name_list


def eval_command(
    model: Annotated[str, typer.Argument(help="Model folder or Hub id (loaded with trust_remote_code=True).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: eval-<model name>).")] = None,
    lengths: Annotated[str | None, typer.Option(help="Comma-separated context lengths (default: L/2 ... 16L).")] = None,
    baselines: Annotated[
        str | None,
        typer.Option(help=f"Comma-separated variants (default: all the model allows but the opt-in two-part kernels rerope, self_extend): {', '.join(VARIANTS)}."),
    ] = None,
    text: Annotated[
        list[Path] | None,
        typer.Option(
            help="Evaluation text: txt/md/rst/py/jsonl/json/parquet file, folder or glob; repeatable (default: Python's stdlib source)."
        ),
    ] = None,
    text_field: Annotated[str, typer.Option(help="Field of jsonl / json / parquet records holding the text.")] = "text",
    haystack: Annotated[
        list[Path] | None, typer.Option(help="Haystack text for retrieval (default: the evaluation text).")
    ] = None,
    training_length: Annotated[int | None, typer.Option(help="Override L, the training length.")] = None,
    tokens_per_length: Annotated[int, typer.Option(help="Tokens evaluated per length (whole windows).")] = 16384,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass, at most.")] = 8,
    token_budget: Annotated[int, typer.Option(help="Tokens per forward pass, at most (batch x length).")] = 32768,
    position_buckets: Annotated[int, typer.Option(help="Buckets of the per-position curves.")] = 32,
    dynamic_factor: Annotated[float, typer.Option(help="`factor` of the dynamic NTK baseline.")] = 2.0,
    retrieval: Annotated[
        bool, typer.Option("--retrieval/--no-retrieval", help="Passkey and multi-key needles.")
    ] = True,
    tasks: Annotated[str, typer.Option(help="Retrieval tasks: passkey, multikey.")] = "passkey,multikey",
    depths: Annotated[str, typer.Option(help="Needle depths, fractions of the haystack.")] = "0,0.25,0.5,0.75,1",
    samples: Annotated[int, typer.Option(help="Retrieval samples per length and depth.")] = 4,
    needles: Annotated[int, typer.Option(help="Needles in multikey (one asked, the rest distractors).")] = 4,
    retrieval_template: Annotated[
        str,
        typer.Option(help="standard (passkey / RULER wording) or compact (no instruction: short training lengths)."),
    ] = "standard",
    diagnostics: Annotated[
        bool, typer.Option("--diagnostics/--no-diagnostics", help="Sink mass/margin and key/query cluster separation.")
    ] = True,
    layers: Annotated[str | None, typer.Option(help="Diagnostic layers (default: first, middle, last).")] = None,
    heads: Annotated[str | None, typer.Option(help="Diagnostic query heads (default: all).")] = None,
    diagnostic_queries: Annotated[int, typer.Option(help="Query positions sampled per diagnostic window.")] = 256,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps ...")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16.")
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the retrieval samples.")] = 0,
    force: Annotated[
        bool,
        typer.Option(help="Replace a non-empty output folder (the old one stays until the new report is complete)."),
    ] = False,
) -> None:
    """Length generalisation of a model and its positional baselines: perplexity, retrieval, diagnostics."""
    from ..atomic import check_target
    from ..evaluation import (
        RESULTS_JSON,
        RESULTS_MARKDOWN,
        EvalSettings,
        load_model_and_tokenizer,
        results_markdown,
        run_evaluation,
        write_report,
    )

    out = out or Path(f"eval-{Path(model.rstrip('/')).name}")
    check_target(out, force, hint="choose another --out or pass --force to replace it")
    settings = EvalSettings(
        lengths=int_list(lengths, "--lengths"),
        variants=name_list(baselines, VARIANTS, "baselines"),
        training_length=training_length,
        tokens_per_length=tokens_per_length,
        batch_size=batch_size,
        token_budget=token_budget,
        position_buckets=position_buckets,
        dynamic_factor=dynamic_factor,
        retrieval=retrieval,
        retrieval_tasks=name_list(tasks, TASKS, "retrieval tasks"),
        depths=float_list(depths, "--depths"),
        retrieval_samples=samples,
        needles=needles,
        retrieval_template=name_list(retrieval_template, TEMPLATES, "retrieval templates")[0],
        diagnostics=diagnostics,
        diagnostic_layers=int_list(layers, "--layers") or None,
        diagnostic_heads=int_list(heads, "--heads") or None,
        diagnostic_queries=diagnostic_queries,
        seed=seed,
    )
    loaded, tokenizer = load_model_and_tokenizer(model, device=device, dtype=dtype)
    results = run_evaluation(
        loaded,
        tokenizer,
        settings,
        text_paths=text or None,
        haystack_paths=haystack or None,
        text_field=text_field,
        model_name=model,
    )
    write_report(results, out, force=force)
    typer.echo(results_markdown(results))
    typer.echo(f"Wrote {out}/{RESULTS_JSON}, {RESULTS_MARKDOWN} and plots.")
