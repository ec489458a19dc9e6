"""The RoPE-ID spectrum, temperature and parameter validation (pure math, no models)."""

import math

import pytest
import torch

from hf_ropeid.rope_id import (
    RopeIDParameterError,
    RopeIDParameters,
    inv_freq,
    original_inv_freq,
    query_temperature,
    rotation_angles,
)


def periods(frequencies: torch.Tensor) -> torch.Tensor:
    return 2 * math.pi / frequencies


def test_paper_example_spectrum_d128_L4096():
    # ROPE_ID.md: d = 128, L = 4096 -> 32 rotated pairs with periods 32, 36.6, 41.8, ... 1790.9, 2048,
    # ratio 1.1436 between neighbours; the other 32 pairs are not rotated.
    freqs = inv_freq(RopeIDParameters(head_dim=128, training_length=4096))
    assert freqs.dtype == torch.float64 and freqs.shape == (64,)
    rotated = freqs[:32]
    assert torch.all(freqs[32:] == 0)
    p = periods(rotated)
    assert p[0].item() == pytest.approx(32.0, rel=1e-12)
    assert p[1].item() == pytest.approx(36.6, abs=0.05)
    assert p[2].item() == pytest.approx(41.8, abs=0.05)
    assert p[-2].item() == pytest.approx(1790.9, abs=0.05)
    assert p[-1].item() == pytest.approx(2048.0, rel=1e-12)
    ratios = p[1:] / p[:-1]
    assert torch.allclose(ratios, torch.full_like(ratios, 1.1436), atol=5e-5)
    # Every rotated pair completes at least two full turns inside L.
    assert torch.all(4096 / p >= 2 - 1e-9)


def test_original_spectrum_is_p_rope():
    params = RopeIDParameters(head_dim=64, rope_theta=1e5, training_length=8192, spectrum="original")
    freqs = inv_freq(params)
    expected = 1e5 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    assert torch.equal(freqs[:16], expected[:16])
    assert torch.all(freqs[16:] == 0)


def test_minimal_spectrum_keeps_complete_turns_and_respaces_the_rest():
    # theta 1e5, d 64, L 8192: pairs 0..18 of the original spectrum complete >= 2 turns in 8192.
    full = original_inv_freq(64, 1e5)
    w_min = 2 * 2 * math.pi / 8192
    complete = int((full >= w_min).sum())
    assert complete == 19
    params = RopeIDParameters(head_dim=64, rope_theta=1e5, training_length=8192, rotary_fraction=24 / 32, spectrum="minimal")
    freqs = inv_freq(params)
    assert torch.equal(freqs[:complete], full[:complete])
    tail = freqs[complete - 1 : 24]
    assert tail[-1].item() == pytest.approx(w_min, rel=1e-12)
    ratios = tail[1:] / tail[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))  # geometric re-spacing
    assert torch.all(freqs[24:] == 0)
    # With fewer pairs than already complete, "minimal" is exactly "original".
    half = RopeIDParameters(head_dim=64, rope_theta=1e5, training_length=8192, spectrum="minimal")
    assert torch.equal(inv_freq(half), inv_freq(RopeIDParameters(**{**half.__dict__, "spectrum": "original"})))


def test_rope_parameters_round_trip_and_defaults():
    params = RopeIDParameters.from_rope_parameters({"rope_type": "rope_id", "rope_theta": 5e5}, 64, 2048)
    assert params.training_length == 2048 and params.rotary_fraction == 0.5 and params.rope_theta == 5e5
    again = RopeIDParameters.from_rope_parameters(params.to_rope_parameters(), 64, 999)
    assert again == params


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rotary_fraction": 0.0}, "positive number"),
        ({"rotary_fraction": 1.5}, "rotary_fraction must be in (0, 1]"),
        ({"rotary_fraction": 0.3}, "must be a multiple of 1/32"),
        ({"rotary_fraction": 1 / 32}, "needs at least 2 rotated pairs"),
        ({"shortest_period": 1.5}, "at least 2 tokens"),
        ({"shortest_period": 4096.0}, "must be shorter than training_length / turns_per_training_length"),
        ({"turns_per_training_length": -2}, "positive number"),
        ({"training_length": 0}, "positive number"),
        ({"temperature_coefficient": float("nan")}, "positive number"),
        ({"spectrum": "fancy"}, "accepted: rope_id, original, minimal"),
        ({"temperature": "hot"}, "accepted: query_log, length_log, floor_log, ssmax, none"),
        ({"head_dim": 63}, "head_dim must be even"),
    ],
)
def test_invalid_parameters_are_rejected_with_actionable_messages(overrides, message):
    values = {"head_dim": 64, "training_length": 8192, **overrides}
    with pytest.raises(RopeIDParameterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RopeIDParameters(**values)


def test_unknown_and_conflicting_keys_are_rejected():
    with pytest.raises(RopeIDParameterError, match="Unknown rope_parameters key"):
        RopeIDParameters.from_rope_parameters({"rope_type": "rope_id", "factor": 4.0}, 64, 4096)
    with pytest.raises(RopeIDParameterError, match="set 'rotary_fraction' instead"):
        RopeIDParameters.from_rope_parameters({"rope_type": "rope_id", "partial_rotary_factor": 0.5}, 64, 4096)


def test_query_temperature_is_one_inside_training_length():
    positions = torch.arange(0, 4 * 64)
    scale = query_temperature(positions, 64, "query_log", 0.1)
    assert torch.all(scale[:64] == 1)
    # 1-based position p = 2L -> (1 + 0.1 ln 2)^2
    assert scale[127].item() == pytest.approx((1 + 0.1 * math.log(2)) ** 2, rel=1e-6)
    assert torch.all(scale[65:] > 1) and torch.all(scale[1:] >= scale[:-1])
    length = query_temperature(positions, 64, "length_log")
    assert torch.all(length[:64] == 1)
    assert length[255].item() == pytest.approx(math.log(256) / math.log(64), rel=1e-6)
    assert torch.all(query_temperature(positions, 64, "none") == 1)


def test_floor_log_temperature_is_llama_cpp_formula():
    # llama.cpp (llm_graph_input_attn_temp): 1 + beta * ln(1 + floor((pos + offset) / floor_scale)), pos 0-based,
    # offset 0 and floor_scale L as llama.cpp's mistral3 arch sets them.
    positions = torch.tensor([0, 63, 64, 127, 128, 191, 192, 640, 10**6])
    scale = query_temperature(positions, 64, "floor_log", 0.2)
    expected = [1 + 0.2 * math.log(1 + math.floor(i / 64)) for i in positions.tolist()]
    assert scale.tolist() == pytest.approx(expected, rel=1e-6)
    assert scale[:2].tolist() == [1.0, 1.0] and scale[2].item() == pytest.approx(1 + 0.2 * math.log(2))
    assert RopeIDParameters(head_dim=64, training_length=64, shortest_period=8, temperature="floor_log").temperature == "floor_log"


def test_rotation_angles_are_reduced_modulo_two_pi_in_float64():
    freqs = inv_freq(RopeIDParameters(head_dim=128, training_length=4096))
    positions = torch.tensor([0, 1000, 1_000_000, 10**12])
    angles = rotation_angles(positions, freqs)
    assert angles.dtype == torch.float64
    assert torch.all((angles >= 0) & (angles < 2 * math.pi))
    # A rotation by a multiple of every period is the identity: period 32 -> position 32 * 31250 = 10**6.
    assert angles[2, 0].item() == pytest.approx(0.0, abs=1e-6) or angles[2, 0].item() == pytest.approx(2 * math.pi, abs=1e-6)
