"""Inference-time probe (RESULTS §6, round 3): some layers of a trained window model see only the near keys
(SWAN-style local layers), by turning their far keys' bias into a mask.

Usage: python benchmarks/toy_copy_probes/local_layer_probe.py FOLDER "TEMPERATURE:LAYERS;..."
(e.g. "length_log:;length_log:0;none:0,1": the length-log temperature with no local layer, with layer 0 local, ...).
"""
import dataclasses
import sys

import torch
from safetensors.torch import load_file

sys.path[:0] = [str(__import__("pathlib").Path(__file__).resolve().parents[1])]
import toy_retrieval as T

from hf_ropeid import pretraining as P
from hf_ropeid import rotary_window as RW

torch.set_num_threads(1)
setup = P.PretrainSetup()
folder = sys.argv[1]
state = load_file(folder + "/model.safetensors")
def masked(qp, kp, L, W):
    far = (qp[:, None] - kp[None, :] >= W) & (kp[None, :] > 0)
    return (far * -1e4).to(torch.float32)
RW.far_field_bias = masked
mult = (1, 2, 4, 8, 16)
data = T.eval_data([m * 128 for m in mult], P.shakespeare_split()[1])
for spec in sys.argv[2].split(";"):
    temp, layers = spec.split(":")
    model = T.build_model(T.rope_id(spectrum="original", rotary_window=64, temperature=temp), setup)
    model.load_state_dict(state)
    model.eval()
    for i in [int(x) for x in layers.split(",") if x]:
        a = model.model.layers[i].self_attn
        a.rope_id = dataclasses.replace(a.rope_id, far_field="log_count")
    row = {m: T.evaluate(model, m * 128, data) for m in mult}
    print(spec, {m: (round(r["tail_loss"], 3), round(r["retrieval"], 2), round(r["multikey"], 2)) for m, r in row.items()}, flush=True)
