"""Checks a converted checkpoint the way a user without hf_ropeid loads it, and measures perplexity.

``verify_checkpoint(folder, source=..., text=...)`` runs this file in a fresh Python process in
which ``import hf_ropeid`` fails and ``HF_MODULES_CACHE`` is a temporary folder. There it
- loads config, model (``trust_remote_code=True``) and tokenizer from the folder;
- checks every tensor of the safetensors files against the loaded model: present, same shape,
  same dtype, same values, finite; and that nothing was left at its random initialisation;
- compares the logits of a cached greedy generation with a full forward pass;
- measures perplexity of the source and the converted model at a few lengths.
The report is written to ``verification.json`` in the folder; problems raise VerificationError.

This file must run without the package: torch, transformers, safetensors and the standard
library only, no relative imports. That is the only reason ``perplexity_at_lengths`` below is a
second perplexity pass beside the package's one (``hf_ropeid.evaluation.passes.token_losses``):
the child process cannot import it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

try:  # inside the package; the verification child runs this file where hf_ropeid cannot be imported
    from .errors import HfRopeIDError
except ImportError:

    class HfRopeIDError(Exception):  # stands in for the package's base class in the child process
        pass


DEFAULT_LENGTHS = (256, 1024, 2048)

_BOOTSTRAP = r"""
import importlib.abc, os, runpy, signal, sys, threading, time

# The child dies with its parent: Ctrl-C and SIGTERM end it quietly (the parent reports), and if the
# parent disappears (even SIGKILL) it exits instead of running on as an orphan.
signal.signal(signal.SIGINT, lambda *_: os._exit(130))
signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
_parent = int(os.environ.get("HF_ROPEID_VERIFY_PARENT", "0"))
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
except Exception:
    pass
def _watch_parent():
    while True:
        if _parent and os.getppid() != _parent:
            os._exit(143)
        time.sleep(0.5)
threading.Thread(target=_watch_parent, daemon=True).start()

class _HideHfRopeid(importlib.abc.MetaPathFinder):
    # A user who only downloaded the checkpoint has no hf_ropeid: the remote code must suffice.
    def find_spec(self, name, path=None, target=None):
        if name == "hf_ropeid" or name.startswith("hf_ropeid."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden for verification)", name=name)
        return None

sys.meta_path.insert(0, _HideHfRopeid())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class VerificationError(HfRopeIDError, RuntimeError):
    """The converted checkpoint failed a check; the message lists the problems."""


@torch.no_grad()
def perplexity_at_lengths(
    model: torch.nn.Module,
    input_ids: torch.Tensor | Sequence[int],
    lengths: Sequence[int],
    max_tokens_per_length: int,
    *,
    bos_token_id: int | None = None,
    progress: bool = False,
) -> dict[int, dict[str, float] | None]:
    """Perplexity over non-overlapping windows of each length, taken from the start of ``input_ids``.

    Each length uses ``max(1, max_tokens_per_length // length)`` windows (fewer if the text is
    short; None if it is shorter than one window), so every length scores about the same tokens.
    Every window is an independent sequence (positions 0..length-1); with ``bos_token_id`` it
    starts with that token. Returns ``{length: {"perplexity", "windows", "scored_tokens"} | None}``.
    """
    from tqdm.auto import tqdm

    ids = torch.as_tensor(input_ids).reshape(-1)
    device = next(model.parameters()).device
    results: dict[int, dict[str, float] | None] = {}
    for length in lengths:
        body = length - (bos_token_id is not None)
        windows = min(max(1, max_tokens_per_length // length), len(ids) // body)
        if windows == 0:
            results[length] = None
            continue
        nll, count = 0.0, 0
        for w in tqdm(range(windows), desc=f"perplexity @ {length}", disable=not progress, leave=False):
            window = ids[w * body : (w + 1) * body]
            if bos_token_id is not None:
                window = torch.cat([torch.tensor([bos_token_id]), window])
            window = window[None].to(device)
            logits = model(input_ids=window, use_cache=False).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum").item()
            count += window.shape[1] - 1
        results[length] = {"perplexity": math.exp(nll / count), "windows": windows, "scored_tokens": count}
    return results


def verify_checkpoint(
    folder: str | os.PathLike,
    *,
    source: str | os.PathLike | None = None,
    text: str | os.PathLike | None = None,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    max_tokens_per_length: int | None = None,
    label: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Runs the checks in a fresh process without hf_ropeid; writes and returns ``verification.json``.

    ``source``: the original checkpoint, for a perplexity comparison. ``text``: a text file for
    perplexity (none: no perplexity). ``label``: what the progress line calls the folder (the
    converter names the target, not its temporary staging folder). Raises VerificationError
    listing every problem.

    The child runs in its own session (a terminal's Ctrl-C reaches only this process), dies with
    this process, and is killed and reaped when this process is interrupted (KeyboardInterrupt,
    SIGTERM turned into an exception) before the temporary folder is removed.
    """
    folder = Path(folder)
    request = {
        "folder": str(folder.resolve()),
        "source": str(Path(source).resolve()) if source else None,
        "text": str(Path(text).resolve()) if text else None,
        "lengths": [int(n) for n in lengths],
        "max_tokens_per_length": int(max_tokens_per_length or max(lengths)),
    }
    _remove_stale_temp_folders()
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-") as tmp:
        report_file = Path(tmp) / "report.json"
        request["report"] = str(report_file)
        env = {
            **os.environ,
            "HF_MODULES_CACHE": str(Path(tmp) / "modules"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_ROPEID_VERIFY_PARENT": str(os.getpid()),
        }
        print(
            f"[hf-ropeid] verifying {label or folder} in a fresh process without hf_ropeid ...",
            file=sys.stderr,
            flush=True,
        )
        returncode = _run_child(
            [sys.executable, "-c", _BOOTSTRAP, str(Path(__file__).resolve()), json.dumps(request)], env=env, cwd=tmp
        )
        if returncode != 0 or not report_file.is_file():
            raise VerificationError(f"The verification process failed (exit code {returncode}); its output is above.")
        report = json.loads(report_file.read_text())
    (folder / "verification.json").write_text(json.dumps(report, indent=2) + "\n")
    if report["problems"]:
        raise VerificationError(f"{folder} failed verification:\n- " + "\n- ".join(report["problems"]))
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What a verification found, in a few lines for the terminal (``hf-ropeid convert`` ends with them)."""
    lines = [f"verification: {'passed' if not report.get('problems') else 'FAILED'} "
             f"({report.get('tensors_checked', 0)} tensors checked, loaded without hf-ropeid)"]
    if "generation_max_logit_difference" in report:
        lines.append(
            "generation check: cached greedy decoding matches a full forward pass "
            f"(max logit difference {report['generation_max_logit_difference']:.2g})"
        )
    perplexity = report.get("perplexity") or {}
    converted, source = perplexity.get("converted") or {}, perplexity.get("source") or {}
    if converted:
        lines.append("perplexity    tokens  " + "  ".join(f"{int(n):>8}" for n in converted))
        for name, values in (("source", source), ("converted", converted)):
            if values:
                cells = [f"{v['perplexity']:>8.2f}" if v else f"{'-':>8}" for v in (values.get(k) for k in converted)]
                lines.append(f"  {name:<19}  " + "  ".join(cells))
        text = report.get("text") or {}
        lines.append(
            f"note: the verification text is short ({text.get('tokens_used', '?')} tokens of {text.get('file', '?')}), "
            "so these numbers differ from the benchmark tables (benchmarks/RESULTS.md), which use more text."
        )
        if (report.get("rope_parameters") or {}).get("rotary_window") is not None:
            lines.append(
                "note: a far-context conversion (window attention) is meant to be adapted before use: hf-ropeid "
                "finetune --seq-length L; untrained it costs perplexity inside L (--recipe portable costs less "
                "untrained and runs in vLLM / llama.cpp, but collapsed past L after LoRA)."
            )
    return lines


TEMP_PREFIX = "hf-ropeid-verify-"


def _run_child(command: list[str], **kwargs: Any) -> int:
    """Runs the verification child; on any exception here (Ctrl-C, SIGTERM) it is killed and reaped first."""
    child = subprocess.Popen(command, start_new_session=True, **kwargs)
    try:
        return child.wait()
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _remove_stale_temp_folders() -> None:
    """``hf-ropeid-verify-PID-*`` temp folders whose process is gone (left by SIGKILL) are removed."""
    for path in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        pid = path.name[len(TEMP_PREFIX) :].split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


# ----------------------------------------------------------------------------------------------
# What runs in the fresh process
# ----------------------------------------------------------------------------------------------


def _check_tensors(model: torch.nn.Module, folder: Path) -> tuple[list[str], int]:
    """Every file tensor matches the loaded model; every model tensor came from a file (or is tied to one)."""
    from safetensors import safe_open

    state = model.state_dict()
    problems, seen = [], set()
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                seen.add(name)
                if name not in state:
                    problems.append(f"{file.name}: tensor {name} is not used by the model")
                elif tensor.shape != state[name].shape or tensor.dtype != state[name].dtype:
                    problems.append(
                        f"{name}: file {tuple(tensor.shape)} {tensor.dtype}, model {tuple(state[name].shape)} {state[name].dtype}"
                    )
                elif tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    problems.append(f"{name}: contains NaN or infinite values (corrupted weights?)")
                elif not torch.equal(tensor, state[name].cpu()):
                    problems.append(f"{name}: loaded values differ from the file")
    stored = {state[n].data_ptr() for n in seen if n in state}
    for name in sorted(set(state) - seen):
        if state[name].data_ptr() not in stored:  # tied weights share storage with a stored tensor
            problems.append(f"{name}: in the model but in no safetensors file (it would be randomly initialised)")
    return problems, len(seen)


def _check_generation(model, prompt: torch.Tensor) -> tuple[float, list[str]]:
    """Greedy generation with a KV cache must give the logits of one full forward pass."""
    out = model.generate(
        prompt,
        max_new_tokens=8,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=model.config.pad_token_id if model.config.pad_token_id is not None else 0,
    )
    cached = torch.stack(out.logits, dim=1)[0].float()
    full = model(input_ids=out.sequences[:, :-1], use_cache=False).logits[0, prompt.shape[1] - 1 :].float()
    steps = min(len(cached), len(full))
    difference = (cached[:steps] - full[:steps]).abs().max().item()
    tolerance = (1e-3 if model.dtype == torch.float32 else 5e-2) * max(1.0, full.abs().max().item())
    problems = (
        [] if difference <= tolerance else [f"cached generation logits differ from a full forward by {difference:.3g}"]
    )
    return difference, problems


def _child_main(request: dict[str, Any]) -> None:
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    folder = Path(request["folder"])
    report: dict[str, Any] = {"problems": []}
    problems = report["problems"]
    try:
        import hf_ropeid  # noqa: F401

        problems.append("hf_ropeid was importable in the verification process; the check is not meaningful")
    except ModuleNotFoundError:
        pass
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, trust_remote_code=True, dtype="auto", output_loading_info=True
        )
    except Exception as error:  # any failure to load is the finding
        problems.append(f"loading with trust_remote_code failed: {type(error).__name__}: {error}")
        Path(request["report"]).write_text(json.dumps(report))
        return
    model.eval()
    report["model_class"] = f"{type(model).__module__}.{type(model).__name__}"
    report["rope_parameters"] = dict(config.rope_parameters)
    report["dtype"] = str(model.dtype).removeprefix("torch.")
    if not type(model).__module__.startswith("transformers_modules"):
        problems.append(f"the model class came from {type(model).__module__}, not from the checkpoint's remote code")
    if config.rope_parameters.get("rope_type") != "rope_id":
        problems.append(f"config rope_type is {config.rope_parameters.get('rope_type')!r}, not 'rope_id'")
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(key):
            problems.append(f"loading reported {key}: {sorted(map(str, info[key]))[:5]}")
    tensor_problems, report["tensors_checked"] = _check_tensors(model, folder)
    problems.extend(tensor_problems)

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    except Exception as error:
        problems.append(f"loading the tokenizer failed: {type(error).__name__}: {error}")
        tokenizer = None
    if tokenizer is not None and request["text"]:
        text = Path(request["text"]).read_text(encoding="utf-8", errors="replace")
        needed = max(request["lengths"] + [request["max_tokens_per_length"]])  # windows never exceed this
        ids = tokenizer(text[: needed * 16], add_special_tokens=False)["input_ids"][:needed]
        adds_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
        bos = tokenizer.bos_token_id if adds_bos else None
        report["text"] = {"file": Path(request["text"]).name, "tokens_used": len(ids), "bos_per_window": adds_bos}
        with torch.no_grad():
            report["generation_max_logit_difference"], gen_problems = _check_generation(model, torch.tensor([ids[:32]]))
            problems.extend(gen_problems)
            measure = dict(
                lengths=request["lengths"],
                max_tokens_per_length=request["max_tokens_per_length"],
                bos_token_id=bos,
                progress=True,
            )
            converted = perplexity_at_lengths(model, ids, **measure)
            report["perplexity"] = {"converted": {str(k): v for k, v in converted.items()}}
            bad = [n for n, r in converted.items() if r is not None and not math.isfinite(r["perplexity"])]
            if bad:
                problems.append(f"perplexity is not finite at lengths {bad}")
            if request["source"]:
                del model
                source_model = AutoModelForCausalLM.from_pretrained(request["source"], dtype="auto").eval()
                original = perplexity_at_lengths(source_model, ids, **measure)
                report["perplexity"]["source"] = {str(k): v for k, v in original.items()}
    Path(request["report"]).write_text(json.dumps(report))


if __name__ == "__main__":
    _child_main(json.loads(sys.argv[1]))
