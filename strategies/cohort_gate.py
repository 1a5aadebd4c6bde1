"""The cohort gate: a round is aggregated only when enough hospitals' updates were accepted.

One step before the strategy's ``aggregate_train`` (a delta around Flower's strategy, like the
screening step): a round with fewer accepted updates than ``strategy.min_nodes``, or than the
largest ``min_cohort`` any hospital's policy declared in round 0, is *skipped*: the global model
stays as it was, because a lone hospital's update would otherwise become the global model, and
that is exactly what a node's ``min_cohort`` forbids. After ``stop_after_skipped`` skipped rounds
in a row the study stops with the reason.

Why not Flower's own ``min_train_nodes``: it bounds the nodes *sampled*, not the replies that
arrive; when the others refuse (budget spent) or fail, FedAvg averages whatever came back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import Message


@dataclass
class CohortGate:
    """Counts accepted updates against the cohort the study and the hospitals require.

    Parameters
    ----------
    min_nodes
        ``strategy.min_nodes``.
    min_cohort
        The largest ``min_cohort`` a hospital declared (a count, fine to disclose).
    stop_after_skipped
        Consecutive skipped rounds after which the study stops.
    skipped_in_a_row
        Skipped rounds just before this one (a resumed study carries them over).
    """

    min_nodes: int
    min_cohort: int = 1
    stop_after_skipped: int = 3
    skipped_in_a_row: int = 0

    @property
    def needed(self) -> int:
        """Accepted updates a round needs to be aggregated."""
        return max(self.min_nodes, self.min_cohort)

    def admit(self, server_round: int, replies: Iterable[Message]) -> str:
        """``""`` when the round may be aggregated, else why it is skipped (one sentence)."""
        accepted = sum(1 for reply in replies if not reply.has_error())
        if accepted >= self.needed:
            self.skipped_in_a_row = 0
            return ""
        self.skipped_in_a_row += 1
        return (
            f"round {server_round} skipped: {accepted} update(s) accepted, {self.needed} "
            f"needed (strategy.min_nodes={self.min_nodes}, largest min_cohort a hospital "
            f"declared={self.min_cohort}); the global model is unchanged"
        )

    def stop_reason(self, skipped: str) -> str:
        """Why the study stops after ``skipped``, or ``""`` while it may go on."""
        if self.skipped_in_a_row < self.stop_after_skipped:
            return ""
        return (
            f"{self.skipped_in_a_row} rounds in a row skipped (stop_after_skipped="
            f"{self.stop_after_skipped}); last: {skipped}; the study stopped there"
        )
