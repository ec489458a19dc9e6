"""Model card: YAML metadata, usage snippet, parameters, evaluation table, template location."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_ropeid import model_card
from hf_ropeid.conversion import convert_checkpoint
from hf_ropeid.rope_id import RopeIDParameters

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMETERS = RopeIDParameters(head_dim=64, rope_theta=1e5, training_length=8192, rotary_fraction=19 / 32, spectrum="original")


def render(**kwargs):
    values = dict(
        model_name="SmolLM2-135M-Instruct-rope-id",
        rope_parameters=PARAMETERS.to_rope_parameters(),
        head_dim=64,
        channel_selection="frequency",
        source="/cache/SmolLM2",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
        repo_id="me/SmolLM2-rope-id",
    )
    values.update(kwargs)
    return model_card.render_model_card(**values)


def test_metadata_usage_and_parameters():
    card = ModelCard(render())
    data = card.data.to_dict()
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (data["library_name"], data["pipeline_tag"], data["license"]) == ("transformers", "text-generation", "apache-2.0")
    assert {"custom_code", "rope-id", "long-context"} <= set(data["tags"])
    text = card.text
    assert 'model_id = "me/SmolLM2-rope-id"' in text and "trust_remote_code=True" in text
    assert "| `training_length` | 8192 |" in text and "| `rotary_fraction` | 0.59375 |" in text
    assert "19 of 32 channel pairs rotate with their original RoPE frequencies" in text
    assert "## Evaluation" not in text


def test_evaluation_table_from_a_verification_report():
    report = {
        "text": {"file": "hamlet_gut.txt"},
        "perplexity": {
            "source": {"256": {"perplexity": 49.61, "windows": 8}, "1024": {"perplexity": 38.3, "windows": 2}},
            "converted": {"256": {"perplexity": 49.64, "windows": 8}, "1024": {"perplexity": 40.1, "windows": 2}},
        },
    }
    table = model_card.perplexity_table(report)
    assert "| 256 | 49.61 | 49.64 | 8 |" in table and "| 1024 | 38.30 | 40.10 | 2 |" in table
    assert "hamlet_gut.txt" in table
    text = render(eval_table=table)
    assert "## Evaluation" in text and "| 1024 | 38.30 | 40.10 | 2 |" in text
    assert model_card.perplexity_table({"problems": []}) is None


def test_unknown_base_model_and_license_are_left_out():
    data = ModelCard(render(base_model=None, license=None, repo_id=None)).data.to_dict()
    assert "base_model" not in data and "license" not in data
    assert 'model_id = "path/to/SmolLM2-135M-Instruct-rope-id"' in render(repo_id=None)


def test_template_is_package_data_and_the_repo_file():
    # hf_ropeid/templates -> ../model_cards, packaged by pyproject's package-data "templates/*".
    assert model_card.DEFAULT_TEMPLATE.is_file()
    assert model_card.DEFAULT_TEMPLATE.read_text() == (REPO_ROOT / "model_cards" / "rope_id_model_card.md").read_text()


def test_converter_carries_the_source_license(tiny_llama_dir, tmp_path):
    (tiny_llama_dir / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    target = convert_checkpoint(tiny_llama_dir, tmp_path / "out", verify=False, base_model="org/tiny")
    data = ModelCard.load(target / "README.md").data.to_dict()
    assert data["license"] == "mit" and data["base_model"] == "org/tiny"
    assert data["base_model_relation"] == "finetune" and "model-index" not in data  # no verification, no results


REPORT = {
    "text": {"file": "hamlet_gut.txt"},
    "perplexity": {
        "source": {"256": {"perplexity": 49.61, "windows": 8}},
        "converted": {"256": {"perplexity": 49.64, "windows": 8}, "1024": {"perplexity": 40.1, "windows": 2}},
    },
}


def test_hub_metadata_parses_with_huggingface_hub_model_card_tooling(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(render(eval_results=model_card.verification_results(REPORT), revision="main"))
    card = ModelCard.load(readme)
    data = card.data
    assert (data.base_model, data.base_model_relation) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "finetune")
    assert (data.library_name, data.pipeline_tag) == ("transformers", "text-generation")
    assert {"rope-id", "custom_code"} <= set(data.tags)
    assert data.model_name == "SmolLM2-rope-id"
    results = {r.metric_name: r for r in data.eval_results}
    assert len(results) == 2 and all(r.metric_type == "perplexity" and r.dataset_name == "hamlet_gut.txt" for r in results.values())
    assert [r.metric_value for r in data.eval_results] == [49.64, 40.1]
    assert "model-index" in data.to_dict()
    assert 'revision = "main"' in card.text and "revision=revision, trust_remote_code=True" in card.text


def test_no_repo_means_no_revision_and_no_evaluation_means_no_model_index():
    card = ModelCard(render(repo_id=None, revision="main"))
    assert "revision" not in card.text and card.data.eval_results is None
    assert model_card.verification_results({"problems": []}) is None


def test_minimal_spectrum_is_described_with_its_kept_pairs():
    # SmolLM2: 19 original frequencies turn twice inside 8192 tokens (issue text); 22 rotate in total.
    minimal = RopeIDParameters(head_dim=64, rope_theta=1e5, training_length=8192, rotary_fraction=22 / 32, spectrum="minimal")
    text = model_card.describe_positions(minimal.to_rope_parameters(), 64)
    assert "22 of 32 channel pairs" in text and "(19 pairs); the 3 slower ones are sped up" in text
    assert "the other 10 are not rotated" in text


def test_unset_parameters_are_left_out_and_a_rotary_window_is_described():
    assert "rotary_window" not in render()  # None in the paper's setting: no table row
    windowed = RopeIDParameters(
        head_dim=64, rope_theta=1e5, training_length=8192, rotary_fraction=0.5, spectrum="original", rotary_window=4096
    )
    text = render(rope_parameters=windowed.to_rope_parameters())
    assert "| `rotary_window` | 4096 |" in text and "Keys 4096 or more tokens before the query" in text
    assert "sliding window" not in text
    local = RopeIDParameters(head_dim=64, training_length=8192, spectrum="original", rotary_window=4096,
                             local_layers=[0, 2])
    text = model_card.describe_positions(local.to_rope_parameters(), 64)
    assert "Layers 0, 2 attend only to the last 4096 keys and the first key (sliding window)" in text
    one = RopeIDParameters(head_dim=64, training_length=8192, spectrum="original", rotary_window=4096, local_layers=[0])
    assert "Layer 0 attends only to the last 4096 keys" in model_card.describe_positions(one.to_rope_parameters(), 64)


@pytest.mark.parametrize("temperature", ["query_log", "length_log", "floor_log", "ssmax", "none"])
def test_every_temperature_is_described_and_a_window_names_where_it_runs(temperature):
    p = RopeIDParameters(head_dim=64, rope_theta=1e5, training_length=8192, rotary_fraction=0.5, spectrum="original",
                         rotary_window=4096, temperature=temperature, temperature_channels="unrotated")
    text = model_card.describe_positions(p.to_rope_parameters(), 64)
    assert "vLLM, llama.cpp and flash-attention refuse it" in text
    assert ("unrotated channels only" in text) == (temperature != "none")
    if temperature == "ssmax":
        assert "ln(max(p, 2))/ln(L)" in text
