"""The shipped training data: exclusions applied, every category present, a stable split."""

from __future__ import annotations

import csv
import json
from collections import Counter

from services.classifier import corpus
from services.classifier.rules import RuleClassifier

EXAMPLES = corpus.examples()


def test_every_category_of_the_rules_has_examples_on_both_sides_of_the_split():
    train, held_out = corpus.split(EXAMPLES)
    categories = set(RuleClassifier.load().categories)
    assert set(Counter(e.category for e in train)) == categories
    assert set(Counter(e.category for e in held_out)) == categories
    assert {e.category for e in corpus.holdout()} == categories


def test_a_group_never_straddles_the_split():
    train, held_out = corpus.split(EXAMPLES)
    assert not {e.group for e in train} & {e.group for e in held_out}
    assert 0.1 < len(held_out) / len(EXAMPLES) < 0.3


def test_the_corpus_is_deterministic():
    again = corpus.examples()
    assert [(e.text, e.category, e.group) for e in again] == [(e.text, e.category, e.group) for e in EXAMPLES]


def test_excluded_rows_are_skipped():
    exclude = json.loads((corpus.DATA / "exclude.json").read_text())
    texts = {e.text for e in EXAMPLES} | {o.text for o in corpus.outcomes()}
    checked = 0
    for rel, spec in exclude.items():
        if not isinstance(spec, dict):
            continue
        path = corpus.DATA / rel
        if path.suffix == ".json":
            rows = json.loads(path.read_text())
            skipped = [rows[i]["instruction"].strip() for i in spec["skip"]]
        else:
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            skipped = [rows[i]["prompt"] for i in spec["skip"]]
        kept = {t.split("\n\n")[0] for t in texts}
        assert not any(s in kept or s in texts for s in skipped), rel
        checked += len(skipped)
    assert checked > 50


def test_outcomes_hold_29_subjects_with_both_models_answers():
    rows = corpus.outcomes()
    assert len({r.subject for r in rows}) == 29
    assert (
        0.6 < sum(r.weak_correct for r in rows) / len(rows) < sum(r.strong_correct for r in rows) / len(rows)
    )
