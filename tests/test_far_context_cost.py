"""benchmarks/far_context_cost.py: one cell in process (tiny), and the ratios / table / plot from records."""

from __future__ import annotations

import pytest
import torch

from conftest import load_benchmark

bench = load_benchmark("far_context_cost")


def test_the_arms_are_stock_llama_and_the_two_recipes_on_the_same_weights():
    from transformers import LlamaForCausalLM

    stock, far, portable = (bench.build(arm, 256, "cpu") for arm in bench.ARMS)
    assert type(stock) is LlamaForCausalLM
    assert far.config.rope_parameters["rotary_window"] == 128 and far.config.rope_parameters["local_layers"] == [0]
    assert portable.config.rope_parameters["rotary_window"] is None
    assert all(m.config._attn_implementation == "sdpa" for m in (stock, far, portable))
    for name, weight in stock.state_dict().items():  # the same random weights in every arm
        assert torch.equal(far.state_dict()[name], weight) and torch.equal(portable.state_dict()[name], weight)


@pytest.mark.parametrize("workload", ["train", "prefill", "decode"])
def test_a_cell_records_its_arm_workload_and_length(workload):
    record = bench.child("far-context", workload, 48, 32, "cpu", 1)
    assert {k: record[k] for k in ("arm", "workload", "length")} == {"arm": "far-context", "workload": workload,
                                                                    "length": 48}
    assert record["seconds"] > 0 and record["peak_bytes"] > 0


def test_ratios_table_and_plot_are_made_against_stock_of_the_same_length(tmp_path):
    records = [
        {"arm": "stock", "workload": "train", "length": 64, "seconds": 2.0, "peak_bytes": 100},
        {"arm": "far-context", "workload": "train", "length": 64, "seconds": 3.0, "peak_bytes": 110},
        {"arm": "portable", "workload": "train", "length": 64, "error": ["boom"]},
        {"arm": "far-context", "workload": "prefill", "length": 64, "seconds": 1.0, "peak_bytes": 1},  # no stock
    ]
    table = bench.ratios(records)
    assert table == {"train": {"64": {"stock": {"time": 1.0, "memory": 1.0},
                                      "far-context": {"time": 1.5, "memory": 1.1}}}}
    record = {"machine": "m", "torch": "t", "training_length": 32, "records": records, "ratios": table}
    text = bench.markdown(record)
    assert "| 64 | 2.000 | 1.50x | 1.10x | - | - |" in text
    bench.plot(record, tmp_path / "ratios.png")
    assert (tmp_path / "ratios.png").stat().st_size > 1000
