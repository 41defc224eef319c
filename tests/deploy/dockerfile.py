"""Read a Dockerfile into instructions, and decide what `.dockerignore` keeps out of the
build context, closely enough for our own two files."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from pathlib import Path, PurePosixPath


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON-array form (`["a", "b"]`); a shell-form instruction is an error here."""
        value = json.loads(self.arguments)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"{self.keyword} is not in exec form: {self.arguments}")
        return value


def parse(path: Path) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # comments may sit inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(arguments.split())))
        pending = ""
    if pending:
        raise ValueError(f"{path}: ends inside a continued instruction")
    return instructions


class DockerIgnore:
    """`.dockerignore` patterns; the last one that matches a path or one of its parents wins."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, str]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = line.lstrip("!").strip("/")
            self.rules.append((keep, pattern))

    @staticmethod
    def _matches(pattern: str, path: PurePosixPath) -> bool:
        candidates = [path, *[p for p in path.parents if str(p) != "."]]
        for candidate in candidates:
            text = str(candidate)
            if fnmatch.fnmatchcase(text, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(candidate.name, pattern[3:]):
                return True
        return False

    def excludes(self, path: str) -> bool:
        excluded = False
        for keep, pattern in self.rules:
            if self._matches(pattern, PurePosixPath(path)):
                excluded = not keep
        return excluded
