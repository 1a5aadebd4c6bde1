"""Issue 11 section 8: the CLI can be discovered, and the README names only commands that exist.

``medfed --help`` and every group's ``--help`` list each of its subcommands with one line; each
command answers ``--help`` with exit 0; every ``medfed ...`` command in the README (code blocks
and inline code) resolves to a real command; the README documents the exit codes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medfed.infra.cli import COMMANDS, Command, resolve, run_command

MEDFED = str(Path(sys.executable).with_name("medfed"))
README = Path(__file__).resolve().parents[2] / "README.md"
GROUPS = [name for name, entry in COMMANDS.items() if isinstance(entry, dict)]
LEAVES = [
    [name] if isinstance(entry, Command) else [name, sub]
    for name, entry in COMMANDS.items()
    for sub in ([None] if isinstance(entry, Command) else list(entry))
]


def _medfed(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return subprocess.run(
        [MEDFED, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_medfed_help_lists_every_command_with_one_line() -> None:
    done = _medfed("--help")

    assert done.returncode == 0
    for words in LEAVES:
        line = next(
            (
                s
                for s in done.stdout.splitlines()
                if s.split()[: len(words)] == words and len(s.split()) > len(words)
            ),
            None,
        )
        assert line is not None, f"medfed --help does not list {' '.join(words)}"
    assert (
        "exit codes: 0 success, 1 a study or check failed, 2 a usage or configuration "
        "error" in done.stdout
    )


@pytest.mark.parametrize("group", GROUPS)
def test_each_group_help_lists_all_its_subcommands(group: str, capsys) -> None:
    assert run_command([group, "--help"]) == 0
    shown = capsys.readouterr().out
    listed = {tuple(line.split()[:2]) for line in shown.splitlines() if line.startswith("  ")}
    assert listed == {(group, sub) for sub in COMMANDS[group]}  # type: ignore[union-attr]
    assert run_command([group]) == 2  # a group alone is a usage error (and shows the help)


@pytest.mark.parametrize(
    "words",
    [w for w in LEAVES if w != ["simulate"]],
    ids=[" ".join(w) for w in LEAVES if w != ["simulate"]],
)
def test_every_command_answers_help_with_exit_0(words: list[str], capsys) -> None:
    try:
        code = run_command([*words, "--help"])
    except SystemExit as exc:  # argparse's own --help
        code = int(exc.code or 0)
    assert code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_simulate_help_is_hydras_and_exits_0() -> None:
    done = _medfed("simulate", "--help")
    assert done.returncode == 0 and "== Config ==" in done.stdout


def test_unknown_commands_are_usage_errors(capsys) -> None:
    assert run_command(["nodes"]) == 2
    assert run_command(["node", "stat"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'nodes'; see `medfed --help`" in err
    assert "unknown command 'medfed node stat'; see `medfed node --help`" in err


def _readme_commands() -> list[list[str]]:
    """Every ``medfed WORD [WORD]`` the README shows, in code blocks or inline code."""
    text = README.read_text()
    code = re.findall(r"```.*?\n(.*?)```", text, flags=re.S) + re.findall(r"`([^`\n]+)`", text)
    found = []
    for chunk in code:
        for match in re.finditer(
            r"(?:^|[\s;&|(])medfed ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)", chunk
        ):
            found.append(match.group(1).split())
    return found


def test_every_command_the_readme_names_exists() -> None:
    named = _readme_commands()
    assert len(named) > 20  # the README is parsed, not skipped
    for words in named:
        head = COMMANDS.get(words[0])
        assert head is not None, f"README names `medfed {words[0]}`, which does not exist"
        if isinstance(head, dict):
            assert len(words) > 1 and words[1] in head, (
                f"README names `medfed {' '.join(words)}`, which does not exist"
            )
            assert not isinstance(resolve(words), int)


def test_the_readme_documents_the_exit_codes() -> None:
    text = README.read_text()
    section = text[text.index("## Exit codes") :]
    for code in ("`0`", "`1`", "`2`"):
        assert code in section.split("\n## ")[0]
