"""The labelled prompts the heads learn from, read from the files this repository ships.

Sources (`data/`, licences beside each; see docs/classifier.md):
- `public/gsm8k` (MIT): grade-school math word problems → math;
- `public/gpteacher` (MIT): code instructions → code, roleplay instructions → roleplay;
- `public/routellm` (Apache-2.0): MMLU questions with whether a cheap model
  (Mixtral-8x7B) and a strong one (GPT-4) answered them correctly → the difficulty head;
  also, by subject, category examples (maths subjects → math, logic → reasoning,
  computer science → code, the rest → general knowledge);
- `written/prompts.yaml` (this project): templates for every category, filled by a
  seeded generator.

Rows listed in `data/exclude.json` are skipped (they overlap evaluation data kept
outside the repository). Everything here is deterministic: the same files give the
same examples, split and order.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import yaml

DATA = Path(__file__).with_name("data")
MMLU_DIR = "public/routellm/routellm/evals/mmlu/responses"
WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
HELD_OUT = 0.2  # share of groups in the held-out split
PER_SOURCE_CAP = 800  # examples per (source, category), so no single source dominates a category

MMLU_CATEGORY = {
    "abstract_algebra": "math",
    "college_mathematics": "math",
    "formal_logic": "reasoning",
    "logical_fallacies": "reasoning",
    "high_school_computer_science": "code",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Example:
    text: str
    category: str
    source: str
    group: str  # examples of one group are always on the same side of the split

    @property
    def held_out(self) -> bool:
        digest = hashlib.sha256(self.group.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < HELD_OUT


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """One MMLU question and whether each model answered it correctly."""

    subject: str
    text: str
    weak_correct: bool
    strong_correct: bool


def _excluded(data: Path) -> dict[str, set[int]]:
    raw = json.loads((data / "exclude.json").read_text(encoding="utf-8"))
    return {k: set(v["skip"]) for k, v in raw.items() if isinstance(v, dict)}


def outcomes(data: Path = DATA) -> list[Outcome]:
    """The MMLU rows (29 subjects), minus the excluded ones, in file order."""
    skip = _excluded(data)
    rows: list[Outcome] = []
    for path in sorted((data / MMLU_DIR).glob("mmlu_*.csv")):
        rel = f"{MMLU_DIR}/{path.name}"
        subject = path.stem.removeprefix("mmlu_")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for index, row in enumerate(reader):
                if index in skip.get(rel, ()):
                    continue
                rows.append(Outcome(subject, row["prompt"], row[WEAK] == "True", row[STRONG] == "True"))
    return rows


def _capped(examples: list[Example], seed: str) -> list[Example]:
    if len(examples) <= PER_SOURCE_CAP:
        return examples
    return random.Random(seed).sample(examples, PER_SOURCE_CAP)


def _gsm8k(data: Path) -> list[Example]:
    path = data / "public/gsm8k/grade_school_math/data/train.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    out = [
        Example(json.loads(line)["question"], "math", "gsm8k", f"gsm8k:{i}") for i, line in enumerate(lines)
    ]
    return _capped(out, "gsm8k")


def _gpteacher(data: Path, name: str, category: str) -> list[Example]:
    rel = {
        "code": "public/gpteacher/Codegen/codegen-instruct.json",
        "roleplay": "public/gpteacher/Roleplay/roleplay-simple-deduped-roleplay-instruct.json",
    }[category]
    skip = _excluded(data).get(rel, set())
    items = json.loads((data / rel).read_text(encoding="utf-8"))
    out = []
    for i, item in enumerate(items):
        if i in skip:
            continue
        text = item["instruction"].strip()
        if item.get("input", "").strip():
            text += "\n\n" + item["input"].strip()
        out.append(Example(text, category, name, f"{name}:{i}"))
    return _capped(out, name)


def _mmlu(data: Path) -> list[Example]:
    by_category: dict[str, list[Example]] = {}
    for i, row in enumerate(outcomes(data)):
        category = MMLU_CATEGORY.get(row.subject, "general")
        by_category.setdefault(category, []).append(Example(row.text, category, "mmlu", f"mmlu:{i}"))
    return [e for cat, items in sorted(by_category.items()) for e in _capped(items, f"mmlu-{cat}")]


_SLOT = re.compile(r"\{(\w+)\}")


def _written(data: Path) -> list[Example]:
    spec = yaml.safe_load((data / "written/prompts.yaml").read_text(encoding="utf-8"))
    per = int(spec["per_template"])
    out: list[Example] = []
    for category, block in spec["categories"].items():
        slots = block.get("slots", {})
        for t, template in enumerate(block.get("templates", [])):
            rng = random.Random(f"{category}:{t}")
            seen: set[str] = set()
            for _ in range(per * 4):
                text = _fill(template, slots, rng)
                if text not in seen:
                    seen.add(text)
                    out.append(Example(text, category, "written", f"written:{category}:{t}"))
                if len(seen) == per:
                    break
        for p, text in enumerate(block.get("prompts", [])):
            out.append(Example(text, category, "written", f"written:{category}:p{p}"))
    return out


def examples(data: Path = DATA) -> list[Example]:
    """Every labelled example, deduplicated by text (first source wins)."""
    seen: set[str] = set()
    out = []
    sources = (
        _gsm8k(data),
        _gpteacher(data, "gpteacher-code", "code"),
        _gpteacher(data, "gpteacher-roleplay", "roleplay"),
        _mmlu(data),
        _written(data),
    )
    for example in (e for source in sources for e in source):
        if example.text not in seen:
            seen.add(example.text)
            out.append(example)
    return out


def split(items: list[Example]) -> tuple[list[Example], list[Example]]:
    """(train, held out), by group."""
    train = [e for e in items if not e.held_out]
    return train, [e for e in items if e.held_out]


def holdout(data: Path = DATA) -> Iterator[Example]:
    """The independent hand-written evaluation prompts (`written/holdout.yaml`)."""
    spec = yaml.safe_load((data / "written/holdout.yaml").read_text(encoding="utf-8"))
    for category, prompts in spec.items():
        for i, text in enumerate(prompts):
            yield Example(text, category, "holdout", f"holdout:{category}:{i}")


def _fill(template: str, slots: dict[str, list[str]], rng: random.Random) -> str:
    """The template with each `{slot}` replaced by one of its values, drawn from `rng`."""

    def choose(match: re.Match[str]) -> str:
        return rng.choice(slots[match.group(1)])

    return _SLOT.sub(choose, template)
