"""The README's Quickstart as code blocks, found by their ``<!-- quickstart:NAME -->`` marker."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent.parent / "README.md"


def quickstart_blocks(readme: Path = README) -> dict[str, str]:
    """Each marked block's text, by name; the fence line is the one after the marker."""
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(r"<!-- quickstart:([a-z]+) -->\n```[a-z]*\n(.*?)\n```", re.S)
    return {name: body + "\n" for name, body in pattern.findall(text)}


def commands(block: str) -> list[list[str]]:
    """The shell lines of a block, split into words, comments dropped."""
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [line.split() for line in lines if line]
