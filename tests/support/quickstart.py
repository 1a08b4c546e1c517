"""The tutorial's code blocks (docs/tutorial.md), found by their ``<!-- quickstart:NAME -->`` marker."""

from __future__ import annotations

import re
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parent.parent.parent / "docs" / "tutorial.md"


def quickstart_blocks(page: Path = TUTORIAL) -> dict[str, str]:
    """Each marked block's text, by name; the fence line is the one after the marker."""
    text = page.read_text(encoding="utf-8")
    pattern = re.compile(r"<!-- quickstart:([a-z]+) -->\n```[a-z]*\n(.*?)\n```", re.S)
    return {name: body + "\n" for name, body in pattern.findall(text)}


def commands(block: str) -> list[list[str]]:
    """The shell lines of a block, split into words, comments dropped."""
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [line.split() for line in lines if line]
