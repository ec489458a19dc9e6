"""The options found by benchmarks/toy_length_generalization.py: rotary_window and far_field."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama_config

from hf_ropeid import LlamaRopeIDForCausalLM, RopeIDConfig
from hf_ropeid.rotary_window import rotary_window_attention
from hf_ropeid.rope_id import RopeIDParameterError, RopeIDParameters, far_field_bias

L = 128  # tiny_llama_config's max_position_embeddings = training length


def model(seed: int = 0, **rope_id) -> LlamaRopeIDForCausalLM:
    torch.manual_seed(seed)
    config = RopeIDConfig.from_llama_config(tiny_llama_config(), shortest_period=8, **rope_id)
    m = LlamaRopeIDForCausalLM(config).eval()
    with torch.no_grad():  # larger q/k weights so positions visibly matter
        for name, p in m.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.normal_(0, 0.3)
    return m


def logits(m, ids, **kw):
    with torch.no_grad():
        return m(input_ids=ids, **kw).logits


def assert_cached_decoding_matches(m, ids, full, prefix):
    """Prefill ``prefix`` tokens, then decode the rest one at a time: each step's logits equal the full forward's."""
    with torch.no_grad():
        out = m(input_ids=ids[:, :prefix], use_cache=True)
        for t in range(prefix, ids.shape[1]):
            out = m(input_ids=ids[:, t:t + 1], cache=out.cache, use_cache=True)
            torch.testing.assert_close(out.logits[:, -1], full[:, t], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rotary_window=32.5), "whole number of tokens"),
        (dict(rotary_window=0), "positive number"),
        (dict(far_field="log_count"), "needs a rotary_window"),
        (dict(far_field="log_count", rotary_window=127), "at most training_length - 2"),
        (dict(far_field="mean", rotary_window=32), "accepted: none, log_count"),
    ],
)
def test_bad_values_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(RopeIDParameterError, match=message):
        RopeIDParameters(head_dim=16, training_length=L, shortest_period=8, **kwargs)


def test_defaults_are_the_paper_and_new_keys_round_trip():
    assert RopeIDParameters(head_dim=16).rotary_window is None
    assert RopeIDParameters(head_dim=16).far_field == "none"
    config = model(rotary_window=64, far_field="log_count").config
    again = RopeIDConfig.from_dict(config.to_dict())
    assert again.rope_parameters["rotary_window"] == 64 and again.rope_parameters["far_field"] == "log_count"


def test_window_only_changes_keys_beyond_it():
    ids = torch.randint(0, 256, (2, 100))
    plain, windowed = model(), model(rotary_window=40)
    windowed.load_state_dict(plain.state_dict())
    a, b = logits(plain, ids), logits(windowed, ids)
    torch.testing.assert_close(a[:, :40], b[:, :40], atol=1e-5, rtol=1e-5)  # no key is 40 back yet
    assert (a[:, 41:] - b[:, 41:]).abs().amax() > 1e-2
    wide = model(rotary_window=100)
    wide.load_state_dict(plain.state_dict())
    torch.testing.assert_close(logits(wide, ids), a, atol=1e-5, rtol=1e-5)


def test_attention_matches_a_per_pair_reference():
    m = model(rotary_window=5)
    attn = m.model.layers[0].self_attn
    q, k, v = (torch.randn(1, 4, 12, 16) for _ in range(3))
    k, v = k[:, :2], v[:, :2]  # two key/value heads (GQA)
    out, weights = rotary_window_attention(attn, q, k, v, None, query_start=0, kernel="eager")
    fused, no_weights = rotary_window_attention(attn, q, k, v, None, query_start=0)  # sdpa, the default
    assert no_weights is None
    torch.testing.assert_close(fused, out, atol=1e-5, rtol=1e-5)
    rotated = [0, 1, 2, 3, 8, 9, 10, 11]  # 4 rotated pairs of head_dim 16: channels i and i + 8
    expected = torch.zeros(1, 4, 12, 12)
    for h in range(4):
        for i in range(12):
            for j in range(12):
                channels = range(16) if i - j < 5 else [c for c in range(16) if c not in rotated]
                score = sum(q[0, h, i, c] * k[0, h // 2, j, c] for c in channels) * attn.scaling
                expected[0, h, i, j] = score if j <= i else float("-inf")
    expected = expected.softmax(-1)
    torch.testing.assert_close(weights, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, (expected @ v.repeat_interleave(2, 1)).transpose(1, 2))


@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_fused_kernel_equals_the_eager_scores_with_far_field_padding_and_a_cache_offset(mask_kind):
    m = model(rotary_window=24, far_field="log_count")
    attn = m.model.layers[0].self_attn
    q = torch.randn(2, 4, 40, 16, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 2, 190, 16, dtype=torch.float64, requires_grad=True) for _ in range(2))
    mask = None
    if mask_kind is not None:
        keep = torch.ones(2, 1, 40, 190, dtype=torch.bool)
        keep[0, :, :, :30] = False  # left padding of the first sequence
        keep[1, :, 5, :] = False  # one fully masked query row
        mask = keep if mask_kind == "bool" else torch.zeros(keep.shape, dtype=torch.float64).masked_fill(
            ~keep, torch.finfo(torch.float64).min)
    # 40 queries at cache positions 150..189, past L = 128, so the far-field bias is on
    eager, _ = rotary_window_attention(attn, q, k, v, mask, query_start=150, kernel="eager")
    fused, _ = rotary_window_attention(attn, q, k, v, mask, query_start=150, kernel="sdpa")
    assert torch.isfinite(eager).all() and torch.isfinite(fused).all()  # the fully masked row too
    torch.testing.assert_close(fused, eager, atol=1e-10, rtol=1e-10)
    used = torch.ones(2, 40, 1, 1, dtype=torch.float64)
    used[1, 5] = 0  # a fully masked (padding) row's output is never used; its gradient is not compared
    grads = [torch.autograd.grad((out * used).square().sum(), (q, k, v)) for out in (eager, fused)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_far_field_is_exactly_off_inside_the_training_length():
    ids = torch.randint(0, 256, (1, 200))
    windowed, normalised = model(rotary_window=64), model(rotary_window=64, far_field="log_count")
    normalised.load_state_dict(windowed.state_dict())
    a, b = logits(windowed, ids), logits(normalised, ids)
    torch.testing.assert_close(a[:, :L], b[:, :L], atol=1e-5, rtol=1e-5)
    assert (a[:, L + 10:] - b[:, L + 10:]).abs().amax() > 1e-3


def test_far_field_bias_keeps_the_far_weight_of_the_training_length():
    positions = torch.arange(1000)
    bias = far_field_bias(positions, positions, training_length=L, rotary_window=64)
    weight = (bias.exp() * (positions[:, None] - positions[None, :] >= 64) * (positions[None, :] > 0)).sum(-1)
    assert torch.all(bias[:L] == 0) and torch.all(bias[:, 0] == 0)
    torch.testing.assert_close(weight[L - 1:], torch.full((1000 - L + 1,), float(L - 1 - 64)))


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_cache_and_padding_give_the_full_forward_logits(implementation):
    m = model(rotary_window=48, far_field="log_count", temperature="query_log")
    m.config._attn_implementation = implementation
    ids = torch.randint(0, 256, (1, 160))
    full = logits(m, ids)
    assert_cached_decoding_matches(m, ids, full, prefix=150)
    padded = torch.cat([ids, torch.zeros(1, 20, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 160), torch.zeros(1, 20)], dim=1).long()
    torch.testing.assert_close(logits(m, padded, attention_mask=mask)[:, :160], full, atol=1e-4, rtol=1e-4)


def test_long_no_grad_inference_equals_the_eager_reference():
    m = model(rotary_window=48, far_field="log_count")
    attn = m.model.layers[0].self_attn
    q, k, v = (torch.randn(1, 4, 700, 16) for _ in range(3))
    with torch.no_grad():
        eager, weights = rotary_window_attention(attn, q, k[:, :2], v[:, :2], None, query_start=0, kernel="eager")
        fused, no_weights = rotary_window_attention(attn, q, k[:, :2], v[:, :2], None, query_start=0, kernel="sdpa")
    assert weights.shape == (1, 4, 700, 700) and no_weights is None
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)


def test_unknown_window_kernel_is_refused():
    attn = model(rotary_window=8).model.layers[0].self_attn
    q = torch.randn(1, 4, 6, 16)
    with pytest.raises(ValueError, match="accepted: 'sdpa', 'eager'"):
        rotary_window_attention(attn, q, q[:, :2], q[:, :2], None, query_start=0, kernel="flash")


@pytest.mark.parametrize("implementation", ["flex_attention", "flash_attention_2"])
def test_implementations_without_the_window_kernels_get_a_clear_error(implementation):
    m = model(rotary_window=8)
    with pytest.raises(ValueError, match=f"need attn_implementation 'eager' or 'sdpa'.*{implementation!r}"):
        m.set_attn_implementation(implementation)
    m.config._attn_implementation = implementation  # behind transformers' back: refused at the call
    with pytest.raises(ValueError, match=f"need attn_implementation 'eager' or 'sdpa'.*{implementation!r}"):
        m(input_ids=torch.randint(0, 256, (1, 20)))


def test_a_bad_mask_reaching_the_window_kernel_gets_a_clear_error():
    attn = model(rotary_window=8).model.layers[0].self_attn
    q = torch.randn(1, 4, 6, 16)
    with pytest.raises(ValueError, match="needs a 4-D tensor attention mask"):
        rotary_window_attention(attn, q, q[:, :2], q[:, :2], torch.ones(1, 6, dtype=torch.bool), query_start=0)


# ----------------------------------------------------------------------------------------------
# local_layers: sliding-window layers (SWAN-style)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(local_layers=[0]), "needs a rotary_window"),
        (dict(local_layers=[-1], rotary_window=32), "whole numbers from 0"),
        (dict(local_layers=[True], rotary_window=32), "whole numbers from 0"),
        (dict(local_layers="0,x", rotary_window=32), "whole numbers from 0"),
        (dict(local_layers=[0.5], rotary_window=32), "whole numbers from 0"),
    ],
)
def test_bad_local_layers_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(RopeIDParameterError, match=message):
        RopeIDParameters(head_dim=16, training_length=L, shortest_period=8, **kwargs)


def test_local_layers_are_parsed_and_round_trip_as_a_list():
    assert RopeIDParameters(head_dim=16, rotary_window=32, local_layers="1, 0").local_layers == (0, 1)
    config = model(rotary_window=32, local_layers="0").config
    assert config.rope_parameters["local_layers"] == [0]
    again = RopeIDConfig.from_dict(config.to_dict())
    assert again.rope_parameters["local_layers"] == [0]
    with pytest.raises(ValueError, match="names a layer the model does not have"):
        model(rotary_window=32, local_layers=[7])


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_a_local_layer_sees_only_the_window_and_the_first_key(kernel):
    m = model(rotary_window=24, local_layers=[0])
    local, other = m.model.layers[0].self_attn, m.model.layers[1].self_attn
    q, k, v = (torch.randn(1, 4, 90, 16) for _ in range(3))
    k, v = k[:, :2], v[:, :2]
    with torch.no_grad():
        out, _ = rotary_window_attention(local, q, k, v, None, query_start=0, kernel=kernel)
        # Reference: softmax over the keys less than W back (every channel) and key 0 (the sink; W or more back
        # it is a far key, scored by the unrotated pairs only), scale 1/sqrt(head_dim).
        keys = k[0].repeat_interleave(2, 0)
        n, half = local.rope_id.num_rotated_pairs, 8
        phase_free = keys.clone()
        phase_free[..., :n] = 0
        phase_free[..., half:half + n] = 0
        scores = torch.einsum("hqd,hkd->hqk", q[0], keys) * local.scaling
        sink = torch.einsum("hqd,hd->hq", q[0], phase_free[:, 0]) * local.scaling
        distance = torch.arange(90)[:, None] - torch.arange(90)[None, :]
        scores[:, :, 0] = torch.where(distance[:, 0] >= 24, sink, scores[:, :, 0])
        visible = (distance >= 0) & ((distance < 24) | (torch.arange(90)[None, :] == 0))
        weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        expected = (weights @ v[0].repeat_interleave(2, 0)).transpose(0, 1)[None]
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        # A non-local layer of the same model still sees the far keys (through the unrotated pairs).
        far, _ = rotary_window_attention(other, q, k, v, None, query_start=0, kernel=kernel)
        assert (far[:, 30:] - out[:, 30:]).abs().amax() > 1e-3


def test_local_layers_get_no_temperature_and_decode_like_the_full_forward():
    ids = torch.randint(0, 256, (1, 300))
    base = model(rotary_window=32, local_layers=[0], temperature="none")
    tempered = model(rotary_window=32, local_layers=[0], temperature="length_log")
    tempered.load_state_dict(base.state_dict())
    captured = {}
    for name, m in (("base", base), ("tempered", tempered)):
        hook = m.model.layers[0].register_forward_hook(lambda mod, args, out, n=name: captured.update({n: out}))
        logits(m, ids)
        hook.remove()
    first = lambda x: x[0] if isinstance(x, tuple) else x  # noqa: E731
    torch.testing.assert_close(first(captured["base"]), first(captured["tempered"]))  # layer 0: no temperature
    assert (logits(base, ids)[:, 200:] - logits(tempered, ids)[:, 200:]).abs().amax() > 1e-3  # layer 1: tempered
    assert_cached_decoding_matches(tempered, ids, logits(tempered, ids), prefix=290)
