import os
import random
import sys
import time

import torch

torch.set_num_threads(1)
from transformers import LlamaConfig, LlamaForCausalLM

L = int(sys.argv[1])
steps = int(sys.argv[2])
layers = int(sys.argv[3])
batch = int(sys.argv[4])
lr = float(sys.argv[5])
width = int(sys.argv[6])
heads = width // 32
BOS = 256
V = 257
ALPH = list(os.environ["ALPHA"].encode()) if "ALPHA" in os.environ else list(range(256))
A = len(ALPH) if "ALPHA" in os.environ else int(os.environ.get("A", "256"))
G = int(os.environ.get("G", "48"))
SMIN = int(os.environ.get("SMIN", "8"))
SMAX = int(os.environ.get("SMAX", "32"))
cfg = LlamaConfig(
    vocab_size=V,
    hidden_size=width,
    intermediate_size=3 * width,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    num_key_value_heads=heads,
    max_position_embeddings=L,
    bos_token_id=BOS,
    eos_token_id=None,
    pad_token_id=None,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)
cfg._attn_implementation = "sdpa"
torch.manual_seed(0)
model = LlamaForCausalLM(cfg)


def window(rng):
    out, mask = [], []
    while len(out) < L:
        n = rng.randint(SMIN, SMAX)
        s = [ALPH[rng.randrange(A)] for _ in range(n)]
        g = [ALPH[rng.randrange(A)] for _ in range(rng.randint(0, G))]
        out += s + g + s
        mask += [0] * (n + len(g)) + [0] + [1] * (n - 1)
    return out[:L], mask[:L]


def batch_of(rng):
    xs, ms = zip(*[window(rng) for _ in range(batch)])
    return torch.tensor(xs), torch.tensor(ms)


rng = random.Random(0)
ev = random.Random(1)
X, M = batch_of(ev)
opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
t0 = time.time()
for step in range(steps):
    x, m = batch_of(rng)
    inp = torch.cat([torch.full((batch, 1), BOS), x[:, :-1]], 1)
    lr_now = lr * min(1, (step + 1) / 100)
    for g in opt.param_groups:
        g["lr"] = lr_now
    logits = model(input_ids=inp).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), x.reshape(-1))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 50 == 0 or step == steps - 1:
        with torch.no_grad():
            model.eval()
            p = model(input_ids=torch.cat([torch.full((batch, 1), BOS), X[:, :-1]], 1)).logits.argmax(-1)
            model.train()
        acc = ((p == X).float() * M).sum() / M.sum()
        print(
            f"step {step} loss {loss.item():.3f} copyacc {acc.item():.3f} {(time.time() - t0) / (step + 1):.3f}s/step",
            flush=True,
        )
