"""The second look at a semantic candidate: is the cached prompt asking the same thing?

Cosine similarity of sentence embeddings ranks candidates well but cannot tell
"How do I delete a branch?" from "How do I create a branch?", or "in 2019" from "in
2020": such pairs sit as close as true paraphrases. Two stages follow the cosine:

1. rules that reject outright: the numbers, the negations, or the names (capitalised
   words, quoted strings, code-like tokens) of the two texts differ, the same words
   stand the other way round ("miles to kilometers" / "kilometers to miles"), or a
   word is swapped for its opposite ("before" / "after", "install" / "uninstall");
2. a learned check: logistic regression over the cosine and lexical features of the
   pair (word overlap both ways, words only one side has, bigram overlap, length
   ratio), trained by `python -m services.cache.calibrate` on labelled pairs, its
   weights and threshold shipped in `verifier.json`.

Each stage can be turned off in the configuration; `evaluate.py` measures each.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

WEIGHTS = Path(__file__).with_name("verifier.json")

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+(?:[.,:/]\d+)*")
_NAME = re.compile(
    r"\"[^\"]{1,80}\"|'[^']{1,80}'|`[^`]{1,80}`"  # quoted
    r"|\b[\w.-]+@[\w.-]+\b|\bhttps?://\S+"  # addresses
    r"|\b\w+(?:[._/]\w+)+\b|\b[a-z]+[A-Z]\w*\b"  # code-like: snake_case, dotted.names, camelCase
)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_ROMAN = re.compile(r"^(?:X{0,3})(?:IX|IV|V?I{0,3})$")
_ROMAN_VALUES = {"I": 1, "V": 5, "X": 10}


def _roman(token: str) -> str:
    total = 0
    for i, ch in enumerate(token):
        value = _ROMAN_VALUES[ch]
        total += -value if i + 1 < len(token) and _ROMAN_VALUES[token[i + 1]] > value else value
    return str(total)


NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "nowhere", "without", "cannot"}
)
_COUNTING = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
)
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(_COUNTING.split())} | {
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "hundred": "100",
    "thousand": "1000",
    "million": "1e6",
}
_STOPWORDS = """a an the and or but if then else of to in on at by for with from into onto over under about
    as is are was were be been being am do does did doing have has had having i me my mine we us our you
    your he him his she her it its they them their this that these those there here what which who whom
    whose can could would should will shall may might must so than too very just also only such some any
    each every all both few more most other own same up down out off again further once s t ll d ve re m
    o y please tell explain give show let get how why when where whether"""
STOPWORDS = frozenset(_STOPWORDS.split())
# Words whose swap for the other turns a question around.
_OPPOSITES = """before after|above below|over under|increase decrease|more less|min max|minimum maximum
    first last|best worst|largest smallest|biggest smallest|highest lowest|longest shortest|most least
    install uninstall|add remove|enable disable|encrypt decrypt|upload download|import export|buy sell
    open close|start stop|push pull|win lose|true false|yes no|old new|oldest newest|hot cold|fast slow
    input output|read write|send receive|left right|north south|east west|up down|in out|on off
    include exclude|allow deny|accept reject|compress decompress|encode decode|serialize deserialize
    lock unlock|mount unmount|show hide|create delete|create destroy|male female|men women|boy girl"""
_PAIRS = [tuple(pair.split()) for pair in re.split(r"[|\n]", _OPPOSITES) if pair.strip()]
OPPOSITES = frozenset(_PAIRS) | frozenset((b, a) for a, b in _PAIRS)
DIRECTIONS = frozenset({"to", "into", "from", "than", "vs", "versus"})
FEATURES = (
    "cosine",
    "jaccard",
    "cover_min",
    "cover_max",
    "unmatched",
    "bigram_jaccard",
    "length_ratio",
    "cosine_x_cover_min",
    "names_one_side",
)


def _stem(word: str) -> str:
    # Enough to match "answers"/"answer", "deleted"/"delete", "running"/"run" for overlap.
    for suffix in ("'s", "ing", "ed", "es", "s", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


@dataclasses.dataclass(frozen=True, slots=True)
class Parsed:
    """What the checks read of one text, computed once per text."""

    words: tuple[str, ...]  # lower-case
    content: frozenset[str]  # stemmed, no stopwords
    bigrams: frozenset[tuple[str, str]]
    numbers: frozenset[str]
    negations: int
    names: frozenset[str]
    directed: frozenset[tuple[str, str]]  # (word before, word after) around "to", "into", ...


def _number(token: str) -> str:
    text = token.replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return token
    return f"{value:g}"


@lru_cache(maxsize=4096)
def parse(text: str) -> Parsed:
    tokens = _WORD.findall(text)
    words = tuple(t.lower() for t in tokens)
    numbers = {_number(t) for t in _NUMBER.findall(text)}
    numbers |= {_NUMBER_WORDS[w] for w in words if w in _NUMBER_WORDS}
    negations = sum(1 for w in words if w in NEGATIONS or w.endswith("n't"))
    # Roman numerals after a name ("World War II", "Henry VIII", "Part I") are numbers too;
    # a lone "I" elsewhere is the pronoun.
    for i, token in enumerate(tokens[1:], 1):
        if token and _ROMAN.match(token) and (token != "I" or (i > 1 and tokens[i - 1][0].isupper())):
            numbers.add(_roman(token))
    names = {m.strip("\"'`").lower() for m in _NAME.findall(text)}
    # Capitalised words inside a sentence are names ("Paris", "Postgres"); the first word
    # of a sentence is capitalised anyway.
    sentence_start = True
    for token in tokens:
        if token[0].isupper() and not sentence_start and token.lower() not in STOPWORDS:
            names.add(token.lower())
        sentence_start = False
    for sentence in re.split(r"[.!?]\s+", text)[1:]:
        first = _WORD.match(sentence)
        if first is not None:
            names.discard(first.group(0).lower())
    content = frozenset(_stem(w) for w in words if w not in STOPWORDS)
    stems = [_stem(w) for w in words]
    bigrams = frozenset(itertools.pairwise(stems))
    directed = set()
    for i, w in enumerate(words):
        if w in DIRECTIONS:
            before = next((_stem(x) for x in reversed(words[:i]) if x not in STOPWORDS), None)
            after = next((_stem(x) for x in words[i + 1 :] if x not in STOPWORDS), None)
            if before and after:
                directed.add((before, after))
    return Parsed(
        words, content, bigrams, frozenset(numbers), negations, frozenset(names), frozenset(directed)
    )


def rule_conflict(a: Parsed, b: Parsed) -> str | None:
    """Why two texts cannot be asking the same thing, or None."""
    if a.numbers != b.numbers:
        return "numbers"
    if (a.negations > 0) != (b.negations > 0) or a.negations % 2 != b.negations % 2:
        return "negation"
    if (a.names - b.names) and (b.names - a.names):
        return "names"  # one name swapped for another; a name only one side has is weighed below
    # "miles to kilometers" against "kilometers to miles": the same words, the other way round.
    if any((y, x) in b.directed for x, y in a.directed if x != y):
        return "direction"
    only_a, only_b = set(a.words) - set(b.words), set(b.words) - set(a.words)
    if any((x, y) in OPPOSITES for x in only_a for y in only_b):
        return "opposites"
    return None


def features(a: Parsed, b: Parsed, cosine: float) -> list[float]:
    """The learned check's inputs, symmetric in a and b (order of `FEATURES`)."""
    union = a.content | b.content
    shared = a.content & b.content
    cover_a = len(shared) / len(a.content) if a.content else 1.0
    cover_b = len(shared) / len(b.content) if b.content else 1.0
    bigram_union = a.bigrams | b.bigrams
    lengths = (len(a.words), len(b.words))
    cover_min = min(cover_a, cover_b)
    return [
        cosine,
        len(shared) / len(union) if union else 1.0,
        cover_min,
        max(cover_a, cover_b),
        math.log1p(len(union) - len(shared)),
        len(a.bigrams & b.bigrams) / len(bigram_union) if bigram_union else 1.0,
        min(lengths) / max(lengths) if max(lengths) else 1.0,
        cosine * cover_min,
        float(len(a.names ^ b.names)),
    ]


@dataclasses.dataclass(frozen=True)
class Model:
    """Logistic regression over standardised `FEATURES`."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    threshold: float  # accept when the probability is at least this
    floor: float  # candidates below this cosine are never considered

    def probability(self, rows: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        x = (np.asarray(rows, dtype=np.float64) - self.mean) / self.scale
        out: np.ndarray = 1.0 / (1.0 + np.exp(-(x @ self.coef + self.intercept)))
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "features": list(FEATURES),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "threshold": self.threshold,
            "floor": self.floor,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Model:
        if list(data["features"]) != list(FEATURES):  # type: ignore[call-overload]
            raise ValueError(f"{WEIGHTS.name} was trained on other features; run services.cache.calibrate")
        return cls(
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["scale"], dtype=np.float64),
            np.asarray(data["coef"], dtype=np.float64),
            float(data["intercept"]),  # type: ignore[arg-type]
            float(data["threshold"]),  # type: ignore[arg-type]
            float(data["floor"]),  # type: ignore[arg-type]
        )

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> Model:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    stage: str  # "cosine" (below the floor), "rules:<why>", "model", or "accepted"
    score: float  # the model's probability (or the cosine when no model ran)


class Verifier:
    """Decides whether a candidate found by cosine may answer the query."""

    def __init__(
        self, model: Model | None, *, rules: bool = True, threshold: float | None = None, floor: float
    ) -> None:
        self.model = model
        self.rules = rules
        self.threshold = threshold if threshold is not None else (model.threshold if model else 1.0)
        self.floor = floor

    def check(self, query: str, cached: str, cosine: float) -> Verdict:
        if cosine < self.floor:
            return Verdict(False, "cosine", cosine)
        a, b = parse(query), parse(cached)
        if self.rules and (why := rule_conflict(a, b)) is not None:
            return Verdict(False, f"rules:{why}", cosine)
        if self.model is None:
            return Verdict(
                cosine >= self.threshold, "accepted" if cosine >= self.threshold else "cosine", cosine
            )
        p = float(self.model.probability([features(a, b, cosine)])[0])
        return Verdict(p >= self.threshold, "accepted" if p >= self.threshold else "model", p)


def build(mode: str, *, threshold: float | None, floor: float | None, path: Path = WEIGHTS) -> Verifier:
    """The verifier a configuration asks for; unset numbers take the calibrated defaults
    in `verifier.json` (chosen by `calibrate.py` from measured precision)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if mode == "model":
        model = Model.from_json(data)
        return Verifier(
            model, rules=True, threshold=threshold, floor=floor if floor is not None else model.floor
        )
    key = "rules_cosine_threshold" if mode == "rules" else "cosine_threshold"
    cut = threshold if threshold is not None else float(data[key])
    return Verifier(
        None, rules=mode == "rules", threshold=cut, floor=min(floor if floor is not None else cut, cut)
    )
