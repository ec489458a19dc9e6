"""Training probe (RESULTS §6, round 3): a window toy trained with SWAN-style local layers.

The listed layers see only keys less than W = 64 back (plus the BOS sink, key 0): a sliding-window attention, so
their outputs do not depend on how long the input is. The other layers are the window model's (near keys on every
channel, far keys on the unrotated half). Evaluated without a temperature, with the length-log temperature on the
global layers only (the local ones see no far field to sharpen against), and on every layer.

Usage: python benchmarks/toy_copy_probes/local_layers_trained.py SEED LAYERS [OUT]
(e.g. 1 0,1: layers 0 and 1 local). Same data, curriculum, initial weights and evaluation as the toy study's
``p_rope_win64`` of that seed; prints one line per configuration and writes OUT (JSON) if given.
"""
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
import toy_retrieval as T  # noqa: E402

from hf_ropeid import pretraining as P  # noqa: E402
from hf_ropeid import rotary_window as RW  # noqa: E402


def sliding_window_mask(query_positions, key_positions, training_length, rotary_window):
    """Stands in for far_field_bias on the local layers: every key W or more back but the first is masked."""
    far = (query_positions[:, None] - key_positions[None, :] >= rotary_window) & (key_positions[None, :] > 0)
    return (far * -1e4).to(torch.float32)


RW.far_field_bias = sliding_window_mask  # only layers whose far_field is "log_count" call it: the local ones


def set_layers(model, local, temperature_on):
    for i, layer in enumerate(model.model.layers):
        attention = layer.self_attn
        attention.rope_id = dataclasses.replace(
            attention.rope_id, far_field="log_count" if i in local else "none",
            temperature="length_log" if i in temperature_on else "none")


if __name__ == "__main__":
    torch.set_num_threads(1)
    seed, local = int(sys.argv[1]), [int(x) for x in sys.argv[2].split(",")]
    setup = P.PretrainSetup()
    train_text, held_out = P.shakespeare_split()
    torch.manual_seed(seed)
    model = T.build_model(T.rope_id(spectrum="original", rotary_window=64), setup)
    set_layers(model, local, [])
    trained = P.pretrain(model, setup, seed, train_text, progress=f"local {sys.argv[2]} seed {seed}")
    lengths = [m * setup.training_length for m in T.MULTIPLES]
    data = T.eval_data(lengths, held_out)
    everything = range(setup.layers)
    results = {}
    for name, temperature_on in (("none", []), ("lenlog_global", [i for i in everything if i not in local]),
                                 ("lenlog_all", list(everything))):
        set_layers(model, local, temperature_on)
        model.eval()
        results[name] = {str(m): T.evaluate(model, n, data) for m, n in zip(T.MULTIPLES, lengths)}
        print(f"[local {sys.argv[2]} seed {seed} {name}] " + "  ".join(
            f"{m}x: loss {r['tail_loss']:.3f} key {r['retrieval']:.2f} multi {r['multikey']:.2f}"
            for m, r in results[name].items()), flush=True)
    if len(sys.argv) > 3:
        Path(sys.argv[3]).parent.mkdir(parents=True, exist_ok=True)
        Path(sys.argv[3]).write_text(json.dumps({"seed": seed, "local_layers": local, "training": trained,
                                                 "results": results}, indent=1))
