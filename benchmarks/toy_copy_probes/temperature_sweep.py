"""Inference-time temperatures on a trained toy window model (RESULTS §6): passkey and tail loss at 1x-16x.

Usage: python benchmarks/toy_copy_probes/temperature_sweep.py SEED  (needs benchmarks/results/toy_retrieval/models/
p_rope_win64-seedSEED, saved by benchmarks/toy_retrieval.py), or ... temperature_sweep.py FOLDER (a saved window model
of the default shape) [CONFIG,CONFIG...].
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import toy_retrieval as T  # noqa: E402

from hf_ropeid import pretraining as P  # noqa: E402

CONFIGS = {
    "lenlog": dict(temperature="length_log"),
    "lenlog+farnorm": dict(temperature="length_log", far_field="log_count"),
    "qlog0.05": dict(temperature="query_log", temperature_coefficient=0.05),
    "qlog0.075": dict(temperature="query_log", temperature_coefficient=0.075),
    "qlog0.1": dict(temperature="query_log", temperature_coefficient=0.1),
    "qlog0.2": dict(temperature="query_log", temperature_coefficient=0.2),
    "qlog0.3": dict(temperature="query_log", temperature_coefficient=0.3),
    "qlog0.2+farnorm": dict(temperature="query_log", temperature_coefficient=0.2, far_field="log_count"),
    "floor0.3": dict(temperature="floor_log", temperature_coefficient=0.3),
    "qlog0.15": dict(temperature="query_log", temperature_coefficient=0.15),
}

if __name__ == "__main__":
    torch.set_num_threads(1)
    which = sys.argv[1] if len(sys.argv) > 1 else "0"
    setup = P.PretrainSetup()
    folder = (ROOT / f"benchmarks/results/toy_retrieval/models/p_rope_win64-seed{which}") if which.isdigit() else Path(
        which)
    if len(sys.argv) > 2:
        CONFIGS = {name: CONFIGS[name] for name in sys.argv[2].split(",")}
    state = load_file(folder / "model.safetensors")
    multiples = (1, 2, 4, 8, 16)
    data = T.eval_data([m * setup.training_length for m in multiples], P.shakespeare_split()[1])
    for name, extra in CONFIGS.items():
        model = T.build_model(T.rope_id(spectrum="original", rotary_window=64, **extra), setup)
        model.load_state_dict(state, strict=True)
        model.eval()
        row = {m: T.evaluate(model, m * setup.training_length, data) for m in multiples}
        print(name, {m: (round(r["tail_loss"], 3), r["retrieval"]) for m, r in row.items()}, flush=True)
