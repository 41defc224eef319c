"""A deterministic approximate tokenizer for providers that report no usage.

Words, numbers and single punctuation marks count as one token each, which is
close to BPE counts for English text. Real providers report their own counts.
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_text(text: str) -> int:
    return len(_TOKEN.findall(text))


def count_content(content: Any) -> int:
    if isinstance(content, str):
        return count_text(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += count_text(part["text"])
        return total
    return 0


def count_messages(messages: list[dict[str, Any]]) -> int:
    """Per-message overhead of 3 plus 3 for the reply primer, like OpenAI's chat format."""
    return sum(3 + count_content(m.get("content")) for m in messages) + 3
