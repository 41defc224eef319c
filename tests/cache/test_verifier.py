"""The verifier: its rules (pure logic), the shipped weights, and what the default gives on
the project's own question pairs with the real model."""

import json

import numpy as np
import pytest

from services.cache.calibrate import embed, rates, score
from services.cache.evaluate import QUESTIONS
from services.cache.pairs import load_file
from services.cache.verifier import WEIGHTS, Model, build, parse, rule_conflict


@pytest.mark.parametrize(
    ("a", "b", "why"),
    [
        ("Convert 5 miles to km", "Convert 7 miles to km", "numbers"),
        ("Convert five miles to km", "Convert 5 miles to km", None),
        ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?", "negation"),
        ("Is it safe?", "Isn't it safe?", "negation"),
        ("What is the capital of France?", "What is the capital of Germany?", "names"),
        ("When did World War II end?", "When did World War I end?", "numbers"),
        ("What does `os.path.join` do?", "What does `os.path.split` do?", "names"),
        ("Convert miles to kilometers.", "Convert kilometers to miles.", "direction"),
        ("What should I eat before a run?", "What should I eat after a run?", "opposites"),
        ("How do I install numpy?", "How do I uninstall numpy?", "opposites"),
        ("How do I reset my password?", "How can I reset my password?", None),
        ("Paris is nice. Rome is too.", "Paris is nice. Rome is as well.", None),
    ],
)
def test_rules(a, b, why):
    assert rule_conflict(parse(a), parse(b)) == why


def test_parse_normalises_numbers():
    assert parse("It costs 1,000 dollars").numbers == parse("It costs 1000 dollars").numbers


def test_the_shipped_weights_load_and_every_mode_builds():
    data = json.loads(WEIGHTS.read_text())
    model = Model.from_json(data)
    assert 0 < model.threshold <= 1
    assert 0 < model.floor < 1
    assert build("model", threshold=None, floor=None).threshold == model.threshold
    assert build("rules", threshold=None, floor=None).threshold == data["rules_cosine_threshold"]
    plain = build("off", threshold=0.93, floor=None)
    assert (plain.threshold, plain.floor, plain.rules) == (0.93, 0.93, False)
    assert model.probability(np.zeros((1, len(data["mean"])))).shape == (1,)


def test_the_calibrated_floor_is_applied_before_anything_else():
    verifier = build("model", threshold=None, floor=0.9)
    verdict = verifier.check("How do I reset my password?", "How can I reset my password?", 0.85)
    assert (verdict.accepted, verdict.stage) == (False, "cosine")


@pytest.mark.asyncio(loop_scope="session")
async def test_the_default_on_question_pairs(encoder):
    """The shipped default on the 100 question and instruction pairs written for the project
    (never used to train or choose thresholds): false hits within the 3% target for lexically
    close pairs, and more hits than plain cosine at its own calibrated threshold."""
    pairs = load_file(QUESTIONS, "jsonl", "questions")
    texts = sorted({t for p in pairs for t in (p.a, p.b)})
    vectors = dict(zip(texts, await encoder.encode(texts), strict=True))
    scored = score(pairs, vectors)
    weights = json.loads(WEIGHTS.read_text())
    model = Model.from_json(weights)
    accepted = (
        scored.rules_ok & (scored.cosine >= model.floor) & (model.probability(scored.rows) >= model.threshold)
    )
    hit, false, close = rates(accepted, scored)
    plain_hit, _, _ = rates(scored.cosine >= weights["cosine_threshold"], scored)
    assert false <= 0.03
    assert close <= 0.03
    assert hit > plain_hit
    assert embed  # the offline helper the scripts use stays importable
