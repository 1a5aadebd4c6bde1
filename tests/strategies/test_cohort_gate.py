"""The cohort gate (medfed.strategies.cohort_gate) with hand-made replies."""

from __future__ import annotations

from dataclasses import dataclass

from medfed.strategies.cohort_gate import CohortGate


@dataclass
class _Reply:
    error: bool

    def has_error(self) -> bool:
        return self.error


def _replies(ok: int, failed: int) -> list[_Reply]:
    return [_Reply(False)] * ok + [_Reply(True)] * failed


def test_a_round_needs_min_nodes_and_the_largest_declared_min_cohort() -> None:
    gate = CohortGate(min_nodes=2, min_cohort=3)

    assert gate.needed == 3
    assert gate.admit(1, _replies(3, 1)) == ""
    assert gate.admit(2, _replies(2, 2)) == (
        "round 2 skipped: 2 update(s) accepted, 3 needed (strategy.min_nodes=2, largest "
        "min_cohort a hospital declared=3); the global model is unchanged"
    )
    assert (
        CohortGate(min_nodes=2, min_cohort=1)
        .admit(1, _replies(1, 3))
        .startswith("round 1 skipped: 1 update(s) accepted, 2 needed")
    )


def test_the_study_stops_after_stop_after_skipped_rounds_in_a_row() -> None:
    gate = CohortGate(min_nodes=2, stop_after_skipped=2)

    first = gate.admit(1, _replies(1, 1))
    assert first and gate.stop_reason(first) == ""
    assert gate.admit(2, _replies(2, 0)) == "" and gate.skipped_in_a_row == 0  # reset
    gate.admit(3, _replies(0, 2))
    last = gate.admit(4, _replies(1, 1))
    assert gate.stop_reason(last) == (
        f"2 rounds in a row skipped (stop_after_skipped=2); last: {last}; the study stopped there"
    )


def test_a_resumed_study_carries_its_skipped_rounds_over() -> None:
    gate = CohortGate(min_nodes=2, stop_after_skipped=3, skipped_in_a_row=2)

    assert gate.stop_reason(gate.admit(5, _replies(1, 0))).startswith("3 rounds in a row")
