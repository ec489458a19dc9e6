"""Recall-window probe: does text with planted key-value facts (MQAR-style) make the toy retrieve inside L?

Env: STAGE1 (steps of 32-byte copy windows first, 0 = none), STAGE64 (then steps of 64-byte random-string copy
windows with a quarter of recall windows, 0 = none), STEPS (steps at L), L, BATCH, LR, WIDTH, LAYERS, HEAD_DIM,
TEXT, RECALL (window fractions at L), STRINGS (random-string share of the copy windows at L), FACTS (max facts
per recall window), NAME.
Prints the evaluation suite's compact passkey / multikey accuracy and Hamlet loss at L every 250 steps.
"""
import os
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
L, steps, stage1 = int(e("L", "128")), int(e("STEPS", "2000")), int(e("STAGE1", "0"))
width, layers, head_dim = int(e("WIDTH", "64")), int(e("LAYERS", "2")), int(e("HEAD_DIM", "32"))
stage64 = int(e("STAGE64", "0"))
mixture = P.CopyMixture(text_fraction=float(e("TEXT", "0.25")), recall_fraction=float(e("RECALL", "0.5")),
                        string_probability=float(e("STRINGS", "0.5")), segment_length=(4, 24), gap_length=(0, L - 32),
                        recall_facts=(1, int(e("FACTS", "4"))))
stages = ((P.Stage(32, stage1, 64, P.CopyMixture()),) if stage1 else ()) + ((P.Stage(64, stage64, 32, P.CopyMixture(
    recall_fraction=0.25, segment_length=(3, 12), gap_length=(0, 40), recall_facts=(1, 2))),) if stage64 else ()) + (
    P.Stage(L, steps, int(e("BATCH", "32")), mixture),)
setup = P.PretrainSetup(layers=layers, width=width, head_dim=head_dim, training_length=L, lr=float(e("LR", "3e-3")), stages=stages)
train, held = P.shakespeare_split()
tok = P.byte_tokenizer()
stream = torch.tensor(list(held), dtype=torch.long)
depths = (0.0, 0.25, 0.5, 0.75)
tasks = {n: prepare_tasks(tok, stream, ("passkey", "multikey"), [n], depths, samples=8, needles=4, template="compact")
         for n in (L, 2 * L)}
windows = make_windows(stream, L, 32, P.BOS_ID)


def probe(step, model):
    out = {"loss": round(perplexity_at_length(model, windows, batch_size=32)["loss"], 3)}
    for n in (L, 2 * L):
        out[f"key{n}"] = score_task(model, tasks[n]["passkey"][n], depths, batch_size=32)["accuracy"]
        out[f"multi{n}"] = score_task(model, tasks[n]["multikey"][n], depths, batch_size=32)["accuracy"]
    return out


torch.manual_seed(0)
cfg = LlamaConfig(**P.model_config_kwargs(setup), rope_parameters={"rope_type": "default", "rope_theta": 1e4})
cfg._attn_implementation = "sdpa"
model = LlamaForCausalLM(cfg)
result = P.pretrain(model, setup, 0, train, progress=e("NAME", "recall"), probe=probe)
torch.save(model.state_dict(), f"/tmp/probe/{e('NAME', 'recall')}.pt")
print("final", result["probes"][-1], "s/step", round(result["seconds_per_step"], 3), flush=True)
