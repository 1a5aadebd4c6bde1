"""The privacy ledger: spend bookkeeping, restarts, the budget, tampering and concurrent writers."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import pytest

from medfed.client.ledger import GENESIS, Ledger, LedgerError, LedgerTampered, ledger_path
from medfed.client.policy import Policy, check_round
from medfed.models.privacy import epsilon_from_history

DELTA = 1e-5
ROUND = (1.0, 0.08, 50)


def reserve(ledger: Ledger, study: str = "s1", rnd: int = 1, spend=ROUND) -> int:
    noise, rate, steps = spend
    return ledger.reserve(study, "diagnosis", rnd, noise, rate, steps, DELTA, 0.5)


def filled(tmp_path: Path, rounds: int = 4) -> Ledger:
    ledger = Ledger(tmp_path / "site.csv.ledger.jsonl")
    for rnd in range(1, rounds + 1):
        ledger.commit(reserve(ledger, rnd=rnd), 0.1 * rnd)
    return ledger


def lines(ledger: Ledger) -> list[str]:
    return ledger.path.read_text().splitlines(keepends=True)


def test_ledger_path_sits_next_to_the_dataset():
    assert ledger_path("/data/site.csv") == Path("/data/site.csv.ledger.jsonl")
    assert ledger_path("/data/x.ledger.jsonl") == Path("/data/x.ledger.jsonl")


def test_entries_chain_and_carry_the_round(tmp_path):
    ledger = filled(tmp_path, rounds=2)
    entries = ledger.verify()
    assert [e["status"] for e in entries] == ["reserved", "committed"] * 2
    assert entries[0]["prev_hash"] == GENESIS and entries[1]["prev_hash"] == entries[0]["hash"]
    assert entries[1]["ref"] == 0 and entries[1]["epsilon"] == pytest.approx(0.1)
    assert {
        k: entries[2][k]
        for k in ("study", "task", "round", "noise_multiplier", "sample_rate", "steps", "delta")
    } == {
        "study": "s1",
        "task": "diagnosis",
        "round": 2,
        "noise_multiplier": 1.0,
        "sample_rate": 0.08,
        "steps": 50,
        "delta": DELTA,
    }
    body = {k: v for k, v in entries[0].items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert entries[0]["hash"] == hashlib.sha256(canonical).hexdigest()


def test_history_counts_committed_and_crashed_rounds_not_released_ones(tmp_path):
    ledger = filled(tmp_path, rounds=2)
    reserve(ledger, rnd=3)
    ledger.release(reserve(ledger, rnd=4), "refused before training")
    reserve(ledger, study="s2", spend=(2.0, 0.1, 10))
    assert ledger.history() == [ROUND, ROUND, ROUND, (2.0, 0.1, 10)]
    assert ledger.history("s2") == [(2.0, 0.1, 10)]


def test_spend_survives_a_node_restart(tmp_path):
    ledger = filled(tmp_path, rounds=3)
    reserve(ledger, study="s2", spend=(2.0, 0.1, 10))
    spend = Ledger(ledger.path).spent()
    assert spend.total == pytest.approx(epsilon_from_history([ROUND] * 3 + [(2.0, 0.1, 10)], DELTA))
    assert spend.studies["s1"] == pytest.approx(epsilon_from_history([ROUND] * 3, DELTA))
    assert spend.rounds == {"s1": 3, "s2": 1} and spend.open_reservations == 1
    assert Ledger(ledger.path).spent("s2").studies.keys() == {"s2"}


def test_commit_and_release_only_close_open_reservations(tmp_path):
    ledger = filled(tmp_path, rounds=1)
    with pytest.raises(LedgerError, match="not an open reservation"):
        ledger.commit(0, 1.0)
    with pytest.raises(LedgerError, match="not an open reservation"):
        ledger.release(1, "no")
    with pytest.raises(LedgerError, match="invalid spend"):
        ledger.reserve("s", "t", 1, 1.0, 1.5, 10, DELTA, 0.1)


def node_round(ledger: Ledger, policy: Policy, rnd: int) -> str | None:
    """What a node does: check the policy against the ledger and reserve under one lock."""
    with ledger.locked():
        total = epsilon_from_history(ledger.history() + [ROUND], DELTA)
        study = epsilon_from_history(ledger.history("s1") + [ROUND], DELTA)
        refusal = check_round(
            policy,
            task="diagnosis",
            dp=True,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            delta=DELTA,
            projected_epsilon_total=total,
            projected_epsilon_study=study,
            cohort_size=3,
        )
        if refusal is not None:
            return refusal.reason
        entry = reserve(ledger, rnd=rnd)
    ledger.commit(entry, total)
    return None


def test_overspend_is_refused_and_stays_refused_after_restart(tmp_path):
    path = tmp_path / "site.ledger.jsonl"
    policy = Policy(max_epsilon_total=9.0)
    outcomes = [node_round(Ledger(path), policy, rnd) for rnd in range(1, 9)]
    # epsilon after k rounds: 4.80, 6.34, 7.60, 8.71, then 9.72 > 9.0
    assert outcomes[:4] == [None] * 4
    assert (
        outcomes[4:]
        == ["budget: this round would bring epsilon to 9.72 > max_epsilon_total 9.0"] * 4
    )
    assert len(Ledger(path).history()) == 4
    assert Ledger(path).spent().total == pytest.approx(8.709, abs=1e-3)


def test_an_edited_field_is_detected(tmp_path):
    ledger = filled(tmp_path)
    rows = lines(ledger)
    entry = json.loads(rows[2])
    entry["noise_multiplier"] = 5.0
    rows[2] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    ledger.path.write_text("".join(rows))
    with pytest.raises(LedgerTampered, match="line 3: its hash does not match"):
        ledger.verify()
    with pytest.raises(LedgerTampered):
        reserve(ledger)
    with pytest.raises(LedgerTampered):
        ledger.history()


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda rows: rows[:3] + rows[4:], "out of sequence"),
        (lambda rows: [rows[1], rows[0], *rows[2:]], "out of sequence"),
        (lambda rows: rows[:-1], "head records 8"),
        (lambda rows: rows[:-1] + [rows[-1][:40]], "head records 8"),
        (lambda rows: rows[:5] + ["{not json\n"] + rows[6:], "not valid JSON"),
    ],
)
def test_removed_reordered_or_truncated_entries_are_detected(tmp_path, damage, message):
    ledger = filled(tmp_path)
    ledger.path.write_text("".join(damage(lines(ledger))))
    with pytest.raises(LedgerTampered, match=message):
        Ledger(ledger.path).verify()


def test_a_deleted_ledger_or_head_is_detected(tmp_path):
    ledger = filled(tmp_path)
    ledger.head_path.unlink()
    with pytest.raises(LedgerTampered, match="head"):
        ledger.verify()
    ledger = filled(tmp_path / "other")
    ledger.path.unlink()
    with pytest.raises(LedgerTampered, match="holds 0 entries but its head records 8"):
        ledger.verify()


def rechain(ledger: Ledger, rows: list[dict]) -> None:
    """An attacker without the key: rewrites the chain and the head with plain SHA-256."""
    prev = GENESIS
    for row in rows:
        row["prev_hash"] = prev
        body = {k: v for k, v in row.items() if k != "hash"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        row["hash"] = prev = hashlib.sha256(text).hexdigest()
    ledger.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ledger.head_path.write_text(json.dumps({"count": len(rows), "hash": prev}))


def test_a_recomputed_chain_passes_without_a_key_but_not_with_one(tmp_path):
    plain = filled(tmp_path / "plain")
    rows = [json.loads(r) for r in lines(plain)][:2]
    rechain(plain, rows)
    assert len(plain.verify()) == 2
    keyed = Ledger(tmp_path / "k.ledger.jsonl", key=b"node secret")
    keyed.commit(reserve(keyed), 0.1)
    reserve(keyed)
    rechain(keyed, [json.loads(r) for r in lines(keyed)][:2])
    with pytest.raises(LedgerTampered, match="hash does not match"):
        keyed.verify()


def test_crash_leftovers_are_repaired_on_the_next_write(tmp_path):
    ledger = filled(tmp_path, rounds=1)
    head = ledger.head_path.read_text()
    reserve(ledger, rnd=2)
    ledger.head_path.write_text(head)
    assert len(ledger.verify()) == 3
    with open(ledger.path, "a") as out:
        out.write('{"seq": 3, "prev": "torn wr')
    assert len(ledger.verify()) == 3
    reserve(ledger, rnd=3)
    assert [e["seq"] for e in ledger.verify()] == [0, 1, 2, 3]
    assert json.loads(ledger.head_path.read_text())["count"] == 4


def _writer(path: str, worker: int, count: int) -> None:
    ledger = Ledger(path)
    for rnd in range(count):
        entry = ledger.reserve(f"study-{worker}", "diagnosis", rnd, 1.0, 0.05, 10, DELTA, 0.1)
        if rnd % 2:
            ledger.commit(entry, 0.2)


def test_concurrent_writers_do_not_corrupt_the_chain(tmp_path):
    path = str(tmp_path / "shared.ledger.jsonl")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(path, w, 30)) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    entries = Ledger(path).verify()
    assert len(entries) == 2 * (30 + 15)
    assert [e["seq"] for e in entries] == list(range(90))
    assert len(Ledger(path).history()) == 60
