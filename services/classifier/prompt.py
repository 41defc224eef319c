"""What the classifier reads of a chat request, and the structure features of that text.

Only a bounded part of a request is read, whatever its size: the system prompt's
first characters and the last user message's first and last characters. A
request's topic and difficulty are in its last question; the system prompt says
who the assistant should be (roleplay). The features here are shared by the rule
stage and the difficulty head, so training and serving compute them the same way.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

SYSTEM_CHARS = 1000
HEAD_CHARS = 3000
TAIL_CHARS = 1000
# What the embedding model reads: its cost grows with the tokens (a 256-token prompt costs
# ~15x a 20-token one), and what is asked is at the start and the end of a message.
MODEL_HEAD_CHARS = 600
MODEL_TAIL_CHARS = 300
MAX_SCANNED_MESSAGES = 64  # from the end: older turns do not change what is asked now


@dataclasses.dataclass(frozen=True, slots=True)
class Prompt:
    """The text of a request the classifier looks at."""

    user: str  # the last user message, bounded
    system: str = ""  # system / developer instructions, bounded
    turns: int = 1  # user messages in the request

    @property
    def text(self) -> str:
        """What the embedding model reads: the instructions, then the start and the end
        of the question (at most ~1,000 characters, ~200 tokens)."""
        user = self.user
        if len(user) > MODEL_HEAD_CHARS + MODEL_TAIL_CHARS:
            user = user[:MODEL_HEAD_CHARS] + " … " + user[-MODEL_TAIL_CHARS:]
        return f"{self.system[:MODEL_TAIL_CHARS]}\n\n{user}" if self.system else user


def of_text(text: str) -> Prompt:
    """The prompt of a single user message (training data, benchmarks)."""
    return Prompt(user=_bounded(text))


def _bounded(text: str) -> str:
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n…\n" + text[-TAIL_CHARS:]


def _content_text(content: Any, budget: int) -> str:
    """Text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content if len(content) <= budget else content[: budget // 2] + content[-budget // 2 :]
    if isinstance(content, list):
        parts: list[str] = []
        size = 0
        for part in content[:64]:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"][:budget])
                size += len(parts[-1])
                if size >= budget:
                    break
        return "\n".join(parts)
    return ""


def from_messages(messages: Sequence[Any]) -> Prompt:
    """The prompt of an OpenAI `messages` list; tolerant of odd items (they are skipped)."""
    user = ""
    system_parts: list[str] = []
    turns = 0
    window = messages[-MAX_SCANNED_MESSAGES:] if len(messages) > MAX_SCANNED_MESSAGES else messages
    for message in window:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "user":
            turns += 1
            user = _content_text(message.get("content"), HEAD_CHARS + TAIL_CHARS + 2)
        elif role in ("system", "developer") and sum(map(len, system_parts)) < SYSTEM_CHARS:
            system_parts.append(_content_text(message.get("content"), SYSTEM_CHARS))
    system = "\n".join(p for p in system_parts if p)[:SYSTEM_CHARS]
    return Prompt(user=_bounded(user), system=system, turns=max(turns, 1))


_DIGIT = re.compile(r"\d")
_CODE_SYMBOLS = re.compile(r"[{}\[\];=<>()_\\|&$#]")
_MATH_SYMBOLS = re.compile(r"[+\-*/^=√∑∫π≤≥≠±\u00d7÷]")
_OPTION = re.compile(r"(?m)^\s*\(?[A-Da-d][.)]\s+\S")
# For ASCII text, `shape` counts with byte deletion tables (one fast pass each) instead of
# the expressions above: the ASCII bytes that are not digits, not `_CODE_SYMBOLS`, not
# `_MATH_SYMBOLS` (whose other characters are not ASCII).
_NOT_DIGIT = bytes(b for b in range(128) if not _DIGIT.match(chr(b)))
_NOT_CODE = bytes(b for b in range(128) if not _CODE_SYMBOLS.match(chr(b)))
_NOT_MATH = bytes(b for b in range(128) if not _MATH_SYMBOLS.match(chr(b)))
_NEGATION = re.compile(r"\b(?:NOT|EXCEPT|LEAST|FALSE|INCORRECT)\b")
_ROMAN = re.compile(r"\b(?:I|II|III|IV)\b")
_CHOICE_WORDS = re.compile(r"(?i)\b(?:all of the above|none of the above|both)\b")
_SUPERLATIVE = re.compile(r"(?i)\b(?:most likely|best|strongest|primarily)\b")
_WHICH = re.compile(r"(?i)which of the following")
_OPTION_SPLIT = re.compile(r"\n\s*\(?[A-D][.)] ")

FEATURES = (
    "log_chars",
    "log_option_chars",
    "option_spread",
    "numeric_options",
    "negation",
    "statements",
    "roman",
    "digit_ratio",
    "math_symbols",
    "choice_words",
    "sentences",
    "mean_word_length",
    "ends_with_question",
    "which_of_the_following",
    "superlative",
    "options",
)
"""The difficulty head's structure features, in this order (see `features`)."""


def features(text: str) -> list[float]:
    """Structure features of a prompt for the difficulty head (`FEATURES` names them).

    Most describe a question's form rather than its topic: a long stem, answer
    options that are numbers, a negation ("which is NOT"), a "Statement 1 |
    Statement 2" or roman-numeral combination — forms that make a cheap model fail
    more often on questions of any subject.
    """
    pieces = _OPTION_SPLIT.split(text)
    question = pieces[0]
    options = [p.split("\nAnswer:")[0] for p in pieces[1:]]
    lengths = [len(o) for o in options] or [0]
    mean_len = sum(lengths) / len(lengths)
    spread = (sum((x - mean_len) ** 2 for x in lengths) / len(lengths)) ** 0.5 / (mean_len + 1)
    numeric = sum(1 for o in options if re.fullmatch(r"[-\d.,/ %$^*()a-z=]+", o.strip())) / max(
        1, len(options)
    )
    words = question.split()
    return [
        math.log1p(len(question)),
        math.log1p(mean_len),
        spread,
        numeric,
        float(bool(_NEGATION.search(question))),
        float("Statement 1" in text),
        float(bool(_ROMAN.search(text))),
        len(_DIGIT.findall(question)) / (len(question) + 1),
        float(bool(re.search(r"[=+^]", question))),
        float(bool(_CHOICE_WORDS.search(text))),
        float(question.count(".") + question.count("?")),
        (sum(len(w) for w in words) / len(words)) if words else 0.0,
        float(question.rstrip().endswith("?")),
        float(bool(_WHICH.search(question))),
        float(bool(_SUPERLATIVE.search(question))),
        float(len(options)),
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class Shape:
    """Cheap measurements the rule stage's detectors read."""

    chars: int
    lines: int
    digit_ratio: float
    code_symbol_ratio: float
    math_symbols: int
    options: int
    questions: int


def shape(text: str, chars: int | None = None) -> Shape:
    """Measurements of `text`; `chars`, when given, is the length of the whole message
    `text` is a window of (ratios are of the window).

    The counts are those of the regular expressions above; for ASCII text (most prompts)
    they are computed with byte deletion tables, several times faster than a regex scan."""
    size = len(text) or 1
    if text.isascii():
        raw = text.encode("ascii")
        digits = len(raw.translate(None, _NOT_DIGIT))
        code = len(raw.translate(None, _NOT_CODE))
        maths = len(raw.translate(None, _NOT_MATH))
    else:
        digits = len(_DIGIT.findall(text))
        code = len(_CODE_SYMBOLS.findall(text))
        maths = len(_MATH_SYMBOLS.findall(text))
    return Shape(
        chars=len(text) if chars is None else chars,
        lines=text.count("\n") + 1,
        digit_ratio=digits / size,
        code_symbol_ratio=code / size,
        math_symbols=maths,
        options=_options(text),
        questions=text.count("?"),
    )


def _options(text: str) -> int:
    """`len(_OPTION.findall(text))`: the pattern can only start at a line start, so it is
    tried there alone (after the end of the previous match, as `findall` does)."""
    if "." not in text and ")" not in text:  # every match holds one of them
        return 0
    count = end = start = 0
    while True:
        if start >= end:
            match = _OPTION.match(text, start)
            if match is not None:
                count += 1
                end = match.end()
        start = text.find("\n", start) + 1
        if not start:
            return count
