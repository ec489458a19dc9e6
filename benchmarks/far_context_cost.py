"""What does far-context attention cost next to stock Llama? Measured side by side, one fresh process per run.

Arms (same geometry, same random weights, fp32 on CPU / bf16 on CUDA):
- ``stock``: ``LlamaForCausalLM``, sdpa;
- ``far-context``: the converter's default recipe (p-RoPE half, ``rotary_window`` L/2, layer 0 local,
  length-log temperature), sdpa = RoPE-ID's two-pass kernel (``hf_ropeid/rotary_window.py``);
- ``portable``: the portable recipe (no window), sdpa = transformers' own kernel.

Geometry: SmolLM2-135M's attention and MLP (hidden 576, 9 query / 3 key-value heads, head_dim 64,
intermediate 1536), 2 layers, vocabulary 2048 (so that the logits do not swamp the layers being compared),
L = 8192 unless ``--training-length``. Workloads: a training step (forward + backward, batch 1: wall time of
the second step and the process's peak RSS with glibc's mmap threshold at 64 KiB, or CUDA peak allocated), a no-grad prefill (wall time), and
decoding (ms per token after a prefill of ``--decode-context`` tokens, DynamicCache). Prints ratios to stock,
writes JSON, a markdown table and a PNG of ratio vs length.

    python benchmarks/far_context_cost.py                                # CPU: 2k-16k, prefill to 32k
    python benchmarks/far_context_cost.py --device cuda --lengths 8192,16384,32768,65536,131072
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ARMS = ("stock", "far-context", "portable")
GEOMETRY = dict(vocab_size=2048, hidden_size=576, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=9,
                num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, tie_word_embeddings=True)


def build(arm: str, training_length: int, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ropeid import LlamaRopeIDForCausalLM, RopeIDConfig
    from hf_ropeid.parameters import apply_recipe

    torch.manual_seed(0)
    llama = LlamaConfig(**GEOMETRY, max_position_embeddings=training_length,
                        rope_parameters={"rope_type": "default", "rope_theta": 100_000.0})
    model = LlamaForCausalLM(llama)
    if arm != "stock":  # the stock model's weights (RoPE-ID's classes draw their random init in another order)
        params = apply_recipe({"training_length": training_length}, arm)
        config = RopeIDConfig.from_llama_config(llama, **{k: v for k, v in params.items() if v is not None})
        stock, model = model, LlamaRopeIDForCausalLM(config)
        model.load_state_dict(stock.state_dict())
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = model.to(device=device, dtype=dtype)
    model.set_attn_implementation("sdpa")
    return model


def child(arm: str, workload: str, length: int, training_length: int, device: str, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    model = build(arm, training_length, device)
    ids = torch.randint(0, GEOMETRY["vocab_size"], (1, length), generator=torch.Generator().manual_seed(0)).to(device)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if workload == "train":
        model.train()

        def step():
            model(input_ids=ids, labels=ids).loss.backward()
            model.zero_grad(set_to_none=True)

        step()  # warm-up
        seconds = timed(step)
    elif workload == "prefill":
        model.eval()
        with torch.no_grad():
            model(input_ids=ids[:, : min(length, 1024)], use_cache=False, logits_to_keep=1)  # warm-up
            seconds = timed(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1))
    elif workload == "decode":
        model.eval()
        tokens = 16
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)

            def decode():
                nonlocal cache, nxt
                for t in range(tokens):
                    out = model(input_ids=nxt, past_key_values=cache, use_cache=True,
                                position_ids=torch.tensor([[length + t]], device=device))
                    cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)

            seconds = timed(decode) / tokens
    else:
        raise ValueError(workload)
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"arm": arm, "workload": workload, "length": length, "seconds": seconds, "peak_bytes": peak}


def run_child(arm, workload, length, args) -> dict:
    command = [sys.executable, __file__, "--child", arm, workload, str(length), "--training-length",
               str(args.training_length), "--device", args.device, "--threads", str(args.threads)]
    # Large buffers through mmap, so that a freed one goes back to the OS: the peak RSS then measures the tensors
    # alive at the peak, not what glibc kept of earlier ones (without it, reruns of one cell differed by ~8%).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
    if done.returncode != 0:
        return {"arm": arm, "workload": workload, "length": length, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratios(records: list[dict]) -> dict:
    """{workload: {length: {arm: {"time": ratio, "memory": ratio}}}} against stock of the same length."""
    table: dict = {}
    by_key = {(r["workload"], r["length"], r["arm"]): r for r in records if "seconds" in r}
    for (workload, length, arm), r in sorted(by_key.items()):
        base = by_key.get((workload, length, "stock"))
        if base is None:
            continue
        table.setdefault(workload, {}).setdefault(str(length), {})[arm] = {
            "time": r["seconds"] / base["seconds"], "memory": r["peak_bytes"] / base["peak_bytes"]}
    return table


def markdown(record: dict) -> str:
    lines = [f"Machine: {record['machine']}; torch {record['torch']}; L = {record['training_length']} "
             f"(window {record['training_length'] // 2}); one fresh process per cell; ratios to stock Llama (sdpa).", ""]
    names = {"train": "training step", "prefill": "no-grad prefill", "decode": "decode ms/token"}
    for workload, rows in record["ratios"].items():
        lines += [f"**{names[workload]}**", "", "| tokens | stock s | far-context time | far-context peak memory | "
                  "portable time | portable peak memory |", "|---|---|---|---|---|---|"]
        for length, arms in rows.items():
            base = next(r for r in record["records"] if r["workload"] == workload and r["length"] == int(length)
                        and r["arm"] == "stock")
            cells = [f"{arms[a]['time']:.2f}x | {arms[a]['memory']:.2f}x" if a in arms else "- | -"
                     for a in ("far-context", "portable")]
            lines.append(f"| {length} | {base['seconds']:.3f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(record["ratios"])
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.5 * len(workloads), 3.6), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        rows = record["ratios"][workload]
        lengths = [int(n) for n in rows]
        for arm, style in (("far-context", "o-"), ("portable", "s--")):
            ax.plot(lengths, [rows[str(n)].get(arm, {}).get("time", float("nan")) for n in lengths], style,
                    label=f"{arm} time")
            if workload == "train":
                ax.plot(lengths, [rows[str(n)].get(arm, {}).get("memory", float("nan")) for n in lengths], style,
                        alpha=0.5, label=f"{arm} peak memory")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens")
        ax.set_ylabel("ratio to stock Llama")
        ax.set_title(workload)
        ax.legend(fontsize=7)
    fig.suptitle(f"far-context cost, {record['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("ARM", "WORKLOAD", "LENGTH"), help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU (0: torch's default)")
    parser.add_argument("--training-length", type=int, default=8192)
    parser.add_argument("--lengths", default="2048,4096,8192,16384", help="training step lengths")
    parser.add_argument("--prefill-lengths", default="2048,4096,8192,16384,32768")
    parser.add_argument("--decode-context", type=int, default=16384)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/far_context_cost"))
    args = parser.parse_args(argv)
    if args.child:
        arm, workload, length = args.child
        print(json.dumps(child(arm, workload, int(length), args.training_length, args.device, args.threads)))
        return
    import torch

    jobs = [("train", int(n)) for n in args.lengths.split(",") if n]
    jobs += [("prefill", int(n)) for n in args.prefill_lengths.split(",") if n]
    jobs += [("decode", args.decode_context)] if args.decode_context else []
    records = []
    for workload, length in jobs:
        for arm in ARMS:  # the arms of one cell one after another, so drift in the machine's load hits all alike
            record = run_child(arm, workload, length, args)
            records.append(record)
            shown = (f"{record['seconds']:.3f} s, peak {record['peak_bytes'] / 2**30:.2f} GiB" if "seconds" in record
                     else f"failed: {record['error']}")
            print(f"{workload:8s} {length:6d} {arm:12s} {shown}", flush=True)
    machine = (f"{torch.cuda.get_device_name()}" if args.device.startswith("cuda")
               else f"CPU {platform.machine()}, {args.threads} threads")
    record = {"machine": machine, "torch": torch.__version__, "training_length": args.training_length,
              "geometry": GEOMETRY, "records": records, "ratios": ratios(records)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(record, indent=1))
    (args.out / "summary.md").write_text(markdown(record))
    plot(record, args.out / "ratios.png")
    print(markdown(record))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
