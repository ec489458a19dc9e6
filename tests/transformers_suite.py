"""transformers' own common model tests (``ModelTesterMixin``), run on each RoPE-ID class beside stock Llama.

Not collected by the project's test run: ``test_transformers_common.py`` runs this file in a child pytest
with transformers' ``tests/`` folder (from the source distribution of the installed version, fetched from
the package registry) importable as the package ``transformers_tests``, then compares each RoPE-ID class's
outcomes with the stock control's. Nothing of transformers' test code is copied here: only the tester
(the tiny model and its inputs), as every model in transformers has one.
"""

from __future__ import annotations

import unittest

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES
from transformers_tests.test_modeling_common import ModelTesterMixin, ids_tensor, random_attention_mask

from hf_ropeid import LlamaRopeIDForCausalLM, LlamaRopeIDModel, RopeIDConfig
from hf_ropeid.parameters import RECIPES, apply_recipe

# The mixin tells a base model from a head model by transformers' static name tables, which a model inside
# transformers is listed in and a plugin's (registered with AutoModel.register) is not. List ours there, for
# this child process only, as transformers lists Llama's; the package itself must not (transformers would
# then look for a module transformers.models.llama_rope_id).
MODEL_MAPPING_NAMES.setdefault(RopeIDConfig.model_type, LlamaRopeIDModel.__name__)
MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault(RopeIDConfig.model_type, LlamaRopeIDForCausalLM.__name__)

SIZES = dict(
    vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, hidden_act="silu", initializer_range=0.02,
    pad_token_id=0, bos_token_id=1, eos_token_id=2, attention_dropout=0.0,
)
# L small enough that the common tests' inputs (7 tokens, and 1.5x max_position_embeddings in the rope tests)
# reach past the window and past L, so the RoPE-ID mechanisms are exercised, not only the plain path.
TRAINING_LENGTH = 8


def rope_id_parameters(recipe: str) -> dict:
    params = apply_recipe({"training_length": TRAINING_LENGTH}, recipe)
    params = {k: v for k, v in params.items() if v is not None}
    return {"rope_type": "rope_id", "rope_theta": 10_000.0, "shortest_period": 2.0, **params}


class Tester:
    """The tiny model and inputs the mixin runs on (the shape of transformers' own model testers)."""

    def __init__(self, parent, config_class, rope_parameters, batch_size=13, seq_length=7):
        self.parent = parent
        self.config_class, self.rope_parameters = config_class, rope_parameters
        self.batch_size, self.seq_length = batch_size, seq_length
        self.is_training, self.use_input_mask, self.use_labels = True, True, True
        for key, value in SIZES.items():
            setattr(self, key, value)

    def get_config(self):
        return self.config_class(**SIZES, rope_parameters=dict(self.rope_parameters))

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_mask = random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), input_ids, input_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, input_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": input_mask}


class CommonTests(ModelTesterMixin):
    config_class = LlamaConfig
    rope_parameters: dict = {"rope_type": "default", "rope_theta": 10_000.0}
    test_torch_exportable = False  # needs transformers' exporters tests, which the source distribution lacks

    def setUp(self):
        torch.manual_seed(0)
        self.model_tester = Tester(self, self.config_class, self.rope_parameters)


class StockLlamaTest(CommonTests, unittest.TestCase):
    """The control: a failure stock Llama also has is not a RoPE-ID regression."""

    all_model_classes = (LlamaModel, LlamaForCausalLM)


class RopeIDFarContextTest(CommonTests, unittest.TestCase):
    """The converter's default recipe (far-context: window, local layer 0, length-log temperature)."""

    all_model_classes = (LlamaRopeIDModel, LlamaRopeIDForCausalLM)
    config_class = RopeIDConfig
    rope_parameters = rope_id_parameters("far-context")


class RopeIDPortableTest(CommonTests, unittest.TestCase):
    all_model_classes = (LlamaRopeIDModel, LlamaRopeIDForCausalLM)
    config_class = RopeIDConfig
    rope_parameters = rope_id_parameters("portable")


class RopeIDPaperTest(CommonTests, unittest.TestCase):
    all_model_classes = (LlamaRopeIDModel, LlamaRopeIDForCausalLM)
    config_class = RopeIDConfig
    rope_parameters = rope_id_parameters("paper")


SUITES = {
    "StockLlamaTest": None,
    "RopeIDFarContextTest": "far-context",
    "RopeIDPortableTest": "portable",
    "RopeIDPaperTest": "paper",
}
assert set(SUITES.values()) - {None} == set(RECIPES), "every named recipe has a suite"
