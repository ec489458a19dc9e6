"""lm-evaluation-harness tasks over local jsonl files (no dataset download)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

from .errors import EvaluationError
from .retrieval import PASSKEY_INSTRUCTION, PASSKEY_NEEDLE, PASSKEY_QUESTION
from .text import default_text_paths, read_documents

LM_EVAL_PERPLEXITY_TASK = "ropeid_local_ppl"
LM_EVAL_PASSKEY_TASK = "ropeid_local_passkey"
_LM_EVAL_DATASET = """dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
"""  # {data} is a JSON-quoted absolute path (valid YAML whatever characters it holds)


def write_lm_eval_tasks(
    folder: str | Path,
    text_paths: Sequence[str | Path] | None = None,
    *,
    documents: int = 16,
    document_chars: int = 8000,
    passkey_chars: int = 4000,
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    seed: int = 0,
) -> list[Path]:
    """Writes two lm-eval tasks over local jsonl files (``lm_eval --include_path FOLDER``).

    - ``ropeid_local_ppl`` (loglikelihood_rolling): word/byte perplexity and bits per byte of
      ``documents`` local documents (default: Python's stdlib source), each cut to ``document_chars``.
    - ``ropeid_local_passkey`` (generate_until, exact match): one passkey prompt per depth with a
      haystack of about ``passkey_chars`` characters.

    The YAML files name the jsonl files by absolute path; ``datasets``' json loader reads them
    offline.
    """
    import random

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    texts = list(islice((t[:document_chars] for t in read_documents(text_paths or default_text_paths())), documents))
    if not texts:
        raise EvaluationError("No text to build lm-eval tasks from.")
    haystack = "\n".join(texts)
    while len(haystack) < passkey_chars:
        haystack += "\n" + haystack
    rng = random.Random(seed)
    passkeys = []
    for depth in depths:
        value = str(rng.randrange(10_000, 100_000))
        start = rng.randrange(0, len(haystack) - passkey_chars + 1)
        hay = haystack[start : start + passkey_chars]
        at = hay.rfind("\n", 0, int(depth * len(hay)) + 1) + 1  # a line boundary at or before the depth
        prompt = (
            PASSKEY_INSTRUCTION
            + hay[:at]
            + PASSKEY_NEEDLE.format(value=value)
            + hay[at:]
            + PASSKEY_QUESTION
        )
        passkeys.append({"prompt": prompt, "answer": value, "depth": depth})
    written = []
    for name, records in (("documents.jsonl", [{"text": t} for t in texts]), ("passkey.jsonl", passkeys)):
        path = folder / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        written.append(path)
    (folder / f"{LM_EVAL_PERPLEXITY_TASK}.yaml").write_text(
        f"task: {LM_EVAL_PERPLEXITY_TASK}\n"
        + _LM_EVAL_DATASET.format(data=json.dumps(str(folder / "documents.jsonl")))
        + 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
        "metadata:\n  version: 1.0\n"
    )
    (folder / f"{LM_EVAL_PASSKEY_TASK}.yaml").write_text(
        f"task: {LM_EVAL_PASSKEY_TASK}\n"
        + _LM_EVAL_DATASET.format(data=json.dumps(str(folder / "passkey.jsonl")))
        + 'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["."]\n  max_gen_toks: 8\n  do_sample: false\n'
        # The model answers " 60494": whitespace and the closing period are not part of the answer.
        'metric_list:\n  - metric: exact_match\n    regexes_to_ignore: ["\\\\s"]\n    ignore_punctuation: true\n'
        "metadata:\n  version: 1.0\n"
    )
    return [*written, folder / f"{LM_EVAL_PERPLEXITY_TASK}.yaml", folder / f"{LM_EVAL_PASSKEY_TASK}.yaml"]
