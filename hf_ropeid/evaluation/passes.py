"""Model passes shared by every measurement: next-token losses without full logits, batching, buckets.

``token_losses`` is the package's one perplexity pass (training's held-out evaluation uses it too).
``hf_ropeid/verification.py`` keeps its own small copy only because it runs in a fresh process in
which hf_ropeid cannot be imported.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def batch_size_for(length: int, batch_size: int, token_budget: int) -> int:
    """Windows per forward pass: at most ``batch_size`` and at most ``token_budget`` tokens (at least 1)."""
    return max(1, min(batch_size, token_budget // length))


def final_hidden_states(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden states ``[batch, n, hidden]``, without computing any logits."""
    return model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state


def logits_from_hidden(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on some hidden states, in float32 (with the model's logit soft-cap, if it has one)."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()  # not inference_mode: training calls this between steps, on FSDP-sharded models too
def token_losses(model, input_ids: torch.Tensor, logits_chunk: int | None = 2048) -> torch.Tensor:
    """Cross-entropy of every next-token prediction, ``[batch, n - 1]`` float32 (nats), on the CPU.

    Entry ``i`` is the loss of predicting token ``i + 1`` from tokens ``0..i``. The LM head runs on
    ``logits_chunk`` positions at a time, so a long window never holds ``n x vocab`` logits.
    ``logits_chunk=None`` runs the model's own forward instead (all logits at once): wrappers that
    act only in the root module's forward (FSDP gathers the embedding and head weights there) need it.
    """
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    targets = input_ids[:, 1:]
    if logits_chunk is None:
        logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1].float()
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none").cpu()
    hidden = final_hidden_states(model, input_ids)
    losses = torch.empty(targets.shape, dtype=torch.float32, device=device)
    for start in range(0, targets.shape[1], logits_chunk):
        end = min(start + logits_chunk, targets.shape[1])
        logits = logits_from_hidden(model, hidden[:, start:end])
        losses[:, start:end] = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets[:, start:end], reduction="none"
        )
    return losses.cpu()


def bucket_means(values: torch.Tensor, positions: torch.Tensor, length: int, buckets: int) -> dict[str, list]:
    """Means of ``values`` (``[..., len(positions)]``) over equal-width buckets of positions in ``[0, length)``.

    Bucket ``i`` holds positions ``p`` with ``i * length / buckets <= p < (i + 1) * length / buckets``;
    an empty bucket's mean is None.
    """
    buckets = max(1, min(buckets, length))
    per_position = values.double().reshape(-1, positions.numel()).mean(0)
    index = (positions.long() * buckets) // length
    sums = torch.zeros(buckets, dtype=torch.float64).index_add_(0, index, per_position)
    counts = torch.bincount(index, minlength=buckets)
    starts = [math.ceil(i * length / buckets) for i in range(buckets + 1)]
    return {
        "bucket_start": starts[:-1],
        "bucket_end": starts[1:],
        "mean": [float(sums[i] / counts[i]) if counts[i] else None for i in range(buckets)],
    }


def _exp(loss: float) -> float | None:
    return math.exp(loss) if loss < 700 else None  # None: overflow (and JSON has no infinity)


def perplexity_at_length(
    model,
    windows: torch.Tensor,
    *,
    batch_size: int = 8,
    token_budget: int = 32768,
    position_buckets: int = 32,
    progress: bool = False,
    description: str = "",
) -> dict[str, Any]:
    """Mean loss, perplexity, tail loss (last quarter of each window) and a per-position loss curve."""
    from tqdm.auto import tqdm

    count, length = windows.shape
    per_batch = batch_size_for(length, batch_size, token_budget)
    losses = []
    for start in tqdm(range(0, count, per_batch), desc=description, leave=False, disable=not progress):
        losses.append(token_losses(model, windows[start : start + per_batch]))
    loss = torch.cat(losses).double()  # [count, length - 1]
    predicted_positions = torch.arange(1, length)  # position of the token each loss predicts
    tail = predicted_positions >= length - length // 4
    mean, tail_mean = float(loss.mean()), float(loss[:, tail].mean())
    return {
        "windows": count,
        "tokens": int(loss.numel()),
        "loss": mean,
        "perplexity": _exp(mean),
        "tail_loss": tail_mean,
        "tail_perplexity": _exp(tail_mean),
        "position_loss": bucket_means(loss, predicted_positions, length, position_buckets),
    }
