import math
import random
import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)
from toy_length_generalization import split_text

train_bytes, held = split_text()
from transformers import LlamaConfig, LlamaForCausalLM

L = int(sys.argv[1]) if len(sys.argv) > 1 else 256
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 600
layers = int(sys.argv[3]) if len(sys.argv) > 3 else 4
width = int(sys.argv[6]) if len(sys.argv) > 6 else 128
heads = width // 32
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 32
lr = float(sys.argv[5]) if len(sys.argv) > 5 else 1e-3
BOS = 256
V = 257
import os

TEXT_FRACTION = float(os.environ.get("TEXT_FRACTION", "0.5"))
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
ALNUM = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def sample(rng, text, L):
    # returns (bytes list of length L, mask of copy positions)
    out, mask, chunks = [], [], []
    while len(out) < L:
        r = rng.random()
        if chunks and r < 0.45:
            c = rng.choice(chunks)
            out += c
            mask += [0] + [1] * (len(c) - 1)
        elif r < 0.7:
            n = rng.randint(4, 12)
            c = [rng.choice(ALNUM) for _ in range(n)]
            c = list(b" ") + c + list(b" ")
            chunks.append(c)
            out += c
            mask += [0] * len(c)
        else:
            n = rng.randint(16, 64)
            s = rng.randrange(len(text) - n)
            c = list(text[s : s + n])
            chunks.append(c)
            out += c
            mask += [0] * len(c)
    return out[:L], mask[:L]


def batch_of(rng, text, L, B):
    xs, ms = [], []
    for _ in range(B):
        if rng.random() < TEXT_FRACTION:
            s = rng.randrange(len(text) - L)
            x = list(text[s : s + L])
            m = [0] * L
        else:
            x, m = sample(rng, text, L)
        xs.append(x)
        ms.append(m)
    return torch.tensor(xs), torch.tensor(ms)


def copy_eval(model, n, rng, reps=16):
    # held-out text of n bytes, a random key of 10 alnum planted at random depth, repeated near the end
    correct = 0
    total = 0
    full = 0
    with torch.no_grad():
        for i in range(reps):
            s = rng.randrange(len(held) - n)
            x = list(held[s : s + n])
            key = list(b" ") + [rng.choice(ALNUM) for _ in range(10)] + list(b" ")
            q = n - 20
            d = rng.randrange(1, q - len(key) - 1)
            x[d : d + len(key)] = key
            x[q : q + len(key)] = key
            x = x[:n]
            inp = torch.tensor([[BOS] + x[:-1]])
            pred = model(input_ids=inp).logits[0].argmax(-1)
            ok = pred[q + 2 : q + len(key)] == torch.tensor(x[q + 2 : q + len(key)])
            correct += ok.sum().item()
            total += ok.numel()
            full += int(ok.all())
    return correct / total, full / reps


rng = random.Random(0)
opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
t0 = time.time()
for step in range(steps):
    x, m = batch_of(rng, train_bytes, L, batch)
    inp = torch.cat([torch.full((batch, 1), BOS), x[:, :-1]], 1)
    lr_now = lr * min(1, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
    for g in opt.param_groups:
        g["lr"] = lr_now
    logits = model(input_ids=inp).logits
    lossv = torch.nn.functional.cross_entropy(logits.reshape(-1, V), x.reshape(-1), reduction="none").view(batch, L)
    loss = lossv.mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 100 == 0 or step == steps - 1:
        cl = (lossv * m).sum() / m.sum().clamp(min=1)
        model.eval()
        acc = copy_eval(model, L, random.Random(1))
        model.train()
        print(
            f"step {step} loss {loss.item():.3f} copyloss {cl.item():.3f} acc {acc} {(time.time() - t0) / (step + 1):.3f}s/step",
            flush=True,
        )
model.eval()
for n in [L, 2 * L, 4 * L]:
    print(n, copy_eval(model, n, random.Random(2)))
