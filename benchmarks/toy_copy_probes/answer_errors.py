"""What a window model answers at 16x L (RESULTS §6, round 3): teacher-forced passkey answers of one saved toy.

Usage: python benchmarks/toy_copy_probes/answer_errors.py FOLDER TEMPERATURE
(e.g. benchmarks/results/toy_retrieval/models/p_rope_win64-seed2 length_log). Prints truth, greedy bytes and depth
for the 32 samples of the toy study's 16x passkey cell, then how many were right / wrong digits / other bytes.
"""
import sys
from collections import Counter

import torch
from safetensors.torch import load_file

sys.path[:0] = [str(__import__("pathlib").Path(__file__).resolve().parents[1])]
import toy_retrieval as T

from hf_ropeid import pretraining as P

torch.set_num_threads(1)
setup = P.PretrainSetup()
folder, temp = sys.argv[1], sys.argv[2]
state = load_file(folder + "/model.safetensors")
model = T.build_model(T.rope_id(spectrum="original", rotary_window=64, temperature=temp), setup)
model.load_state_dict(state)
model.eval()
data = T.eval_data([2048], P.shakespeare_split()[1])
samples = data.retrieval["passkey"][2048]
kinds = Counter()
for s in samples[:32]:
    ids = torch.tensor([s.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    n = s.answer_length
    pred = logits[-n - 1:-1].argmax(-1).tolist()
    truth = list(s.input_ids[-n:])
    ptxt, ttxt = bytes(b for b in pred if b < 256).decode(errors="replace"), bytes(truth).decode()
    kinds["right" if pred == truth else ("digits" if ptxt.strip().isdigit() else "other")] += 1
    print(repr(ttxt), repr(ptxt), s.depth)
print(kinds)
