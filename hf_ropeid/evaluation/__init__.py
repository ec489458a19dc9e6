"""Length-generalisation evaluation: perplexity vs context length, retrieval, diagnostics, report.

Modules, each importing only the ones listed before it:

- ``errors``: ``EvaluationError``.
- ``text``: evaluation text (through ``hf_ropeid.documents``) -> token stream -> windows.
- ``passes``: model passes shared by every measurement (``token_losses``, ``perplexity_at_length``).
- ``baselines``: the positional variants (RoPE, PI, NTK, YaRN, p-RoPE, RoPE-ID ...) on the same weights.
- ``plots``: matplotlib helpers (needs the ``[eval]`` extra).
- ``retrieval``, ``diagnostics``: passkey / multi-key needles; sink and cluster geometry.
- ``run``: ``EvalSettings`` and ``run_evaluation`` (every variant at every length).
- ``report``: ``results.json``, ``results.md``, PNGs (``write_report``).
- ``lm_eval_tasks``: lm-evaluation-harness tasks over local files.

The names below are the public API (README: "From Python").
"""

from .errors import EvaluationError
from .lm_eval_tasks import write_lm_eval_tasks
from .passes import bucket_means, perplexity_at_length, token_losses
from .report import RESULTS_JSON, RESULTS_MARKDOWN, load_results, results_markdown, write_report
from .run import EvalSettings, default_lengths, load_model_and_tokenizer, resolve_settings, run_evaluation
from .text import default_text_paths, make_windows, read_documents, text_files, token_stream

__all__ = [
    "RESULTS_JSON",
    "RESULTS_MARKDOWN",
    "EvalSettings",
    "EvaluationError",
    "bucket_means",
    "default_lengths",
    "default_text_paths",
    "load_model_and_tokenizer",
    "load_results",
    "make_windows",
    "perplexity_at_length",
    "read_documents",
    "resolve_settings",
    "results_markdown",
    "run_evaluation",
    "text_files",
    "token_losses",
    "token_stream",
    "write_lm_eval_tasks",
    "write_report",
]
