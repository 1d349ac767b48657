"""Coordinator acceptance throughput: how fast a round's UPDATEs are verified, persisted, acked.

For each participant count, a fresh consortium (real CURVE and Ed25519 keys) and a real
coordinator process (``python -m latentfl coordinator``) on 127.0.0.1; the participants are
DEALER sockets in this process that say HELLO, take their TASK and answer with a prepared
UPDATE of the surrogate's size (ConvNet-3 width 128: 1.3 MB). The clock runs from the first
UPDATE sent to the last ACK received, so it covers the coordinator's whole acceptance path:
CURVE decryption, envelope checks, signature, replay guard, payload hash, manifest and
finiteness checks, the update file, the journal line, the ACK. Signing on the client side is done
before the clock starts. Each count runs twice: with group commit (the default: the updates that
arrive together share one fsync of the journal, replay log and folder, their files' fsyncs
issued together) and without (``group_commit = false``: four fsyncs per update).

What grouping saves is fsync latency, so its gain depends on the disk. ``--fsync-ms L`` models a
slower disk than the one at hand: the coordinator process (only it) waits L ms before each
fsync, through a ``sitecustomize`` module this script writes into a temporary folder on the
coordinator's PYTHONPATH. Concurrent fsyncs wait concurrently, as a journaling filesystem
commits them together.

    python benchmarks/ingest.py --participants 10 50 200
    python benchmarks/ingest.py --participants 200 --fsync-ms 6
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import zmq

from latentfl.platform.crypto import load_roster, make_curve_client
from latentfl.platform.local import LocalConsortium
from latentfl.platform.protocol import (
    Kind,
    ReplayGuard,
    Verifier,
    encode,
    pack_json,
    unpack_tensors,
)
from latentfl.platform.wire.payloads import encode_update
from latentfl.strategies import Update

SESSION = "ingest-bench"
COORDINATOR = {
    "rounds": 1, "heartbeat_timeout": 600.0, "round_deadline": 3600.0, "device": "cpu",
    "strategy": {"model": {"name": "convnet", "options": {"width": 128, "depth": 3}}},
}


SLOW_FSYNC = '''\
"""Written by benchmarks/ingest.py --fsync-ms: the coordinator's fsyncs model a slower disk."""
import os
import sys
import time

if "coordinator" in sys.argv:
    _fsync = os.fsync

    def _slow_fsync(fd, _wait={seconds!r}):
        time.sleep(_wait)
        _fsync(fd)

    os.fsync = _slow_fsync
'''


def run_one(n: int, root: Path, *, group_commit: bool, fsync_ms: float = 0.0) -> dict[str, float]:
    ids = [f"p{i:03d}" for i in range(n)]
    settings = {**COORDINATOR, "group_commit": group_commit}
    with _slow_disk(root, fsync_ms), LocalConsortium(root / "consortium", ids, session=SESSION,
                                                     coordinator=settings) as consortium:
        consortium.start_coordinator()
        return _measure(consortium)


@contextlib.contextmanager
def _slow_disk(root: Path, fsync_ms: float) -> Iterator[None]:
    """While open, processes started from here load SLOW_FSYNC (when fsync_ms > 0)."""
    if fsync_ms <= 0:
        yield
        return
    site = root / "slow-disk"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_FSYNC.format(seconds=fsync_ms / 1000))
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), before]))
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def _measure(consortium: LocalConsortium) -> dict[str, float]:
    """Participants as DEALER sockets here: HELLO, TASK, then every UPDATE at once, timed."""
    ids, n = consortium.ids, len(consortium.ids)
    ctx = zmq.Context()
    roster = load_roster(consortium.roster)
    verifier = Verifier.of_coordinator(roster, session=SESSION, replay=ReplayGuard())
    socks, idents = [], []
    try:
        for pid in ids:
            ident = consortium.identity(pid)
            s = ctx.socket(zmq.DEALER)
            s.linger = 0
            make_curve_client(s, ident, roster.coordinator_curve_public)
            s.connect(consortium.endpoint)
            socks.append(s)
            idents.append(ident)
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        hello = pack_json({"num_examples": 100})
        tasks: dict[int, object] = {}
        deadline = time.monotonic() + 120
        while len(tasks) < n and time.monotonic() < deadline:
            # HELLO until the coordinator is up and has sent every task.
            for i, s in enumerate(socks):
                if i not in tasks:
                    s.send_multipart(encode(Kind.HELLO, session=SESSION, round=0, sender=ids[i],
                                            signing_key=idents[i].signing_key, payload=hello))
            end = time.monotonic() + 3
            while len(tasks) < n and time.monotonic() < end:
                for s, _ in poller.poll(200):
                    msg = verifier.verify(s.recv_multipart(), user_id="coordinator")
                    if msg.header.kind is Kind.TASK:
                        tasks[socks.index(s)] = msg
        if len(tasks) < n:
            raise RuntimeError(f"only {len(tasks)} of {n} participants got a task")
        weights = unpack_tensors(tasks[0].payload)
        frames = []
        for i in range(n):
            payload, meta = encode_update(Update(ids[i], 1, weights, 100, 10))
            frames.append(encode(Kind.UPDATE, session=SESSION, round=1, sender=ids[i],
                                 signing_key=idents[i].signing_key, payload=payload, meta=meta))
        size = len(frames[0][2])
        acks = 0
        started = time.perf_counter()
        for s, f in zip(socks, frames, strict=True):
            s.send_multipart(f, copy=False)
        while acks < n:
            events = poller.poll(60_000)
            if not events:
                raise RuntimeError(f"only {acks} of {n} ACKs arrived")
            for s, _ in events:
                msg = verifier.verify(s.recv_multipart(), user_id="coordinator")
                if msg.header.kind is Kind.ACK:
                    acks += 1
                elif msg.header.kind is Kind.REJECT:
                    raise RuntimeError(f"update refused: {msg.header.meta}")
        elapsed = time.perf_counter() - started
        return {"participants": n, "update_mb": size / 1e6, "seconds": elapsed,
                "updates_per_s": n / elapsed, "mb_per_s": n * size / 1e6 / elapsed}
    finally:
        for s in socks:
            s.close(0)
        ctx.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--grouping", choices=["both", "on", "off"], default="both",
                        help="Measure with group commit, without, or both (default).")
    parser.add_argument("--fsync-ms", type=float, default=0.0, metavar="L",
                        help="Model a slower disk: the coordinator waits L ms before each fsync.")
    args = parser.parse_args()
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.grouping]
    if args.fsync_ms > 0:
        print(f"modelled disk: every coordinator fsync waits {args.fsync_ms:g} ms first")
    print(f"{'participants':>12} {'grouping':>8} {'update MB':>9} {'seconds':>8} "
          f"{'updates/s':>9} {'MB/s':>7}")
    for n in args.participants:
        for group_commit in modes:
            with tempfile.TemporaryDirectory(prefix="latentfl-ingest-") as tmp:
                r = run_one(n, Path(tmp), group_commit=group_commit, fsync_ms=args.fsync_ms)
            print(f"{r['participants']:>12} {'on' if group_commit else 'off':>8} "
                  f"{r['update_mb']:>9.2f} {r['seconds']:>8.2f} {r['updates_per_s']:>9.1f} "
                  f"{r['mb_per_s']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
