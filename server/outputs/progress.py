"""Terminal progress for a study: a rich progress bar per round and a final table."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medfed.server.study.loop import RoundRecord


class ProgressObserver:
    """Shows the study's rounds as they finish (implements :class:`~.study.Observer`)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None
        self._metric = "accuracy"

    def on_start(self, study: dict[str, Any], hospitals: list[str]) -> None:
        self._metric = study["task"].get("primary_metric") or study["task"]["metrics"][0]
        self.console.print(
            f"[bold]medfed[/]: {study['task']['name']} with "
            f"{study['strategy']['name']} on {len(hospitals)} hospitals "
            f"({', '.join(hospitals)}), engine {study['engine']['name']}"
        )
        self._progress = Progress(
            TextColumn("round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[metric]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("rounds", total=int(study["rounds"]), metric="")

    def on_round(self, server_round: int, record: RoundRecord) -> None:
        if self._progress is None:
            return
        value = record.global_metrics.get(self._metric)
        shown = f"{self._metric} {value:.4f}" if value is not None and math.isfinite(value) else ""
        self._progress.update(self._task, completed=server_round, metric=shown)
        for name, reason in {**record.refusals, **record.failures, **record.rejected}.items():
            self._progress.console.print(f"[yellow]round {server_round}: {name}: {reason}")

    def final_table(self, summary: dict[str, Any], out_dir: str) -> None:
        """Print the final metrics per hospital, globally and for the baselines."""
        if self._progress is not None:
            self._progress.stop()
        metrics = [m for m in summary["global"] if m != "loss"]
        table = Table(title=f"{summary['task']} / {summary['strategy']}: final global model")
        for column in ["evaluated on", "rows"] + metrics:
            table.add_column(column, justify="left" if column == "evaluated on" else "right")
        for h in summary["hospitals"]:
            table.add_row(
                h["name"] + (" (evaluation only)" if h.get("role") == "evaluate" else ""),
                str(h["n_test"]),
                *(_fmt(h["metrics"].get(m)) for m in metrics),
            )
        total = sum(h["n_test"] for h in summary["hospitals"])
        table.add_row(
            "[bold]all hospitals", str(total), *(_fmt(summary["global"].get(m)) for m in metrics)
        )
        if "baselines" in summary:
            base = summary["baselines"]
            table.add_row(
                "pooled baseline",
                str(total),
                *(_fmt(base["pooled"]["global"].get(m)) for m in metrics),
            )
            table.add_row(
                "local-only (mean)",
                str(total),
                *(_fmt(base["local"]["mean"].get(m)) for m in metrics),
            )
        self.console.print(table)
        if summary.get("stopped"):
            self.console.print(f"[bold red]{summary['stopped']}")
        self.console.print(f"results: [bold]{out_dir}[/] ({summary['wall_seconds']:.1f} s)")


def _fmt(value: Any) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"
