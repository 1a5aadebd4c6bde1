"""Which hospitals take part in a round: dropouts, late joiners, rejoiners; never an endless wait.

Real hospitals disconnect (a reboot, a network cut, an operator stopping the node) and come back
with an empty node state, sometimes under a new node id. :class:`Cohort` keeps the study's
hospitals by name and, before every round,

* waits (at most ``timeout`` seconds) until ``strategy.min_nodes`` known hospitals are connected,
  and otherwise tells the study to stop with a reason instead of waiting forever (Flower's own
  ``min_available_nodes`` wait has no timeout);
* brings a node that is new to the study, or that lost its state, up to date with round 0
  (``query.stats`` for its name and sizes, then ``query.prepare`` with the study's global
  statistics, which stay fixed) -- a hospital that rejoins under a new node id keeps its name
  and its history;
* hands the strategy a frozen view of the ready nodes (:class:`CohortView`), so sampling never
  meets a node that has not been prepared.

Hospitals that were offline, or did not answer within the round's timeout, are recorded as
having missed that round.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from medfed.infra.polling import send_and_receive
from medfed.infra.records import scalar

LOG = logging.getLogger("medfed")
NO_STATE = "no study configuration"  # how medfed.client.app words a node that lost its state


def query(
    grid: Grid, node_ids: Iterable[int], action: str, record: ConfigRecord, timeout: float
) -> list[Message]:
    """Send a round-0 ``query.<action>`` to ``node_ids`` and return the replies that came back."""
    messages = [
        Message(
            RecordDict({"study": record}),
            dst_node_id=nid,
            message_type=f"query.{action}",
            group_id="0",
        )
        for nid in node_ids
    ]
    return send_and_receive(grid, messages, timeout)


def site_of(reply: Message) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``query.stats`` reply's hospital entry (name, sizes) and its statistics summary."""
    site = reply.content.config_records["site"]
    counts = reply.content.metric_records["counts"]
    statistics: dict[str, Any] = json.loads(str(site["statistics-json"]))
    entry: dict[str, Any] = {
        "name": str(site["name"]),
        "n_train": int(scalar(counts["num-examples"])),
        "n_test": int(scalar(counts["num-test"])),
        "role": str(site.get("role", "train")),
        "min_cohort": int(scalar(counts.get("min-cohort", 1))),
        "share_local": bool(scalar(counts.get("share-local-model", 0))),  # cross-site switches
        "evaluate_others": bool(scalar(counts.get("evaluate-other-models", 0))),
        "statistics": statistics,  # for the model card
    }
    return entry, statistics


def by_site(
    replies: Iterable[Message], hospitals: Mapping[int, Mapping[str, Any]]
) -> list[Message]:
    """``replies`` in the order of their hospitals' names (a node the study does not know last,
    by id).

    FedAvg and the metric sums add floats reply by reply, and float addition depends on the
    order: sorted by name, the sums are the same bits whatever order the replies arrived in and
    whatever node ids the engine gave the hospitals (random in deployment), so simulated and
    deployed studies reach the same weights.
    """
    return sorted(replies, key=lambda reply: _name_key(hospitals, reply.metadata.src_node_id))


def _name_key(hospitals: Mapping[int, Mapping[str, Any]], node_id: int) -> tuple[int, str, int]:
    name = hospitals.get(node_id, {}).get("name")
    return (0, str(name), node_id) if name is not None else (1, "", node_id)


class CohortView:
    """What a strategy sees of the grid in one round: exactly the ready nodes, in the order of
    their hospitals' names (:func:`by_site`), so Flower's seeded sampling picks the same
    hospitals on every engine whatever node ids they have."""

    def __init__(
        self,
        grid: Grid,
        node_ids: list[int],
        hospitals: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> None:
        names = hospitals or {}
        self._grid = grid
        self._node_ids = sorted(node_ids, key=lambda node_id: _name_key(names, node_id))

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class Cohort:
    """The study's hospitals by node id, kept current across dropouts (see the module docstring).

    Parameters
    ----------
    grid
        The grid of the study.
    study
        The resolved study (``timeout``, ``strategy.min_nodes``).
    hospitals
        Round 0's hospitals by node id (``name``, ``n_train``, ``n_test``); updated in place.
    statistics_json
        The global statistics every node prepares its data with.
    restore
        Called with the nodes that caught up (node id -> entry) before they are admitted: gives
        them back the state they kept between rounds (:mod:`medfed.server.study.resume`) and
        returns, by node id, the reason of those that could not (they miss the round).
    """

    def __init__(
        self,
        grid: Grid,
        study: dict[str, Any],
        hospitals: dict[int, dict[str, Any]],
        statistics_json: str,
        restore: Callable[[dict[int, dict[str, Any]]], dict[int, str]] | None = None,
    ) -> None:
        self.grid, self.hospitals, self._restore = grid, hospitals, restore
        self._config = ConfigRecord({"config-json": json.dumps(study)})
        self._statistics = ConfigRecord({"statistics-json": statistics_json})
        self._timeout = float(study["timeout"])
        self._min_nodes = int(study["strategy"]["min_nodes"])
        self._stale: set[int] = set()
        self._blocked: set[int] = set()  # caught up but could not restore its state: no training

    def lost_state(self, replies: Iterable[Message]) -> None:
        """Remember the nodes whose reply says they lost the study (restarted): catch them up."""
        for reply in replies:
            if reply.has_error() and NO_STATE in (reply.error.reason or ""):
                self._stale.add(reply.metadata.src_node_id)

    def ready(self, failures: dict[str, str]) -> tuple[CohortView | None, str]:
        """The ready nodes for the next round, or ``None`` and the reason the study must stop.

        Hospitals that are offline are written into ``failures`` (they miss the round).
        """
        deadline = time.monotonic() + self._timeout
        tried: set[int] = set()  # a node that fails to join is asked again next round, not now
        while True:
            connected = set(self.grid.get_node_ids())
            joining = ((connected - set(self.hospitals)) | (self._stale & connected)) - tried
            if joining:
                tried |= joining
                self._catch_up(sorted(joining), failures)
            ready = sorted((connected & set(self.hospitals)) - self._blocked)
            if len(ready) >= self._min_nodes:
                break
            if time.monotonic() > deadline:
                return None, (
                    f"only {len(ready)} of the strategy.min_nodes={self._min_nodes} "
                    f"hospitals needed were connected within {self._timeout:.0f} s"
                )
            time.sleep(0.5)
        for node_id, hospital in self.hospitals.items():
            if node_id not in connected:
                failures[hospital["name"]] = "offline: not connected when the round started"
                self._stale.add(node_id)  # it may come back restarted: catch it up then
        return CohortView(self.grid, ready, self.hospitals), ""

    def missing(
        self, sent: Iterable[Message], replies: Iterable[Message], failures: dict[str, str]
    ) -> None:
        """Record the hospitals sent a message that did not answer within the timeout."""
        answered = {reply.metadata.src_node_id for reply in replies}
        for message in sent:
            node_id = message.metadata.dst_node_id
            if node_id not in answered and node_id in self.hospitals:
                failures[self.hospitals[node_id]["name"]] = (
                    f"no reply within timeout={self._timeout:.0f} s"
                )

    def _catch_up(self, node_ids: list[int], failures: dict[str, str]) -> None:
        """Round 0 for nodes that joined late or restarted; the global statistics stay fixed."""
        by_name = {h["name"]: nid for nid, h in self.hospitals.items()}
        connected = set(self.grid.get_node_ids())
        accepted: dict[int, dict[str, Any]] = {}
        for reply in query(self.grid, node_ids, "stats", self._config, self._timeout):
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                LOG.warning("node %s could not join the study: %s", node_id, reply.error.reason)
                continue
            entry, _ = site_of(reply)
            previous = by_name.get(entry["name"])
            if previous not in (None, node_id) and previous in connected:
                LOG.warning(
                    "node %s claims to be %s, which is connected as node %s; ignored",
                    node_id,
                    entry["name"],
                    previous,
                )
                continue
            accepted[node_id] = entry
        prepared: dict[int, dict[str, Any]] = {}
        for reply in query(self.grid, accepted, "prepare", self._statistics, self._timeout):
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                failures[accepted[node_id]["name"]] = (
                    f"could not prepare its data: {reply.error.reason}"
                )
                continue
            prepared[node_id] = accepted[node_id]
        refused = self._restore(prepared) if self._restore and prepared else {}
        for node_id, entry in prepared.items():
            if node_id in refused:
                failures[entry["name"]] = refused[node_id]
                self._blocked.add(node_id)
                self._stale.add(node_id)  # asked again next round
                continue
            self._blocked.discard(node_id)
            self.hospitals.pop(by_name.get(entry["name"], node_id), None)
            self.hospitals[node_id] = entry
            self._stale.discard(node_id)
            LOG.warning("%s (node %s) joined the study", entry["name"], node_id)
        ordered = sorted(self.hospitals.items(), key=lambda item: item[1]["name"])
        self.hospitals.clear()
        self.hospitals.update(ordered)
