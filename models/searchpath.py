"""``hydra.searchpath=[file://DIR]``: a user's own config folders, for every command.

``medfed simulate`` and ``medfed run`` hand the override to Hydra (a task ``task=NAME`` is then
found in ``DIR/task/NAME.yaml``); the argparse commands (``node check``, ``privacy plan``)
accept the same word and look task names up in the same folders, so one custom schema works
everywhere the README says it does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

KEY = "hydra.searchpath="


class SearchPathError(ValueError):
    """A ``hydra.searchpath`` value that names no folder; the message says which."""


def parse(value: str) -> list[Path]:
    """The folders of ``[file:///a,file://b]`` (``pkg://`` entries are Hydra's own business).

    Raises
    ------
    SearchPathError
        When a ``file://`` entry is not an existing folder.
    """
    folders = []
    for item in value.strip().strip("[]").split(","):
        item = item.strip().strip("'\"")
        if not item.startswith("file://"):
            continue
        folder = Path(item[len("file://") :]).expanduser()
        if not folder.is_dir():
            raise SearchPathError(
                f"hydra.searchpath: {folder} is not a folder; give "
                "hydra.searchpath=[file:///path/to/conf]"
            )
        folders.append(folder.resolve())
    return folders


def split(args: Sequence[str]) -> tuple[list[Path], list[str]]:
    """The search folders named by ``hydra.searchpath=...`` words, and the other words."""
    folders: list[Path] = []
    rest = []
    for arg in args:
        if arg.startswith(KEY):
            folders += parse(arg[len(KEY) :])
        else:
            rest.append(arg)
    return folders, rest


def find_task(name: str, folders: Sequence[Path]) -> str:
    """``DIR/task/NAME.yaml`` of the first folder holding it, else ``name`` unchanged (a
    shipped task or a path)."""
    if name.endswith((".yaml", ".yml")):
        return name
    for folder in folders:
        path = folder / "task" / f"{name}.yaml"
        if path.is_file():
            return str(path)
    return name
