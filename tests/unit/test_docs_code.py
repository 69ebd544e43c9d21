"""The documentation's code blocks: every Python block runs, every `leveret` command exists.

README.md and docs/*.md are read for fenced code blocks. A ```python block runs in a fresh
interpreter (top-level ``await`` allowed), from an empty directory, unless the line before its
fence is ``<!-- illustrative -->``: a fragment that cannot run alone. A ```bash block, and each
``$ `` line of a block of another language, is not run, but every ``leveret`` command in it must
name a command (and action) of the CLI's parser, with options that command has.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from framework.cli import _parser

ROOT = Path(__file__).resolve().parent.parent.parent
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
ILLUSTRATIVE = "<!-- illustrative -->"

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
# `leveret SUB [ACTION] ...` where a shell would run it: at the start of a line or a command,
# or through a path (.venv/bin/leveret); not `'leveret[otel]'` nor `--contenders leveret,x`.
_COMMAND = re.compile(r"(?:^|(?<=[\s;&|(/]))leveret\s+(.+)")
# Where the command ends: a pipe, `&&`, `;` or a comment.
_COMMAND_END = re.compile(r"\s(?:\|\|?|&&)\s|;|\s#")
# Runs a block from stdin: compiled under the page's name and line numbers, so that a traceback
# points into the page; a block with a top-level `await` runs in an event loop.
_RUNNER = """\
import ast, asyncio, inspect, sys
name, first = sys.argv[1], int(sys.argv[2])
code = compile("\\n" * first + sys.stdin.read(), name, "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if inspect.iscoroutine(result):
    asyncio.run(result)
"""


@dataclass(frozen=True)
class Block:
    """A fenced code block of a page: its language, its text and where it starts."""

    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    illustrative: bool

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``, their indentation (inside a list item) removed."""
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        before = [line.strip() for line in lines[:i] if line.strip()]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and not lines[j].strip().strip(fence[0])
        ):
            line = lines[j]
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
            j += 1
        found.append(
            Block(
                page=page,
                line=i + 1,
                lang=opening["lang"].lower(),
                code="\n".join(body) + "\n",
                illustrative=bool(before) and before[-1] == ILLUSTRATIVE,
            )
        )
        i = j + 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
PYTHON = [block for block in ALL_BLOCKS if block.lang in ("python", "py")]
NOT_PYTHON = [block for block in ALL_BLOCKS if block.lang not in ("python", "py")]


def commands(block: Block) -> list[list[str]]:
    """The ``leveret`` command lines of a block, each as its words after ``leveret``."""
    text = block.code.replace("\\\n", " ")
    if block.lang not in ("bash", "sh", "shell", "console"):
        text = "\n".join(line[2:] for line in text.splitlines() if line.startswith("$ "))
    return [
        _COMMAND_END.split(m[1])[0].split()
        for line in text.splitlines()
        if (m := _COMMAND.search(line))
    ]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subparsers of ``parser`` by name, none where it takes no subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_command(words: list[str]) -> list[str]:
    """What is wrong with ``leveret <words>``: unknown commands, actions and options."""
    parser, path, problems = _parser(), ["leveret"], []
    for word in words:
        if word.startswith("-") or word.startswith("["):
            break
        choices = subcommands(parser)
        if not choices:
            break
        names = word.split("|")  # `leveret db upgrade|check` names both
        unknown = [name for name in names if name not in choices]
        if unknown:
            problems.append(f"{' '.join(path)} has no command {unknown[0]!r} ({sorted(choices)})")
            return problems
        parser, path = choices[names[0]], [*path, names[0]]
    options = set(parser._option_string_actions)
    for word in words:
        option = word.strip("[]()").split("=", 1)[0].rstrip(".")
        if option.startswith("-") and option not in options:
            problems.append(f"{' '.join(path)} has no option {option!r}")
    return problems


def test_blocks_found() -> None:
    """The scan finds the README's blocks, Python and shell, and skips no page."""
    assert len(PYTHON) >= 8
    assert any(commands(block) for block in NOT_PYTHON)
    assert {block.page.name for block in ALL_BLOCKS} >= {"README.md", "cluster.md"}


@pytest.mark.parametrize("block", PYTHON, ids=[block.where for block in PYTHON])
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    """A Python block of the docs runs as it is, on the embedded defaults (a fragment marked
    illustrative need only compile)."""
    if block.illustrative:
        compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LEVERET_URL": "memory://",
        "PYTHONWARNINGS": "error",
    }
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER, block.where, str(block.line)],
        input=block.code,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, (
        f"{block.where} failed (mark a fragment with {ILLUSTRATIVE} on the line before its "
        f"fence):\n{result.stderr}"
    )


WITH_COMMANDS = [block for block in NOT_PYTHON if commands(block)]


@pytest.mark.parametrize("block", WITH_COMMANDS, ids=[block.where for block in WITH_COMMANDS])
def test_leveret_commands_exist(block: Block) -> None:
    """Every `leveret` command a shell block shows is a command of the CLI, with its options."""
    problems = [
        f"{block.where}: leveret {' '.join(words)}: {problem}"
        for words in commands(block)
        for problem in check_command(words)
    ]
    assert not problems, "\n".join(problems)


_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")


def anchors(page: Path) -> set[str]:
    """The anchors MkDocs gives the headings of ``page`` (outside code blocks)."""
    from markdown.extensions.toc import slugify

    found: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (heading := _HEADING.match(line)):
            found.add(slugify(re.sub(r"`([^`]*)`", r"\1", heading[1]), "-"))
    return found


def test_readme_links_resolve() -> None:
    """Every relative link of the README names a file that exists, and a heading of it when it
    has an anchor (``mkdocs build --strict`` checks the links inside docs/, not the README's)."""
    readme = ROOT / "README.md"
    problems = []
    for target in _LINK.findall(readme.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        page = ROOT / path if path else readme
        if not page.exists():
            problems.append(f"{target}: no such file")
        elif anchor and page.suffix == ".md" and anchor not in anchors(page):
            problems.append(f"{target}: no heading with that anchor in {path or 'README.md'}")
    assert not problems, "README.md links:\n" + "\n".join(problems)
