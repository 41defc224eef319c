"""The rule stage on crafted prompts, its rules file's validation, and prompt extraction."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.classifier.prompt import HEAD_CHARS, TAIL_CHARS, Prompt, from_messages
from services.classifier.rules import RuleClassifier, RulesError

RULES = RuleClassifier.load()

CONFIDENT = {
    "code": [
        "Write a Python function that merges two sorted lists.",
        "```js\nconst x = await fetch(url)\n```\nwhy does this hang?",
        'Traceback (most recent call last):\n  File "app.py", line 3\nTypeError: unsupported operand',
    ],
    "math": [
        "Solve 3x + 5 = 20 for x.",
        "What is the derivative of x^3 + 2x? Show the calculus steps for this polynomial equation.",
    ],
    "reasoning": [
        "All wugs are daxes and no daxes are blue. Is this a valid syllogism? Explain step by step.",
        "Here is a logic puzzle: who is lying if A says B lies and B says A lies? Think carefully.",
    ],
    "creative_writing": ["Write a poem about the first snow of winter.", "Compose a limerick about a cat."],
    "extraction": [
        "Summarize the following article in three bullet points:\nThe council met on Monday ...",
        "Extract all the dates from this text: signed 3 May, amended 14 June.",
    ],
    "translation": ["Translate 'good morning' into French.", "How do you say 'thank you' in Japanese?"],
    "roleplay": [
        "Pretend you are a pirate captain and greet my crew.",
        "Let's role-play: you are a medieval innkeeper and I just walked in.",
    ],
    "general": ["hi!", "thanks a lot", "good morning"],
}


@pytest.mark.parametrize(("category", "text"), [(c, t) for c, texts in CONFIDENT.items() for t in texts])
def test_clear_prompts_are_decided_by_the_rules(category, text):
    verdict = RULES.classify(Prompt(user=text))
    assert verdict.category == category, verdict
    assert verdict.confidence >= RULES.confidence, verdict
    assert 0.0 <= verdict.difficulty <= 1.0


@pytest.mark.parametrize(
    "text",
    [
        "Which of the following best describes the role of the Federal Reserve?\n"
        "A. x\nB. y\nC. z\nD. w\nAnswer:",
        "My neighbour's tree leans over my fence. What are my options?",
    ],
)
def test_unclear_prompts_are_left_to_the_model(text):
    verdict = RULES.classify(Prompt(user=text))
    assert verdict.confidence < RULES.confidence, verdict


def test_a_persona_in_the_system_prompt_means_roleplay():
    prompt = from_messages(
        [
            {"role": "system", "content": "You are a grumpy wizard who lives in a tower. Stay in character."},
            {"role": "user", "content": "What do you think of my hat?"},
        ]
    )
    assert RULES.classify(prompt).category == "roleplay"


def test_a_plain_assistant_system_prompt_is_not_roleplay():
    prompt = from_messages(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "hello"},
        ]
    )
    assert RULES.classify(prompt).category == "general"


def test_harder_prompts_get_a_higher_difficulty():
    easy = RULES.classify(Prompt(user="hi")).difficulty
    hard = RULES.classify(
        Prompt(
            user="Prove that the algorithm's asymptotic complexity is O(n log n) "
            "without using the master theorem."
        )
    ).difficulty
    assert hard > easy


def test_scores_are_a_probability_distribution_over_the_categories():
    verdict = RULES.classify(Prompt(user="Translate this poem into Spanish."))
    assert set(verdict.scores) == set(RULES.categories)
    assert abs(sum(verdict.scores.values()) - 1.0) < 1e-9


def test_the_last_user_message_is_read_and_bounded():
    huge = "x" * 1_000_000
    prompt = from_messages(
        [
            {"role": "user", "content": "Write a poem about the sea."},
            {"role": "assistant", "content": "..."},
            {"role": "user", "content": [{"type": "text", "text": "Translate 'hello' into German. " + huge}]},
        ]
    )
    assert prompt.user.startswith("Translate 'hello'")
    assert len(prompt.user) <= HEAD_CHARS + TAIL_CHARS + 3
    assert prompt.turns == 2
    assert RULES.classify(prompt).category == "translation"


def test_odd_messages_are_skipped_not_fatal():
    prompt = from_messages([None, 7, {"role": "user"}, {"role": "user", "content": {"a": 1}}, "text"])
    assert prompt.user == ""
    assert RULES.classify(prompt).category == RULES.default


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


MINIMAL = """
version: 1
categories: [a, b]
default: a
rules:
  - {name: r1, category: b, weight: 3, words: [bee]}
difficulty:
  base: {a: 0.1, b: 0.5}
"""


def test_operators_can_write_their_own_rules(tmp_path):
    rules = RuleClassifier.load(_write(tmp_path, MINIMAL))
    assert rules.classify(Prompt(user="a bee!")).category == "b"
    assert rules.classify(Prompt(user="nothing")).category == "a"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("weight: 3", "weight: 3, colour: red"), "unknown key"),
        (("category: b", "category: c"), "unknown category"),
        (("words: [bee]", "patterns: ['(unclosed']"), "not a valid regular expression"),
        (("words: [bee]", "min_words: 2"), "at least one of"),
        (("base: {a: 0.1, b: 0.5}", "base: {a: 0.1}"), "no value for"),
        (("default: a", "default: z"), "not one of the categories"),
    ],
)
def test_a_bad_rules_file_is_rejected_with_a_message_naming_the_problem(tmp_path, change, message):
    with pytest.raises(RulesError, match=message):
        RuleClassifier.load(_write(tmp_path, MINIMAL.replace(*change)))


def test_a_missing_rules_file_is_a_clear_error(tmp_path):
    with pytest.raises(RulesError, match="cannot read"):
        RuleClassifier.load(tmp_path / "nope.yaml")


SHAPE_TEXTS = [
    "",
    "plain words only",
    "x = [1, 2]; y = {a: b} <tag> (c) _d_ \\e | f & $g #h\nA. one\nB) two\n  (c) three\nd. four",
    "Solve 3\u00d74 ÷ 2 = ? and √9 ≤ π ± 1 ≠ ∑ ∫; digits ١٢٣ and \uff13 count as digits",
    "\n\nA.\n b\n\nC) x\nnot an option: E. y\n(D. z",
    "a) x\r\nb) y\n\n\nc)\tz" * 3,
]


@pytest.mark.parametrize("text", SHAPE_TEXTS)
def test_shape_counts_what_its_expressions_count(text):
    from services.classifier import prompt as p

    measured = p.shape(text)
    size = len(text) or 1
    assert measured.digit_ratio == len(p._DIGIT.findall(text)) / size
    assert measured.code_symbol_ratio == len(p._CODE_SYMBOLS.findall(text)) / size
    assert measured.math_symbols == len(p._MATH_SYMBOLS.findall(text))
    assert measured.options == len(p._OPTION.findall(text))


def test_a_prefilter_names_what_every_match_needs():
    from services.classifier.rules import prefilter

    assert prefilter(r"\bhow (?:many|much)\b").literals[0] == ("how m",)
    assert prefilter(r"\b(?:what is|find) the x").literals == ((" the x",), ("find", "what is"))
    assert prefilter("[\u0400-\u04ff]{4,}").non_ascii
    assert prefilter("(?i)hello") == prefilter("a?b*") == prefilter("[^a]x?")  # nothing required
    assert not prefilter("(?:a|b*)c?").literals  # a branch that can match empty requires nothing


def test_every_text_a_shipped_pattern_matches_passes_its_prefilter():
    import re

    from services.classifier.rules import prefilter

    texts = [t for texts in CONFIDENT.values() for t in texts] + SHAPE_TEXTS
    texts += [t.lower() for t in texts] + ["how many apples", "what is the value of 2 + 2", "Который час"]
    checked = 0
    for rule in RULES.spec.rules + RULES.spec.difficulty.rules:
        for pattern in rule.patterns:
            needs, compiled = prefilter(pattern), re.compile(pattern)
            for text in texts:
                if compiled.search(text):
                    checked += 1
                    assert needs.admits(text), (rule.name, pattern, text)
    assert checked > 20
