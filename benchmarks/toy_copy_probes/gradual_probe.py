"""Gradual length curriculum probe: does copying learnt at 32 bytes survive 64 and 128 bytes?

Env: INIT (a state dict to start from), WARMUP, ALPHABET, STAGES, a list of "length:steps:batch:recall:text:gap:segmax" (recall/text window fractions; the rest are
random-string segment-gap-segment copy windows), LR, SCHEDULE, TIE, NAME. Prints, every 250 steps, copy
accuracy on held-out copy windows at the current stage's length and at 128, and the evaluation suite's compact
passkey / multikey accuracy and Hamlet loss at 128.
"""
import os
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from hf_ropeid import pretraining as P  # noqa: E402
from hf_ropeid.evaluation.passes import perplexity_at_length  # noqa: E402
from hf_ropeid.evaluation.retrieval import prepare_tasks, score_task  # noqa: E402
from hf_ropeid.evaluation.text import make_windows  # noqa: E402

torch.set_num_threads(1)
e = os.environ.get
stages = []
for spec in e("STAGES", "32:1500:64:0:0:8:8,64:600:32:0:0:40:12,128:600:16:0:0:96:16").split(","):
    n, steps, batch, recall, text, gap, segmax = spec.split(":")
    stages.append(P.Stage(int(n), int(steps), int(batch), P.CopyMixture(
        text_fraction=float(text), recall_fraction=float(recall), segment_length=(3, int(segmax)),
        gap_length=(0, int(gap)), alphabet=e("ALPHABET", "abcdefghijklmnopqrstuvwxyz012345").encode())))
setup = P.PretrainSetup(lr=float(e("LR", "3e-3")), warmup=int(e("WARMUP", "100")), schedule=e("SCHEDULE", "constant"), tie_embeddings=bool(int(e("TIE", "0"))),
                        stages=tuple(stages))
train, held = P.shakespeare_split()
tok = P.byte_tokenizer()
stream = torch.tensor(list(held), dtype=torch.long)
depths = (0.0, 0.25, 0.5, 0.75)
tasks = prepare_tasks(tok, stream, ("passkey", "multikey"), [128], depths, samples=8, needles=4, template="compact")
windows = make_windows(stream, 128, 32, P.BOS_ID)
held_copy = {}
for n, st in {s.length: s for s in stages}.items():
    held_copy[n] = P.training_batch(random.Random(99), train, n, 64, P.CopyMixture(
        segment_length=st.mixture.segment_length, gap_length=st.mixture.gap_length, alphabet=st.mixture.alphabet))
ends = [sum(s.steps for s in stages[:i + 1]) for i in range(len(stages))]


def probe(step, model):
    stage = next(s for s, end in zip(stages, ends) if step <= end)
    out = {"loss128": round(perplexity_at_length(model, windows, batch_size=32)["loss"], 3)}
    for n in sorted({stage.length, 128}):
        x, y, m = held_copy[n]
        pred = model(input_ids=x).logits.argmax(-1)
        out[f"copy{n}"] = round(float((pred == y)[m].float().mean()), 3)
    out["key128"] = score_task(model, tasks["passkey"][128], depths, batch_size=32)["accuracy"]
    out["multi128"] = score_task(model, tasks["multikey"][128], depths, batch_size=32)["accuracy"]
    return out


torch.manual_seed(0)
cfg = LlamaConfig(**P.model_config_kwargs(setup), rope_parameters={"rope_type": "default", "rope_theta": 1e4})
cfg._attn_implementation = "sdpa"
model = LlamaForCausalLM(cfg)
if e("INIT"):
    model.load_state_dict(torch.load(e("INIT")))
result = P.pretrain(model, setup, 0, train, progress=e("NAME", "gradual"), probe=probe)
torch.save(model.state_dict(), f"/tmp/probe/{e('NAME', 'gradual')}.pt")
print("final", result["probes"][-1], "s/step", round(result["seconds_per_step"], 3), flush=True)
