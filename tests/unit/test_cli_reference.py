"""The ``leveret`` command line: docs/cli.md matches the parser, and the conventions every command
shares (old spellings, exit codes, helpful errors, no database created by reading) hold."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from framework import App
from framework.cli import _parser, exits, main
from framework.cli._common import load, readable_handler

ROOT = Path(__file__).resolve().parent.parent.parent
PAGE = ROOT / "docs" / "cli.md"
_HEADING = re.compile(r"^(#{2,3}) (.*)$", re.MULTILINE)
_OPTION = re.compile(r"(?<![\w-])(--?[a-z][\w-]*)")


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("leveret",)
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every runnable command of ``parser`` (``leveret dlq list``...), with its parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from leaves(sub, (*path, name))
            return
    yield " ".join(path), parser


COMMANDS = dict(leaves(_parser()))


def sections() -> dict[str, str]:
    """The page's text under each heading, by heading (backticks removed)."""
    text = PAGE.read_text(encoding="utf-8")
    marks = list(_HEADING.finditer(text))
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return {m[2].strip("`"): text[m.end() : end] for m, end in zip(marks, ends, strict=True)}


def shown(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """The option strings ``--help`` shows, and the positionals' metavars."""
    options: set[str] = set()
    positionals: set[str] = set()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            options.update(action.option_strings)
        else:
            positionals.add(str(action.metavar))
    return options, positionals


def hidden(parser: argparse.ArgumentParser) -> set[str]:
    """The deprecated option strings of ``parser`` (hidden from ``--help``)."""
    return {
        option
        for action in parser._actions
        if action.help == argparse.SUPPRESS
        for option in action.option_strings
    }


@pytest.fixture
def clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo the CLI's ``configure_logging``: structlog defaults and the root logger's handlers."""
    monkeypatch.delenv("LEVERET_LOG_LEVEL", raising=False)
    monkeypatch.delenv("LEVERET_LOG_FORMAT", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


# -- the page ---------------------------------------------------------------------------------


def test_page_has_a_section_for_every_command_and_no_other() -> None:
    """docs/cli.md has one ``### `leveret ...``` section per runnable command of the parser."""
    documented = {title for title in sections() if title.startswith("leveret ")}
    assert documented == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_section_lists_exactly_the_options_of_help(command: str) -> None:
    """A command's section shows every argument ``--help`` shows, in its synopsis and its table,
    and no option the command does not have."""
    options, positionals = shown(COMMANDS[command])
    text = sections()[command]
    synopsis = text.split("```text", 1)[1].split("```", 1)[0]
    table = "\n".join(line for line in text.splitlines() if line.startswith("| `"))
    first_column = " ".join(line.split("|")[1] for line in table.splitlines())
    in_synopsis = set(_OPTION.findall(synopsis))
    assert in_synopsis <= options, synopsis
    for action in COMMANDS[command]._actions:  # argparse's usage shows an option's first name
        if action.option_strings and action.help != argparse.SUPPRESS and action.dest != "help":
            assert in_synopsis & set(action.option_strings), action.option_strings
    assert set(_OPTION.findall(first_column)) == options, first_column
    for metavar in positionals:
        assert f"`{metavar}`" in first_column, metavar
        assert metavar in synopsis, metavar


def test_deprecated_spellings_are_listed() -> None:
    """Every option hidden from ``--help`` (an old spelling) is in the deprecated table."""
    table = sections()["Deprecated spellings"]
    for command, parser in COMMANDS.items():
        for option in hidden(parser):
            rows = [line for line in table.splitlines() if f"`{option} " in line]
            assert any(command.split()[1] in row for row in rows), (command, option)


def test_exit_codes_are_documented() -> None:
    """The page's exit-code table has one row per code of ``framework.cli.exits``."""
    table = sections()["Exit codes"]
    for name in exits.__all__:
        assert f"| {getattr(exits, name)} | `{name}` |" in table, name


def test_page_is_in_the_site_nav() -> None:
    """mkdocs.yml lists the page."""
    assert "cli.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


# -- shared conventions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (["dlq", "list", "--app", "a.b:app", "q"], ["dlq", "list", "a.b:app", "q"]),
        (["dlq", "show", "q", "--url", "amqp://h/v"], ["dlq", "show", "q", "--amqp-url", "amqp://h/v"]),
        (["queues", "migrate", "a:app", "--url", "amqp://h"],
         ["queues", "migrate", "a:app", "--amqp-url", "amqp://h"]),
        (["sagas", "list", "a:app", "--format", "json"], ["sagas", "list", "a:app", "--json"]),
        (["sagas", "show", "a:app", "i", "--format", "table"], ["sagas", "show", "a:app", "i"]),
        (["contracts", "check", "c", "--format", "json"], ["contracts", "check", "c", "--json"]),
    ],
)  # fmt: skip
def test_old_spellings_parse_as_the_new_ones(
    old: list[str], new: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An old spelling gives what the new one gives, and a note naming the new one on stderr."""
    parser = _parser()
    parsed, expected = vars(parser.parse_args(old)), vars(parser.parse_args(new))
    if "app_option" in parsed and parsed["app_option"] is not None:  # dlq --app: positional later
        parsed["app"], parsed["queues"] = parsed.pop("app_option"), [parsed["app"]]
        expected.pop("app_option")
    assert parsed == expected
    assert "is deprecated and will be removed: write" in capsys.readouterr().err


@pytest.mark.usefixtures("clean_logging")
@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("examples/hello.py:app",
         "examples.hello:app (run from the directory that holds examples/)"),
        ("./hello.py:app", "hello:app (run from the directory that holds hello.py)"),
    ],
)  # fmt: skip
def test_a_file_path_gets_the_dotted_module_path(
    spec: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``leveret run path/to/file.py:app`` exits 2 saying which dotted path to write."""
    assert main(["run", spec]) == exits.EXIT_USAGE
    assert f"use the dotted module path: {hint}" in capsys.readouterr().err


def test_status_refuses_a_memory_app(capsys: pytest.CaptureFixture[str]) -> None:
    """``leveret status`` of a ``memory://`` app exits 2 asking for --amqp-url, and lists no
    failed check."""
    assert main(["status", "examples.hello:app"]) == exits.EXIT_USAGE
    out, err = capsys.readouterr()
    assert "uses the in-process broker (memory://)" in err
    assert "pass --amqp-url amqp://" in err
    assert "FAIL" not in out + err


@pytest.mark.usefixtures("clean_logging")
def test_reading_creates_no_database_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sagas list`` and ``projections list`` on a missing SQLite file exit 3 saying where they
    looked; ``db check`` says every step is missing; none creates the file."""
    db = tmp_path / "nothing-here.db"
    url = f"sqlite:///{db}"
    for argv in (["sagas", "list"], ["projections", "list"]):
        assert main([*argv, "handlers.app:app", "--db-url", url]) == exits.EXIT_UNREACHABLE
        assert f"no database at {db}" in capsys.readouterr().err
    assert main(["db", "check", url]) == exits.EXIT_FAILED
    assert "(no database file yet): missing leveret 1" in capsys.readouterr().out
    assert not db.exists()


def test_status_shows_readable_handler_names() -> None:
    """A handler built inside a function reads as module, name and kind."""
    name = "order_view.build_read_side.<locals>.on_placed[projection]"
    assert readable_handler(name) == "order_view.on_placed (projection)"
    assert readable_handler("orders.place_order") == "orders.place_order"
    assert readable_handler("billing.Charges.charge") == "billing.Charges.charge"


def test_the_current_directory_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``MODULE:APP`` is looked up in the current directory before anything else on sys.path
    (an installed package of the same name, say), even when it is on sys.path already."""
    name = f"leveret_cwd_{tmp_path.name.replace('-', '_')}"
    installed, project = tmp_path / "site", tmp_path / "project"
    installed.mkdir()
    project.mkdir()
    (installed / f"{name}.py").write_text("app = 'the installed one'\n")
    (project / f"{name}.py").write_text("from framework import App\napp = App([])\n")
    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.setattr(sys, "path", [*sys.path, str(project)])  # on the path, but last
    monkeypatch.chdir(project)
    monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        assert isinstance(load(f"{name}:app"), App)
    finally:
        sys.modules.pop(name, None)
