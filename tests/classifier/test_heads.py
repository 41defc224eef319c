"""The shipped heads: they load offline, fit this code, and beat the rules on prompts they
never saw (the held-out split of the corpus); the test computes both accuracies."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import pytest_asyncio

from services.classifier import corpus
from services.classifier.heads import Heads, HeadsError
from services.classifier.metrics import accuracy, apgr
from services.classifier.prompt import of_text
from services.classifier.rules import RuleClassifier
from services.kernel.encoder import Encoder, classifier_backend

RULES = RuleClassifier.load()
HEADS = Heads.load()
_, HELD_OUT = corpus.split(corpus.examples())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def encoder():
    enc = Encoder(backend=classifier_backend())  # the heads are trained on its vectors
    await enc.start()
    yield enc
    await enc.aclose()


async def embed(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """As the classifier embeds them: `Prompt.text`, bounded."""
    texts = [of_text(t).text for t in texts]
    return np.vstack([await encoder.encode(texts[i : i + 32]) for i in range(0, len(texts), 32)])


def test_the_heads_know_the_rules_categories():
    assert set(HEADS.categories) == set(RULES.categories)
    assert HEADS.info["backend"], "train.py records the embedding backend"


@pytest.mark.asyncio(loop_scope="module")
async def test_the_head_beats_the_rules_alone_on_the_held_out_split(encoder):
    embeddings = await embed(encoder, [e.text for e in HELD_OUT])
    truth = [e.category for e in HELD_OUT]
    by_rules = [RULES.classify(of_text(e.text)).category for e in HELD_OUT]
    probabilities = HEADS.category_probabilities(embeddings)
    by_head = [HEADS.categories[i] for i in probabilities.argmax(axis=1)]
    rules_accuracy, head_accuracy = accuracy(truth, by_rules), accuracy(truth, by_head)
    assert head_accuracy > rules_accuracy, (head_accuracy, rules_accuracy)
    assert head_accuracy > 0.8
    # The cascade (rules when confident, else the head) is at least as good as the rules.
    verdicts = [RULES.classify(of_text(e.text)) for e in HELD_OUT]
    by_cascade = [
        v.category if v.confidence >= RULES.confidence else h for v, h in zip(verdicts, by_head, strict=True)
    ]
    assert accuracy(truth, by_cascade) > rules_accuracy


@pytest.mark.asyncio(loop_scope="module")
async def test_difficulties_are_probabilities_and_rank_better_than_chance(encoder):
    # A seeded sample across the 29 subjects: one subject's ~200 questions (this test used
    # high-school US history) gave an in-sample APGR that moved by ±0.09 with the encoder.
    rows = random.Random(0).sample(corpus.outcomes(), 600)
    vectors = await embed(encoder, [r.text for r in rows])
    scores = HEADS.difficulty(vectors, [of_text(r.text).user for r in rows])
    assert ((scores >= 0) & (scores <= 1)).all()
    weak = np.array([r.weak_correct for r in rows], dtype=float)
    strong = np.array([r.strong_correct for r in rows], dtype=float)
    assert apgr(scores, weak, strong) > 0.5  # in-sample here; evaluate.py cross-validates by subject


def test_heads_trained_for_other_features_are_refused(tmp_path):
    broken = tmp_path / "heads.npz"
    np.savez(broken, categories=np.array(["a"]))
    with pytest.raises(HeadsError, match="missing"):
        Heads.load(broken)
    with pytest.raises(HeadsError, match="cannot read"):
        Heads.load(tmp_path / "none.npz")


def test_heads_refuse_the_vectors_of_another_model():
    trained = str(HEADS.info["backend"])
    assert HEADS.mismatch(trained) is None
    assert "make train-classifier" in (HEADS.mismatch("onnx:some-other-model.onnx") or "")
    float_heads = dataclasses.replace(HEADS, info={"backend": "onnx:all-MiniLM-L6-v2.onnx"})
    assert float_heads.mismatch("torch") is None  # the same vectors
