"""The two-pass far-context kernel (rotary_window.py): its plan, its values and gradients against the eager
reference, per-row positions under left padding, caches, and its memory (no [queries, keys] tensor)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache, StaticCache

from hf_ropeid import LlamaRopeIDForCausalLM, RopeIDConfig
from hf_ropeid.rotary_window import FusedKernel, MathKernel, plan_parts, rotary_window_attention

from conftest import tiny_llama_config

L = 64


def model(**rope_id) -> LlamaRopeIDForCausalLM:
    torch.manual_seed(0)
    config = RopeIDConfig.from_llama_config(
        tiny_llama_config(), training_length=L, shortest_period=8.0, spectrum="original", **rope_id)
    return LlamaRopeIDForCausalLM(config).eval()


def coverage(parts, q_len: int, k_len: int) -> dict[str, torch.Tensor]:
    """How many times each (query, key) pair is in a near part, a far part, a biased part."""
    counts = {kind: torch.zeros(q_len, k_len, dtype=torch.long) for kind in ("near", "far", "biased")}
    for part in parts:
        for queries, keys in zip(part.q_index, part.k_index):
            visible = torch.ones(len(queries), len(keys), dtype=torch.bool)
            if part.causal:
                visible = visible.tril()
            grid = torch.zeros(q_len, k_len, dtype=torch.long)
            grid.index_put_((queries[:, None].expand_as(visible)[visible], keys[None, :].expand_as(visible)[visible]),
                            torch.ones((), dtype=torch.long), accumulate=True)
            counts["far" if part.far else "near"] += grid
            if part.biased:
                counts["biased"] += grid
    return counts


@pytest.mark.parametrize("query_start, q_len, window", [
    (0, 50, 8), (0, 48, 8), (0, 5, 8), (0, 9, 8), (3, 40, 8), (37, 1, 8), (7, 1, 8), (0, 1, 8), (20, 17, 8),
    (100, 30, 16), (5, 64, 1), (0, 33, 2),
])
@pytest.mark.parametrize("local, far_field", [(False, False), (False, True), (True, False)])
def test_the_plan_covers_every_visible_pair_exactly_once_in_its_own_pass(query_start, q_len, window, local, far_field):
    parts = plan_parts(query_start, q_len, window, local, far_field)
    k_len = query_start + q_len
    counts = coverage(parts, q_len, k_len)
    distance = torch.arange(query_start, k_len)[:, None] - torch.arange(k_len)[None, :]
    near = (distance >= 0) & (distance < window)
    far = distance >= window
    sink = far & (torch.arange(k_len)[None, :] == 0)
    assert torch.equal(counts["near"], near.long())
    expected_far = (sink if local else far).long()
    assert torch.equal(counts["far"], expected_far)
    assert torch.equal(counts["biased"], (far & ~sink).long() if far_field else torch.zeros_like(counts["biased"]))


def test_a_broken_plan_is_caught():
    # the check above fails when the plan drops the edge of a block (the mechanism broken once)
    parts = [p for p in plan_parts(0, 50, 8, False, False) if not (p.causal and p.q_index[0, 0] > p.q_index[0, -1])]
    counts = coverage(parts, 50, 50)
    distance = torch.arange(50)[:, None] - torch.arange(50)[None, :]
    assert not torch.equal(counts["near"], ((distance >= 0) & (distance < 8)).long())


CASES = [
    dict(rotary_window=16),
    dict(rotary_window=16, far_field="log_count"),
    dict(rotary_window=16, local_layers=[0]),
    dict(rotary_window=32, temperature="length_log", local_layers=[1]),
]


@pytest.mark.parametrize("rope_id", CASES)
@pytest.mark.parametrize("query_start, q_len", [(0, 150), (0, 128), (70, 60), (199, 1), (10, 5)])
def test_two_pass_equals_eager_in_values_and_gradients(rope_id, query_start, q_len):
    m = model(**rope_id)
    torch.manual_seed(1)
    for layer in m.model.layers:
        attn = layer.self_attn
        q = torch.randn(2, 4, q_len, 16, requires_grad=True)
        k, v = (torch.randn(2, 2, query_start + q_len, 16, requires_grad=True) for _ in range(2))
        eager, weights = rotary_window_attention(attn, q, k, v, None, query_start=query_start, kernel="eager")
        fast, none = rotary_window_attention(attn, q, k, v, None, query_start=query_start, kernel="sdpa")
        assert none is None and weights is not None
        torch.testing.assert_close(fast, eager, atol=1e-5, rtol=1e-4)
        probe = torch.randn_like(eager)
        for a, b in zip(torch.autograd.grad((eager * probe).sum(), (q, k, v)),
                        torch.autograd.grad((fast * probe).sum(), (q, k, v))):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_the_math_kernel_equals_the_fused_kernel_values_and_gradients():
    torch.manual_seed(2)
    q = torch.randn(3, 4, 20, 8, dtype=torch.float64)
    k, v = torch.randn(3, 2, 20, 8, dtype=torch.float64), torch.randn(3, 2, 20, 8, dtype=torch.float64)
    for causal in (False, True):
        (o1, l1), (o2, l2) = FusedKernel.forward(q, k, v, causal, 0.3), MathKernel.forward(q, k, v, causal, 0.3)
        torch.testing.assert_close(o1, o2)
        torch.testing.assert_close(l1.to(l2.dtype), l2)
        g = torch.randn_like(o1)
        for a, b in zip(FusedKernel.backward(g, q, k, v, o1, l1, causal, 0.3),
                        MathKernel.backward(g, q, k, v, o1, l1, causal, 0.3)):
            torch.testing.assert_close(a, b)


def test_bf16_two_pass_stays_near_the_fp32_reference():
    m = model(rotary_window=16)
    attn = m.model.layers[0].self_attn
    q, k, v = torch.randn(1, 4, 100, 16), torch.randn(1, 2, 100, 16), torch.randn(1, 2, 100, 16)
    reference, _ = rotary_window_attention(attn, q, k, v, None, query_start=0, kernel="eager")
    fast, _ = rotary_window_attention(attn, q.bfloat16(), k.bfloat16(), v.bfloat16(), None, query_start=0)
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), reference, atol=3e-2, rtol=3e-2)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_of_queries_by_keys_is_formed_forward_or_backward():
    m = model(rotary_window=32, far_field="log_count")
    attn = m.model.layers[0].self_attn
    n = 2048
    q = torch.randn(1, 4, n, 16, requires_grad=True)
    k, v = (torch.randn(1, 2, n, 16, requires_grad=True) for _ in range(2))
    with LargestTensor() as probe:
        out, _ = rotary_window_attention(attn, q, k, v, None, query_start=0)
        out.square().sum().backward()
    assert probe.largest <= 4 * n * 16, probe.largest  # the size of q itself: no [n, n] scores, no mask
    with LargestTensor() as dense:
        rotary_window_attention(attn, q.detach(), k.detach(), v.detach(), None, query_start=0, kernel="eager")
    assert dense.largest >= n * n  # the reference does form them (the probe can see it)


def left_padded_batch(lengths, total, vocab=256):
    torch.manual_seed(3)
    rows = [torch.randint(0, vocab, (n,)) for n in lengths]
    ids = torch.zeros(len(rows), total, dtype=torch.long)
    mask = torch.zeros(len(rows), total, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, total - len(row):], mask[i, total - len(row):] = row, 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate() passes: each row from 0 at its first token
    return rows, ids, mask, positions


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("rope_id", [dict(rotary_window=16, far_field="log_count", temperature="query_log"),
                                     dict(rotary_window=16, local_layers=[0], temperature="length_log")])
def test_a_left_padded_row_gets_exactly_what_it_gets_alone(implementation, rope_id):
    m = model(**rope_id)
    m.set_attn_implementation(implementation)
    rows, ids, mask, positions = left_padded_batch([200, 137, 90], 200)
    with torch.no_grad():
        batch = m(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        for i, row in enumerate(rows):
            alone = m(input_ids=row[None]).logits
            torch.testing.assert_close(batch[i, 200 - len(row):], alone[0], atol=1e-4, rtol=1e-4)


def test_left_padded_batched_generation_matches_each_prompt_alone():
    m = model(rotary_window=16, local_layers=[0], temperature="length_log")
    rows, ids, mask, _ = left_padded_batch([150, 97], 150)
    with torch.no_grad():
        batch = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=258)
        for i, row in enumerate(rows):
            alone = m.generate(input_ids=row[None], max_new_tokens=12, do_sample=False, pad_token_id=258)
            assert torch.equal(batch[i, 150:], alone[0, len(row):])


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_cached_decoding_far_past_the_window_equals_the_full_forward(cache):
    m = model(rotary_window=16, local_layers=[0], far_field="log_count", temperature="length_log")
    ids = torch.randint(0, 256, (1, 16 * L // 4 + 40))  # 4x L with a prefix
    n, prefix = ids.shape[1], ids.shape[1] - 24
    with torch.no_grad():
        full = m(input_ids=ids).logits
        past = DynamicCache(config=m.config) if cache == "dynamic" else StaticCache(config=m.config, max_cache_len=n + 8)
        out = m(input_ids=ids[:, :prefix], past_key_values=past, use_cache=True)
        steps = [out.logits[:, -1]]
        for t in range(prefix, n):
            out = m(input_ids=ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True,
                    position_ids=torch.tensor([[t]]))
            steps.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps[:-1], 1), full[:, prefix - 1:n - 1], atol=1e-4, rtol=1e-4)


def test_static_cache_generation_equals_dynamic_cache_generation():
    m = model(rotary_window=16, local_layers=[0], temperature="length_log")
    ids = torch.randint(0, 256, (1, 100))
    with torch.no_grad():
        dynamic = m.generate(input_ids=ids, max_new_tokens=20, do_sample=False, pad_token_id=258)
        static = m.generate(input_ids=ids, max_new_tokens=20, do_sample=False, pad_token_id=258,
                            cache_implementation="static")
    assert torch.equal(dynamic, static)


def test_a_kernel_is_used_only_after_it_agrees_with_the_math_kernel():
    from hf_ropeid.rotary_window import _agrees

    assert _agrees(FusedKernel, "cpu", torch.float32)

    class Broken(FusedKernel):
        @staticmethod
        def forward(q, k, v, causal, scale):
            out, lse = FusedKernel.forward(q, k, v, causal, scale)
            return out * 1.1, lse

    with pytest.warns(UserWarning, match="failed its check"):
        assert not _agrees(Broken, "cpu", torch.float32)
