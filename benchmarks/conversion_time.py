"""Wall time of converting SmolLM2-135M-Instruct vs a plain copy of its files, side by side.

Each repeat runs both, alternating which goes first: the baseline is ``shutil.copy`` of the
safetensors, config and tokenizer files; the conversion is ``convert_checkpoint(..., verify=False)``
with the weights-untouched default ("frequency"). Between runs the output is deleted and
``os.sync()`` flushes dirty pages, outside the timed region. A warm-up pair is not counted.
Calibrated conversion (rewrites the weights, runs the model on 2048 tokens) and the fresh-process
verification are timed separately.

    .venv/bin/python benchmarks/conversion_time.py --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def plain_copy(source: Path, target: Path) -> None:
    target.mkdir()
    for path in source.iterdir():
        if path.is_file():
            shutil.copy(path, target / path.name)


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # progress messages would be timed too
        fn(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="where outputs are written (default: a temp dir)")
    parser.add_argument("--skip-verification", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/conversion"))
    args = parser.parse_args()

    from hf_ropeid.assets import shakespeare_texts, smollm2_checkpoint
    from hf_ropeid.conversion import convert_checkpoint
    from hf_ropeid.verification import verify_checkpoint

    source = smollm2_checkpoint("float32")
    size_mb = sum(p.stat().st_size for p in source.iterdir() if p.is_file()) / 2**20
    workdir = Path(tempfile.mkdtemp(prefix="conversion-time-", dir=args.workdir))
    runs = {"copy": [], "convert": []}
    methods = {
        "copy": lambda target: plain_copy(source, target),
        "convert": lambda target: convert_checkpoint(source, target, verify=False),
    }
    try:
        for repeat in range(args.repeats + 1):  # repeat 0 is the warm-up
            order = ["copy", "convert"] if repeat % 2 == 0 else ["convert", "copy"]
            for name in order:
                target = workdir / name
                seconds = timed(methods[name], target)
                shutil.rmtree(target)
                os.sync()
                if repeat > 0:
                    runs[name].append(seconds)
            if repeat > 0:
                print(f"repeat {repeat}: copy {runs['copy'][-1]:.2f} s, convert {runs['convert'][-1]:.2f} s", flush=True)
        target = workdir / "calibrated"
        calibrated = timed(convert_checkpoint, source, target, verify=False, channel_selection="calibrated")
        shutil.rmtree(target)
        verification = None
        if not args.skip_verification:
            target = workdir / "verified"
            with contextlib.redirect_stderr(io.StringIO()):
                convert_checkpoint(source, target, verify=False)
            start = time.perf_counter()
            verify_checkpoint(target, source=source, text=shakespeare_texts()["hamlet"])
            verification = time.perf_counter() - start
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    copy, convert = statistics.median(runs["copy"]), statistics.median(runs["convert"])
    record = {
        "command": f"benchmarks/conversion_time.py --repeats {args.repeats}",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "source": f"{source.name} ({size_mb:.0f} MiB)",
        "runs_s": {k: [round(v, 3) for v in vs] for k, vs in runs.items()},
        "median_copy_s": round(copy, 3),
        "median_convert_s": round(convert, 3),
        "ratio_of_medians": round(convert / copy, 3),
        "ratio_per_repeat": [round(b / a, 3) for a, b in zip(runs["copy"], runs["convert"])],
        "calibrated_convert_s": round(calibrated, 2),
        "verification_s": round(verification, 1) if verification is not None else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "time.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
