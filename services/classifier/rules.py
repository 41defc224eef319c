"""The rule stage: readable, data-driven rules from one YAML file (`rules.yaml`).

Each rule adds evidence (its `weight`, in log-odds units) to one category when its
matchers hold; the category probabilities are a softmax over the summed evidence,
with the default category starting at `prior`. The rule stage answers alone when the
top probability reaches `confidence`; below that the ML stage decides (when loaded).
The difficulty is a base per category plus the `add` of every difficulty rule that
holds, clipped to [0, 1].

A rule's matchers (all that are present must hold; within one list, any item):
`words` (whole words, case-insensitive; `min_words` distinct ones), `phrases`
(case-insensitive substrings), `starts` (how the message begins, case-insensitive),
`patterns` (regular expressions, matched against the lower-cased text unless the rule
says `case_sensitive: true`: case-insensitive matching is 2-3x slower in Python), `shape`
(bounds on measured features), and `in` (the user message, the system prompt, or both).

Everything is compiled once at load. The rules read the first `WINDOW_HEAD` and the last
`WINDOW_TAIL` characters of the message (what is asked is at its start or its end; the
length features still see the whole message), so a prompt costs tens of microseconds
whatever its size.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.classifier.prompt import Prompt, Shape, shape
from services.kernel.config import ConfigError

DEFAULT_RULES = Path(__file__).with_name("rules.yaml")
_WORD = re.compile(r"[a-z0-9_+#']+")
# `_WORD.findall` for ASCII text, several times faster: every ASCII character the pattern
# does not take becomes a space, then `str.split`.
_NOT_WORD = {c: " " for c in range(128) if not _WORD.match(chr(c))}
_ESCAPE = re.compile(r"\\(?:u[0-9A-Fa-f]{4}|x[0-9A-Fa-f]{2}|N\{[^}]*\}|.)")  # \S, \u04FF, ...
WINDOW_HEAD = 400
WINDOW_TAIL = 200
_NAME = r"^[a-z][a-z0-9_\-]{0,63}$"


class RulesError(ConfigError):
    """The rules file is missing, unreadable or invalid (the message names the field)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShapeBounds(_Strict):
    chars_min: int | None = Field(default=None, ge=0)
    chars_max: int | None = Field(default=None, ge=0)
    lines_min: int | None = Field(default=None, ge=0)
    digit_ratio_min: float | None = Field(default=None, ge=0, le=1)
    code_symbol_ratio_min: float | None = Field(default=None, ge=0, le=1)
    math_symbols_min: int | None = Field(default=None, ge=0)
    options_min: int | None = Field(default=None, ge=0)
    questions_min: int | None = Field(default=None, ge=0)


class Matchers(_Strict):
    words: tuple[str, ...] = ()
    min_words: int = Field(default=1, ge=1, le=20)
    phrases: tuple[str, ...] = ()
    starts: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    case_sensitive: bool = False
    shape: ShapeBounds | None = None
    in_: Literal["user", "system", "any"] = Field(default="user", alias="in")

    @model_validator(mode="after")
    def _something(self) -> Matchers:
        if not (self.words or self.phrases or self.starts or self.patterns or self.shape):
            raise ValueError("a rule needs at least one of words, phrases, starts, patterns, shape")
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
            literal = _ESCAPE.sub("", pattern.replace("(?i)", ""))
            if not self.case_sensitive and any(c.isupper() for c in literal):
                raise ValueError(
                    f"pattern {pattern!r} has upper-case letters but is matched against the lower-cased "
                    "text: write it in lower case, or set case_sensitive: true"
                )
        return self


class CategoryRule(Matchers):
    name: str = Field(pattern=_NAME)
    category: str
    weight: float = Field(ge=-20, le=20)


class DifficultyRule(Matchers):
    name: str = Field(pattern=_NAME)
    add: float = Field(ge=-1, le=1)
    categories: tuple[str, ...] = ()  # only for these categories (all when empty)


class DifficultySpec(_Strict):
    base: dict[str, float]
    rules: tuple[DifficultyRule, ...] = ()


class RulesFile(_Strict):
    version: Literal[1]
    categories: tuple[str, ...] = Field(min_length=2)
    default: str
    prior: float = Field(default=1.0, ge=0, le=20)
    confidence: float = Field(default=0.75, gt=0, le=1)
    rules: tuple[CategoryRule, ...]
    difficulty: DifficultySpec

    @model_validator(mode="after")
    def _known_categories(self) -> RulesFile:
        known = set(self.categories)
        for name in self.categories:
            if not re.match(_NAME, name):
                raise ValueError(f"category {name!r}: use lower-case letters, digits, '_' or '-'")
        if self.default not in known:
            raise ValueError(f"default {self.default!r} is not one of the categories")
        for rule in self.rules:
            if rule.category not in known:
                raise ValueError(f"rule {rule.name!r}: unknown category {rule.category!r}")
        missing = known - set(self.difficulty.base)
        if missing:
            raise ValueError(f"difficulty.base has no value for {sorted(missing)}")
        for name, value in self.difficulty.base.items():
            if name not in known or not 0 <= value <= 1:
                raise ValueError(f"difficulty.base.{name}: unknown category or not in [0, 1]")
        for hard in self.difficulty.rules:
            unknown = set(hard.categories) - known
            if unknown:
                raise ValueError(f"difficulty rule {hard.name!r}: unknown categories {sorted(unknown)}")
        names = [r.name for r in self.rules] + [r.name for r in self.difficulty.rules]
        duplicated = {n for n in names if names.count(n) > 1}
        if duplicated:
            raise ValueError(f"rule names must be unique: {sorted(duplicated)}")
        return self


@dataclasses.dataclass(slots=True)
class _Text:
    """One prompt, prepared once for all rules."""

    user: str
    system: str
    user_lower: str
    system_lower: str
    shape: Shape
    _user_words: frozenset[str] | None = None
    _system_words: frozenset[str] | None = None

    def words(self, where: str) -> frozenset[str]:
        if where != "system" and self._user_words is None:
            self._user_words = _words(self.user_lower)
        if where != "user" and self._system_words is None:
            self._system_words = _words(self.system_lower)
        if where == "user":
            return self._user_words  # type: ignore[return-value]
        if where == "system":
            return self._system_words  # type: ignore[return-value]
        return self._user_words | self._system_words  # type: ignore[operator]


def _words(text: str) -> frozenset[str]:
    if text.isascii():
        return frozenset(text.translate(_NOT_WORD).split())
    return frozenset(_WORD.findall(text))


def _window(text: str) -> str:
    if len(text) <= WINDOW_HEAD + WINDOW_TAIL:
        return text
    return text[:WINDOW_HEAD] + "\n" + text[-WINDOW_TAIL:]


def _prepare(prompt: Prompt) -> _Text:
    user = _window(prompt.user)
    system = prompt.system[:WINDOW_TAIL]
    return _Text(user, system, user.lower(), system.lower(), shape(user, chars=len(prompt.user)))


class _Compiled:
    """A rule's matchers, compiled."""

    def __init__(self, spec: Matchers) -> None:
        self.where = spec.in_
        self.words = frozenset(w.lower() for w in spec.words)
        self.min_words = spec.min_words
        self.phrases = tuple(p.lower() for p in spec.phrases)
        self.starts = tuple(s.lower() for s in spec.starts)
        # each with what a text must hold for it to match, tested before the search
        self.patterns = tuple((prefilter(p), re.compile(p)) for p in spec.patterns)
        self.case_sensitive = spec.case_sensitive
        self.shape = spec.shape

    def _lower(self, text: _Text) -> str:
        if self.where == "user":
            return text.user_lower
        if self.where == "system":
            return text.system_lower
        return text.system_lower + "\n" + text.user_lower

    def matches(self, text: _Text) -> bool:
        if self.shape is not None and not _within(text.shape, self.shape):
            return False
        if self.starts and not self._lower(text).lstrip().startswith(self.starts):
            return False
        if self.phrases:
            lower = self._lower(text)
            for phrase in self.phrases:
                if phrase in lower:
                    break
            else:
                return False
        if self.words:
            found = self.words & text.words(self.where)
            if len(found) < self.min_words:
                return False
        if self.patterns:
            if not self.case_sensitive:
                raw = self._lower(text)
            elif self.where == "user":
                raw = text.user
            elif self.where == "system":
                raw = text.system
            else:
                raw = text.system + "\n" + text.user
            for needs, pattern in self.patterns:
                if needs.admits(raw) and pattern.search(raw):
                    break
            else:
                return False
        return True


_sre: Any = importlib.import_module("re._parser")  # the `re` module's own pattern parser
_sre_constants: Any = importlib.import_module("re._constants")


@dataclasses.dataclass(frozen=True, slots=True)
class Prefilter:
    """Necessary conditions for a pattern to match, much cheaper to test than a search: the
    text holds one string of each of `literals`; `non_ascii`: it is not pure ASCII."""

    literals: tuple[tuple[str, ...], ...] = ()
    non_ascii: bool = False

    def admits(self, text: str) -> bool:
        if self.non_ascii and text.isascii():
            return False
        for alternatives in self.literals:  # loops, not any()/all(): no generator per call
            for literal in alternatives:
                if literal in text:
                    break
            else:
                return False
        return True


def prefilter(pattern: str, most: int = 2) -> Prefilter:
    """What every match of `pattern` must contain, read from the parsed pattern: runs of
    literal characters, alternations whose every branch requires something, groups,
    repeats of at least one, small classes of literal characters, classes of non-ASCII
    characters alone. At most `most` literal conditions, the most selective (longest
    strings, then fewest). Case-insensitive patterns and groups with their own
    flags are not analysed: an empty `Prefilter` admits every text."""
    try:
        parsed = _sre.parse(pattern)
    except Exception:  # an invalid pattern: the validation rejects it
        return Prefilter()
    if parsed.state.flags & (re.IGNORECASE | re.VERBOSE):
        return Prefilter()
    found = _requirements(list(parsed))
    sets = sorted((r for r in found if isinstance(r, frozenset)), key=_selectivity, reverse=True)
    return Prefilter(tuple(tuple(sorted(r)) for r in sets[:most]), non_ascii=_NON_ASCII in found)


_NON_ASCII = "non-ascii"  # a requirement: a character outside ASCII


def _requirements(items: list[tuple[Any, Any]]) -> list[frozenset[str] | str]:
    """Each element is required of every match of the sequence `items`: a set of strings
    (one of them), or `_NON_ASCII`."""
    c = _sre_constants
    found: list[frozenset[str] | str] = []
    run: list[str] = []
    for op, arg in [*items, (None, None)]:
        if op is c.LITERAL:
            run.append(chr(arg))
            continue
        if run:
            found.append(frozenset(["".join(run)]))
            run = []
        inner: list[frozenset[str] | str] = []
        if op is c.SUBPATTERN:
            _, add_flags, del_flags, body = arg
            if not add_flags and not del_flags:
                inner = _requirements(list(body))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            low, _, body = arg
            if low >= 1:
                inner = _requirements(list(body))
        elif op is c.BRANCH:
            branches = [_best(_requirements(list(b))) for b in arg[1]]
            if all(b is not None for b in branches):
                found.append(frozenset().union(*(b for b in branches if b is not None)))
        elif op is c.IN:
            if len(arg) <= 8 and all(o is c.LITERAL for o, _ in arg):
                found.append(frozenset(chr(a) for _, a in arg))
            elif all((o is c.LITERAL and a >= 128) or (o is c.RANGE and a[0] >= 128) for o, a in arg):
                found.append(_NON_ASCII)
        found.extend(inner)
    return found


def _best(found: list[frozenset[str] | str]) -> frozenset[str] | None:
    sets = [r for r in found if isinstance(r, frozenset)]
    return max(sets, key=_selectivity) if sets else None


def _selectivity(literals: frozenset[str]) -> tuple[int, int]:
    """Longer strings are rarer; fewer of them cost fewer substring tests."""
    return min(map(len, literals)), -len(literals)


def _within(s: Shape, b: ShapeBounds) -> bool:
    return not (
        (b.chars_min is not None and s.chars < b.chars_min)
        or (b.chars_max is not None and s.chars > b.chars_max)
        or (b.lines_min is not None and s.lines < b.lines_min)
        or (b.digit_ratio_min is not None and s.digit_ratio < b.digit_ratio_min)
        or (b.code_symbol_ratio_min is not None and s.code_symbol_ratio < b.code_symbol_ratio_min)
        or (b.math_symbols_min is not None and s.math_symbols < b.math_symbols_min)
        or (b.options_min is not None and s.options < b.options_min)
        or (b.questions_min is not None and s.questions < b.questions_min)
    )


@dataclasses.dataclass(frozen=True, slots=True)
class RuleVerdict:
    """What the rule stage concluded about one prompt."""

    category: str
    confidence: float
    difficulty: float
    scores: Mapping[str, float]  # category → probability
    fired: tuple[str, ...]  # names of the category rules that held
    seconds: float


class RuleClassifier:
    """The compiled rules file. Pure CPU, no I/O after loading: safe on the event loop."""

    def __init__(self, spec: RulesFile, source: str = "rules") -> None:
        self.spec = spec
        self.source = source
        self.categories = spec.categories
        self.default = spec.default
        self.confidence = spec.confidence
        self._rules = [(r.name, r.category, r.weight, _Compiled(r)) for r in spec.rules]
        self._difficulty = [
            (r.name, r.add, frozenset(r.categories), _Compiled(r)) for r in spec.difficulty.rules
        ]
        self._base = dict(spec.difficulty.base)

    @classmethod
    def load(cls, path: Path | None = None) -> RuleClassifier:
        """Read and validate a rules file (the shipped one by default); raise RulesError."""
        path = path or DEFAULT_RULES
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise RulesError(f"{path}: cannot read the rules file: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise RulesError(f"{path}: not valid YAML: {exc}") from None
        try:
            spec = RulesFile.model_validate(raw)
        except ValidationError as exc:
            lines = [
                f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
                + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
                for e in exc.errors()
            ]
            raise RulesError(f"{path}: invalid rules:\n" + "\n".join(lines)) from None
        return cls(spec, source=str(path))

    def classify(self, prompt: Prompt) -> RuleVerdict:
        started = time.perf_counter()
        text = _prepare(prompt)
        evidence = dict.fromkeys(self.categories, 0.0)
        evidence[self.default] = self.spec.prior
        fired = []
        for name, category, weight, compiled in self._rules:
            if compiled.matches(text):
                evidence[category] += weight
                fired.append(name)
        top = max(evidence.values())
        exp = {c: math.exp(v - top) for c, v in evidence.items()}
        total = sum(exp.values())
        scores = {c: v / total for c, v in exp.items()}
        category = max(scores, key=scores.__getitem__)
        difficulty = self.difficulty(text, category)
        return RuleVerdict(
            category, scores[category], difficulty, scores, tuple(fired), time.perf_counter() - started
        )

    def difficulty(self, text: _Text, category: str) -> float:
        value = self._base.get(category, 0.5)
        for _, add, only, compiled in self._difficulty:
            if (not only or category in only) and compiled.matches(text):
                value += add
        return min(1.0, max(0.0, value))

    def difficulty_of(self, prompt: Prompt, category: str) -> float:
        """The rules' difficulty for `prompt` taken as `category` (when the model chose it)."""
        text = _prepare(prompt)
        return self.difficulty(text, category)
