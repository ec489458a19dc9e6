import os
import random
import sys

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from dataclasses import replace

from transformers import LlamaConfig, LlamaForCausalLM

from hf_ropeid import pretraining as P

train, held = P.shakespeare_split()
e = lambda k, d: os.environ.get(k, d)
s1 = P.Stage(32, int(e("S1", "2500")), 64, P.CopyMixture())
s2 = P.Stage(
    128,
    int(e("S2", "800")),
    32,
    P.CopyMixture(
        text_fraction=float(e("TF", "0.25")),
        string_probability=float(e("SP", "0.75")),
        segment_length=(4, int(e("SEGMAX", "16"))),
        gap_length=(0, int(e("GAPMAX", "96"))),
    ),
)
setup = P.PretrainSetup(stages=(s1, s2), lr=float(e("LR", "3e-3")))
torch.manual_seed(0)
cfg = LlamaConfig(**P.model_config_kwargs(setup), rope_parameters={"rope_type": "default", "rope_theta": 1e4})
cfg._attn_implementation = "sdpa"
model = LlamaForCausalLM(cfg)


def copy_eval(n, reps=32):
    rng = random.Random(1)
    full = 0
    per = 0
    tot = 0
    with torch.no_grad():
        for i in range(reps):
            s = rng.randrange(len(held) - n)
            x = list(held[s : s + n])
            key = list(b" pass key: ") + [rng.choice(b"0123456789") for _ in range(5)]
            q = n - len(key) - 2
            d = rng.randrange(1, q - len(key) - 1)
            x[d : d + len(key)] = key
            x[q : q + len(key)] = key
            inp = torch.tensor([[P.BOS_ID] + x[:-1]])
            pred = model(input_ids=inp).logits[0].argmax(-1)
            ok = pred[q + len(key) - 5 : q + len(key)] == torch.tensor(x[q + len(key) - 5 : q + len(key)])
            per += ok.sum().item()
            tot += ok.numel()
            full += int(ok.all())
    return round(per / tot, 3), full / reps


st1 = replace(setup, stages=(s1,))
import os.path

if os.path.exists("/tmp/probe/s1.pt"):
    model.load_state_dict(torch.load("/tmp/probe/s1.pt"))
else:
    P.pretrain(model, st1, 0, train, progress=e("NAME", "p13") + "-s1")
    torch.save(model.state_dict(), "/tmp/probe/s1.tmp")
    os.replace("/tmp/probe/s1.tmp", "/tmp/probe/s1.pt")
print("after stage 1", copy_eval(32 * 2), flush=True)
model.train()
out = P.pretrain(
    model,
    replace(setup, stages=(s2,), warmup=0, lr=float(e("LR2", "1e-3"))),
    1,
    train,
    progress=e("NAME", "p13") + "-s2",
)
torch.save(model.state_dict(), f"/tmp/probe/{e('NAME', 'p13')}.pt")
for n in [128, 256]:
    print(n, copy_eval(n), flush=True)
