"""Retrieval: sample construction, and scoring with models whose answers are known in advance."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_ropeid.evaluation.retrieval import (
    MULTIKEY_NEEDLE,
    RetrievalError,
    multikey_sample,
    passkey_sample,
    prepare_tasks,
    score_answers,
    score_task,
    split_answer,
)

from conftest import byte_tokenizer

VOCAB = 260
DEPTHS = [0.0, 0.5, 1.0]
# Plain prose with no digits, so any number in a prompt comes from a needle.
HAYSTACK_TEXT = "The quick brown fox jumps over the lazy dog while the river runs to the sea. " * 200


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def haystack(tokenizer):
    return torch.tensor(tokenizer(HAYSTACK_TEXT, add_special_tokens=False)["input_ids"])


class RuleModel(nn.Module):
    """A stand-in language model: ``predict(ids) -> next-token ids`` becomes one-hot logits.

    Exposes what the scoring code uses: get_decoder(), get_output_embeddings(), config, parameters.
    """

    def __init__(self, predict):
        super().__init__()
        self.predict = predict
        self.head = nn.Linear(VOCAB, VOCAB, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(20 * torch.eye(VOCAB))
        self.config = SimpleNamespace(final_logit_softcapping=None)

    def get_output_embeddings(self):
        return self.head

    def get_decoder(self):
        def decoder(input_ids, use_cache=False):
            hidden = nn.functional.one_hot(self.predict(input_ids), VOCAB).float()
            return SimpleNamespace(last_hidden_state=hidden)

        return decoder


def oracle(ids):
    """Reads the future: predicts the token that actually comes next (the last one: anything)."""
    return torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)


def off_by_one(ids):
    """Predicts the token after next: wrong wherever neighbouring tokens differ."""
    return torch.cat([ids[:, 2:], ids[:, -2:]], dim=1)


def induction_copy(ids, longest=48, last=16):
    """A perfect copier: continues the longest earlier match of the current suffix (latest on ties).

    This is what an induction head does, and all a model needs to retrieve a needle whose text
    before the answer is repeated in the question. Only the ``last`` positions (where answers are
    scored) are computed; earlier ones predict token 0.
    """
    out = torch.zeros_like(ids)
    n = ids.shape[1]
    j = torch.arange(n)
    for b, row in enumerate(ids):
        for t in range(n - last, n):
            matched = j < t  # candidate earlier positions j whose next token exists
            run = torch.zeros(n, dtype=torch.long)
            for shift in range(min(longest, t + 1)):
                matched = matched & (j >= shift)
                matched[shift:] &= row[: n - shift] == row[t - shift]
                run += matched.long()
            if run.max() > 0:
                best = int((run * n + j).argmax())  # longest match first, then the latest
                out[b, t] = row[best + 1]
    return out


def test_samples_have_the_exact_length_and_the_needle_at_its_depth(tokenizer, haystack):
    rng = random.Random(0)
    for depth in DEPTHS:
        sample = passkey_sample(tokenizer, haystack, 400, depth, rng)
        assert len(sample.input_ids) == 400
        text = tokenizer.decode(sample.input_ids)
        answer = tokenizer.decode(sample.input_ids[-sample.answer_length :])
        assert answer == " " + sample.answer and sample.answer.isdigit() and len(sample.answer) == 5
        needle_at = text.index(f"The pass key is {sample.answer}")
        start, end = text.index("remember it.\n") + len("remember it.\n"), text.index("\nWhat is the pass key?")
        needle = f"\nThe pass key is {sample.answer}. Remember it. {sample.answer} is the pass key.\n"
        haystack_chars = (end - start) - len(needle)
        assert abs((needle_at - 1 - start) / haystack_chars - depth) < 0.02


def test_multikey_samples_carry_distinct_distractors(tokenizer, haystack):
    sample = multikey_sample(tokenizer, haystack, 600, 0.5, random.Random(1), needles=4)
    text = tokenizer.decode(sample.input_ids)
    stem = MULTIKEY_NEEDLE.split("{key}")[0].strip()
    needles = [line for line in text.splitlines() if line.startswith(stem)]
    assert len(needles) == 4
    keys = {line.split(" for ")[1].split(" is:")[0] for line in needles}
    assert len(keys) == 4
    asked = text.rsplit("What is the special magic number for ", 1)[1].split("?")[0]
    assert f"The special magic number for {asked} is: {sample.answer}." in needles


def test_a_prompt_that_does_not_fit_is_skipped(tokenizer, haystack):
    assert passkey_sample(tokenizer, haystack, 40, 0.5, random.Random(0)) is None
    result = score_task(RuleModel(oracle), [], DEPTHS)
    assert result["accuracy"] is None and result["skipped"] == "too short"
    with pytest.raises(RetrievalError, match="Unknown retrieval task"):
        prepare_tasks(tokenizer, haystack, ["needle"], [256], DEPTHS)
    with pytest.raises(RetrievalError, match="haystack has"):
        passkey_sample(tokenizer, haystack[:50], 400, 0.5, random.Random(0))


def test_answer_is_split_where_the_question_ends(tokenizer):
    question, answer = split_answer(tokenizer, "The pass key is", " 12345")
    assert tokenizer.decode(question) == "The pass key is"
    assert tokenizer.decode(answer) == " 12345"


@pytest.mark.parametrize("task", ["passkey", "multikey"])
def test_known_models_score_known_accuracies(tokenizer, haystack, task):
    samples = prepare_tasks(tokenizer, haystack, [task], [500, 700], DEPTHS, samples=2, seed=3)[task]
    for n, made in samples.items():
        assert len(made) == len(DEPTHS) * 2
        assert score_task(RuleModel(oracle), made, DEPTHS, batch_size=4)["accuracy"] == 1.0
        wrong = score_task(RuleModel(off_by_one), made, DEPTHS, batch_size=4)
        assert wrong["accuracy"] == 0.0
        assert set(wrong["by_depth"]) == {str(d) for d in DEPTHS}


@pytest.mark.parametrize("task", ["passkey", "multikey"])
def test_a_perfect_copier_retrieves_every_needle(tokenizer, haystack, task):
    samples = prepare_tasks(tokenizer, haystack, [task], [400], DEPTHS, samples=2, seed=5)[task][400]
    result = score_task(RuleModel(induction_copy), samples, DEPTHS, batch_size=3)
    assert result["accuracy"] == 1.0
    assert all(cell["accuracy"] == 1.0 for cell in result["by_depth"].values())


def test_score_answers_checks_only_the_answer_tokens():
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 8, 9]])
    # Predicts 9 after 8 (right), and something wrong everywhere else.
    predict = lambda x: torch.where(x == 8, torch.tensor(9), torch.tensor(0))  # noqa: E731
    exact, logprob = score_answers(RuleModel(predict), ids, [1, 2])
    assert exact == [True, False]
    assert logprob[0] == pytest.approx(0.0, abs=1e-3) and logprob[1] < -10
