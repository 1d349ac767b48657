"""What the coordinator knows about each participant's connection: who is online, where.

A participant is online from its first verified message until it says BYE or stays silent for
``heartbeat_timeout``. Its routing id is the ROUTER's handle to its latest connection, used to
address replies; it never identifies the peer (the ZAP User-Id does).
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable
from dataclasses import dataclass

from latentfl.log import get_logger
from latentfl.platform.wire.hello import HelloSummary


@dataclass
class Peer:
    """One participant's connection."""

    routing_id: bytes = b""
    last_seen: float = 0.0
    online: bool = False
    hello: HelloSummary | None = None  # what its latest HELLO said


class PeerTable:
    """The participants the coordinator has heard from, by id."""

    def __init__(self, *, heartbeat_timeout: float, session: str) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self._peers: dict[str, Peer] = {}
        self.log = get_logger("coordinator", session=session)

    def __contains__(self, pid: object) -> bool:
        return pid in self._peers

    def __getitem__(self, pid: str) -> Peer:
        return self._peers[pid]

    def get(self, pid: str | None) -> Peer | None:
        return self._peers.get(pid) if pid is not None else None

    def items(self) -> ItemsView[str, Peer]:
        return self._peers.items()

    def seen(self, pid: str, routing_id: bytes, now: float) -> Peer:
        """``pid`` sent a verified message on ``routing_id``: it is online, reachable there."""
        peer = self._peers.setdefault(pid, Peer())
        peer.routing_id, peer.last_seen = routing_id, now
        if not peer.online:
            peer.online = True
            self.log.info("participant_online", peer=pid)
        return peer

    def sweep(self, now: float) -> None:
        """Mark offline whoever has been silent for longer than ``heartbeat_timeout``."""
        for pid, peer in self._peers.items():
            if peer.online and now - peer.last_seen > self.heartbeat_timeout:
                peer.online = False
                self.log.info(
                    "participant_offline", peer=pid, silent_s=round(now - peer.last_seen, 1)
                )

    def next_expiry(self) -> float | None:
        """When :meth:`sweep` next finds an online participant silent too long, if it stays
        silent (None when nobody is online)."""
        times = [peer.last_seen + self.heartbeat_timeout for peer in self._peers.values()
                 if peer.online]
        return min(times) + 1e-3 if times else None

    def online(self) -> list[str]:
        """The online participants' ids, sorted."""
        return sorted(pid for pid, peer in self._peers.items() if peer.online)

    def forget(self, pids: Iterable[str]) -> None:
        """Drop revoked participants."""
        for pid in pids:
            self._peers.pop(pid, None)


__all__ = ["Peer", "PeerTable"]
