"""Retrieval vs length: passkey retrieval and RULER-style multi-key needles in a local haystack.

- ``passkey`` (Mohtashami & Jaggi 2023): one needle "The pass key is 71432. Remember it. ..." at a
  given depth; the prompt ends "The pass key is" and the answer is the number.
- ``multikey`` (RULER's niah_multikey): ``needles`` needles "The special magic number for <word>
  is: <7 digits>." with different words; the one asked about sits at the given depth, the others
  (distractors) at random depths.

Every sample is exactly ``n`` tokens: instruction, haystack tokens with the needle(s) spliced in,
question, answer. Scoring is one teacher-forced forward pass: a sample is correct when the greedy
(argmax) prediction at every answer position is the answer token, which is exactly when greedy
decoding would produce the answer. The answer's log-probability is kept too (a graded signal when
accuracy is 0 everywhere). Samples are built once and shared by every variant.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import HfRopeIDError
from .passes import batch_size_for, final_hidden_states, logits_from_hidden

TASKS = ("passkey", "multikey")

PASSKEY_INSTRUCTION = "A pass key is hidden in the text below. Find it and remember it.\n"
PASSKEY_NEEDLE = "\nThe pass key is {value}. Remember it. {value} is the pass key.\n"
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"
MULTIKEY_INSTRUCTION = "Special magic numbers are hidden in the text below. Remember them.\n"
MULTIKEY_NEEDLE = "\nThe special magic number for {key} is: {value}.\n"
MULTIKEY_QUESTION = "\nWhat is the special magic number for {key}? The special magic number for {key} is:"
# Keys of the multikey needles: common, distinct, single words.
KEY_WORDS = (
    "apple",
    "river",
    "candle",
    "forest",
    "violin",
    "harbor",
    "pepper",
    "marble",
    "falcon",
    "lantern",
    "meadow",
    "copper",
    "glacier",
    "saddle",
    "orchid",
    "thunder",
    "biscuit",
    "compass",
    "velvet",
    "walnut",
    "beacon",
    "cactus",
    "dolphin",
    "ember",
    "fountain",
    "garnet",
    "hammock",
    "igloo",
    "jasmine",
    "kettle",
)


class RetrievalError(HfRopeIDError, ValueError):
    """Bad retrieval settings; the message says what is accepted."""


@dataclass(frozen=True)
class Templates:
    """The words of both tasks. ``{value}`` is the answer, ``{key}`` the multikey needle's key word."""

    passkey_instruction: str
    passkey_needle: str
    passkey_question: str
    multikey_instruction: str
    multikey_needle: str
    multikey_question: str


TEMPLATES = {
    # Passkey as in Mohtashami & Jaggi, multikey as in RULER: for models that read instructions.
    "standard": Templates(
        PASSKEY_INSTRUCTION, PASSKEY_NEEDLE, PASSKEY_QUESTION, MULTIKEY_INSTRUCTION, MULTIKEY_NEEDLE, MULTIKEY_QUESTION
    ),
    # The same retrieval with as few tokens as possible (no instruction): for models with a short training
    # length (a byte-level toy at 128 bytes fits four needles and a haystack) that retrieve by copying.
    "compact": Templates("", " pass key: {value}. ", " pass key:", "", " {key}: {value}. ", " {key}:"),
}


@dataclass(frozen=True)
class Sample:
    """One retrieval prompt of exactly ``len(input_ids)`` tokens; the answer is its last ``answer_length``."""

    input_ids: tuple[int, ...]
    answer_length: int
    depth: float
    answer: str


def split_answer(tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of ``question`` and of ``answer`` as it continues it (encoded together, then split).

    Encoding the pair together gives the tokens a model would see (e.g. " 71432" after "is").
    """
    context = tokenizer(question, add_special_tokens=False)["input_ids"]
    whole = tokenizer(question + answer, add_special_tokens=False)["input_ids"]
    if whole[: len(context)] != context or len(whole) == len(context):
        # The boundary merged across question and answer: fall back to encoding them apart.
        return context, tokenizer(answer, add_special_tokens=False)["input_ids"]
    return context, whole[len(context) :]


def build_sample(
    tokenizer,
    haystack: torch.Tensor,
    length: int,
    instruction: str,
    needles: Sequence[tuple[str, float]],
    question: str,
    answer: str,
    depth: float,
    rng: random.Random,
) -> Sample | None:
    """Splices ``needles`` (text, depth) into a haystack slice so that the prompt is exactly ``length`` tokens.

    Returns None when the template alone does not fit in ``length`` tokens.
    """
    prefix = tokenizer(instruction)["input_ids"]  # with BOS if the tokenizer adds one
    needle_ids = [(tokenizer(text, add_special_tokens=False)["input_ids"], d) for text, d in needles]
    question_ids, answer_ids = split_answer(tokenizer, question, answer)
    fixed = len(prefix) + sum(len(ids) for ids, _ in needle_ids) + len(question_ids) + len(answer_ids)
    room = length - fixed
    if room < 1:
        return None
    if haystack.numel() < room:
        raise RetrievalError(
            f"The haystack has {haystack.numel()} tokens; a {length}-token prompt needs {room}. "
            "Give a longer --haystack."
        )
    start = rng.randrange(0, haystack.numel() - room + 1)
    hay = haystack[start : start + room].tolist()
    # Insert from the deepest needle backwards so that earlier insertion points stay valid.
    body = list(hay)
    for ids, d in sorted(needle_ids, key=lambda item: item[1], reverse=True):
        at = int(round(d * room))
        body[at:at] = ids
    input_ids = prefix + body + question_ids + answer_ids
    assert len(input_ids) == length
    return Sample(tuple(input_ids), len(answer_ids), depth, answer.strip())


def passkey_sample(
    tokenizer, haystack: torch.Tensor, length: int, depth: float, rng: random.Random, template: str = "standard"
) -> Sample | None:
    words = TEMPLATES[template]
    value = str(rng.randrange(10_000, 100_000))
    return build_sample(
        tokenizer,
        haystack,
        length,
        words.passkey_instruction,
        [(words.passkey_needle.format(value=value), depth)],
        words.passkey_question,
        " " + value,
        depth,
        rng,
    )


def multikey_sample(
    tokenizer,
    haystack: torch.Tensor,
    length: int,
    depth: float,
    rng: random.Random,
    needles: int = 4,
    template: str = "standard",
) -> Sample | None:
    words = TEMPLATES[template]
    if not 1 <= needles <= len(KEY_WORDS):
        raise RetrievalError(f"needles must be between 1 and {len(KEY_WORDS)}, got {needles}.")
    keys = rng.sample(KEY_WORDS, needles)
    values = [str(rng.randrange(1_000_000, 10_000_000)) for _ in keys]
    placed = [(words.multikey_needle.format(key=keys[0], value=values[0]), depth)]
    placed += [(words.multikey_needle.format(key=k, value=v), rng.random()) for k, v in zip(keys[1:], values[1:])]
    return build_sample(
        tokenizer,
        haystack,
        length,
        words.multikey_instruction,
        placed,
        words.multikey_question.format(key=keys[0]),
        " " + values[0],
        depth,
        rng,
    )


def prepare_tasks(
    tokenizer,
    haystack: torch.Tensor,
    tasks: Sequence[str],
    lengths: Sequence[int],
    depths: Sequence[float],
    samples: int = 4,
    needles: int = 4,
    seed: int = 0,
    template: str = "standard",
) -> dict[str, dict[int, list[Sample]]]:
    """``{task: {length: [samples for every depth]}}``; the same samples for every variant."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise RetrievalError(f"Unknown retrieval task(s) {unknown}; accepted: {', '.join(TASKS)}.")
    if template not in TEMPLATES:
        raise RetrievalError(f"Unknown retrieval template {template!r}; accepted: {', '.join(TEMPLATES)}.")
    out: dict[str, dict[int, list[Sample]]] = {}
    for task in tasks:
        out[task] = {}
        for n in lengths:
            rng = random.Random(f"{seed}-{task}-{n}")
            made = []
            for depth in depths:
                for _ in range(samples):
                    if task == "passkey":
                        sample = passkey_sample(tokenizer, haystack, n, depth, rng, template)
                    else:
                        sample = multikey_sample(tokenizer, haystack, n, depth, rng, needles, template)
                    if sample is not None:
                        made.append(sample)
            out[task][n] = made
    return out


@torch.inference_mode()
def score_answers(model, input_ids: torch.Tensor, answer_lengths: Sequence[int]) -> tuple[list[bool], list[float]]:
    """Teacher-forced answer check for prompts ``[batch, n]`` whose last ``answer_lengths[i]`` tokens are the answer.

    Returns (greedy exact match, answer log-probability in nats) per prompt.
    """

    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    n = input_ids.shape[1]
    longest = max(answer_lengths)
    hidden = final_hidden_states(model, input_ids)[:, n - 1 - longest : n - 1]  # predicts the last `longest` tokens
    log_probs = torch.log_softmax(logits_from_hidden(model, hidden), dim=-1)
    targets = input_ids[:, n - longest :]
    exact, total = [], []
    for i, a in enumerate(answer_lengths):
        lp, gold = log_probs[i, longest - a :], targets[i, longest - a :]
        exact.append(bool((lp.argmax(-1) == gold).all()))
        total.append(float(lp.gather(-1, gold[:, None]).sum()))
    return exact, total


def score_task(
    model,
    samples: Sequence[Sample],
    depths: Sequence[float],
    batch_size: int = 8,
    token_budget: int = 32768,
    progress: bool = False,
    description: str = "",
) -> dict[str, Any]:
    """Accuracy overall and per depth, plus mean answer log-probability; ``accuracy`` None if no sample fits."""
    from tqdm.auto import tqdm

    if not samples:
        return {"accuracy": None, "samples": 0, "answer_logprob": None, "by_depth": {}, "skipped": "too short"}
    per_batch = batch_size_for(len(samples[0].input_ids), batch_size, token_budget)
    exact: list[bool] = []
    logprob: list[float] = []
    for start in tqdm(range(0, len(samples), per_batch), desc=description, leave=False, disable=not progress):
        batch = samples[start : start + per_batch]
        ids = torch.tensor([s.input_ids for s in batch], dtype=torch.long)
        e, lp = score_answers(model, ids, [s.answer_length for s in batch])
        exact += e
        logprob += lp
    by_depth = {}
    for depth in depths:
        picked = [i for i, s in enumerate(samples) if s.depth == depth]
        if picked:
            by_depth[str(depth)] = {
                "accuracy": sum(exact[i] for i in picked) / len(picked),
                "samples": len(picked),
                "answer_logprob": sum(logprob[i] for i in picked) / len(picked),
            }
    return {
        "accuracy": sum(exact) / len(exact),
        "samples": len(exact),
        "answer_logprob": sum(logprob) / len(logprob),
        "by_depth": by_depth,
    }


def plot_results(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Per task: accuracy heatmaps (depth x length, one panel per variant); accuracy vs length for all tasks."""
    from .plots import color_map, heatmap_grid, lines_grid

    retrieval = results.get("retrieval") or {}
    if not retrieval:
        return []
    lengths, variants, L = results["lengths"], results["variants"], results["training_length"]
    depths = results["settings"]["depths"]
    written = []
    panels = {}
    for task, by_variant in retrieval.items():
        grids = {}
        panels[task] = {}
        for v in variants:
            cells = by_variant.get(v, {})
            grids[v] = [
                [cells.get(str(n), {}).get("by_depth", {}).get(str(d), {}).get("accuracy") for n in lengths]
                for d in depths
            ]
            panels[task][v] = (lengths, [cells.get(str(n), {}).get("accuracy") for n in lengths])
        written.append(
            heatmap_grid(
                out_dir / f"retrieval_{task}_heatmap.png",
                grids,
                row_labels=[f"{d:g}" for d in depths],
                column_labels=[str(n) for n in lengths],
                xlabel="context length",
                ylabel="needle depth",
                suptitle=f"{task}: exact-match accuracy (L = {L})",
                value_format="{:.0%}",
            )
        )
    written.append(
        lines_grid(
            out_dir / "retrieval_vs_length.png",
            panels,
            xlabel="context length (tokens)",
            ylabel="exact-match accuracy",
            log_x=True,
            vline=L,
            ylim=(-0.03, 1.03),
            colors=color_map(variants),
            suptitle=f"Retrieval accuracy vs length, all depths (L = {L})",
        )
    )
    return written


__all__ = ["TASKS", "Sample", "build_sample", "prepare_tasks", "score_answers", "score_task"]
