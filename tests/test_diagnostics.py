"""Geometric diagnostics: known matrices give known numbers; captured q/k match the real attention."""

from __future__ import annotations

import math

import pytest
import torch

from hf_ropeid.evaluation.baselines import build_variant
from hf_ropeid.evaluation.diagnostics import (
    capture_queries_keys,
    channel_groups,
    diagnose,
    mean_cosine,
    singular_value_stats,
    sink_statistics,
)

from conftest import tiny_llama

L = 128


def test_singular_value_stats_on_known_matrices():
    torch.manual_seed(0)
    rank_one = torch.randn(50, 1) @ torch.randn(1, 8)
    stats = singular_value_stats(rank_one)
    assert stats["first_singular_share"] == pytest.approx(1.0, abs=1e-9)
    assert stats["stable_rank"] == pytest.approx(1.0, abs=1e-9)

    isotropic = torch.cat([3 * torch.eye(8), 3 * torch.eye(8)])  # all singular values equal
    stats = singular_value_stats(isotropic)
    assert stats["first_singular_share"] == pytest.approx(1 / math.sqrt(8))
    assert stats["stable_rank"] == pytest.approx(8.0)

    two = torch.diag(torch.tensor([2.0, 1.0]))  # sigma = (2, 1)
    stats = singular_value_stats(two)
    assert stats["first_singular_share"] == pytest.approx(2 / math.sqrt(5))
    assert stats["stable_rank"] == pytest.approx(5 / 4)

    assert singular_value_stats(torch.zeros(4, 3)) == {"first_singular_share": None, "stable_rank": None}


def test_mean_cosine_sees_clusters_pointing_apart():
    q = torch.tensor([[1.0, 0.1], [1.0, -0.1]])
    assert mean_cosine(q, -q) == pytest.approx(-1.0)
    assert mean_cosine(q, q) == pytest.approx(1.0)


def test_sink_statistics_match_a_direct_softmax():
    torch.manual_seed(1)
    q, k = torch.randn(40, 8), torch.randn(40, 8)
    positions = torch.tensor([1, 5, 17, 39])
    mass, margin = sink_statistics(q, k, 0.5, positions, chunk=3)
    for i, p in enumerate(positions.tolist()):
        logits = (q[p] @ k[: p + 1].T) * 0.5
        assert mass[i] == pytest.approx(float(torch.softmax(logits, 0)[0]), rel=1e-5)
        assert margin[i] == pytest.approx(float(logits[1:].max() - logits[0]), rel=1e-5, abs=1e-6)


def test_a_healthy_sink_and_a_broken_one():
    d = 8
    direction = torch.nn.functional.normalize(torch.ones(d), dim=0)
    q = 4 * direction.repeat(20, 1)
    k = -4 * direction.repeat(20, 1)
    k[0] = 0  # the sink's key at the origin: logit 0 beats every negative logit
    mass, margin = sink_statistics(q, k, 1.0, torch.arange(1, 20))
    assert torch.all(margin < 0) and torch.all(mass > 0.9)
    k[5] = 4 * direction  # one key now scores positive: it outbids the sink from position 5 on
    mass, margin = sink_statistics(q, k, 1.0, torch.arange(1, 20))
    assert torch.all(margin[:4] < 0) and torch.all(margin[4:] > 0) and torch.all(mass[4:] < 0.01)


def test_channel_groups_follow_the_spectrum():
    rope = channel_groups(torch.tensor([1.0, 0.5, 0.1, 0.01]))
    assert rope["fast_half"].tolist() == [0, 1, 4, 5] and rope["slow_half"].tolist() == [2, 3, 6, 7]
    rope_id = channel_groups(torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert rope_id["rotated"].tolist() == [0, 1, 4, 5] and rope_id["unrotated"].tolist() == [2, 3, 6, 7]
    assert rope_id["all"].tolist() == list(range(8))


@pytest.mark.parametrize("variant", ["rope", "yarn", "rope_id"])
def test_captured_queries_and_keys_reproduce_the_model_attention(variant):
    """Softmax of the captured (rotated, temperature-scaled) q.k equals the eager attention weights."""
    model = build_variant(tiny_llama(), variant, 2 * L)
    model.set_attn_implementation("eager")
    ids = torch.randint(0, 256, (1, 2 * L))  # past L: YaRN's scaling and RoPE-ID's temperature are active
    with torch.inference_mode():
        attentions = model(ids, output_attentions=True).attentions
    captured = capture_queries_keys(model, ids, [1])
    q, k = captured[1]
    groups = q.shape[0] // k.shape[0]
    scaling = model.get_decoder().layers[1].self_attn.scaling
    for head in range(q.shape[0]):
        logits = (q[head] @ k[head // groups].T) * scaling
        logits = logits.masked_fill(torch.ones_like(logits, dtype=torch.bool).triu(1), float("-inf"))
        torch.testing.assert_close(torch.softmax(logits, -1), attentions[1][0, head], atol=2e-5, rtol=1e-4)


def test_diagnose_reports_every_chosen_head():
    model = build_variant(tiny_llama(), "rope_id", 2 * L)
    ids = torch.randint(0, 256, (1, 2 * L))
    report = diagnose(model, ids, layers=[0, 1], heads=[1, 3], max_queries=64, position_buckets=8, training_length=L)
    assert report["length"] == 2 * L
    assert report["channel_groups"] == {"all": 16, "rotated": 8, "unrotated": 8}
    assert set(report["layers"]) == {"0", "1"} and set(report["layers"]["0"]) == {"1", "3"}
    head = report["layers"]["1"]["3"]
    assert len(head["sink_mass"]["mean"]) == 8
    assert 0 < head["sink_mass_mean"] < 1
    assert 0 <= head["positive_margin_fraction_beyond_L"] <= 1
    assert set(head["keys"]) == {"all", "rotated", "unrotated"}
    summary = report["summary"]
    expected = sum(report["layers"][layer][h]["sink_mass_mean"] for layer in ("0", "1") for h in ("1", "3")) / 4
    assert summary["sink_mass_mean"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="layers must be in 0..1 and heads in 0..3"):
        diagnose(model, ids, layers=[2])
