"""latentfl's steady round time alone: the latentfl row of benchmarks/vs_flower.py, plus how
long each round's aggregation thread ran until the coordinator's loop collected it.

``aggregate_s`` (the ``aggregate_s`` of each ``round_closed`` log event, rounds 2-R: from
starting the aggregation thread to the loop collecting its result) is where a poll tick
showed: a 10 ms aggregation read 100 ms while the loop slept out its tick. (The event's
``seconds`` is another span: from opening the round to the aggregate being ready.)

    python benchmarks/round_time.py --participants 5 --size small --rounds 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_flower import SIZES, print_table, run_latentfl  # noqa: E402


def aggregate_seconds(log: Path) -> list[float]:
    """``aggregate_s`` of every ``round_closed`` event after round 1 in a coordinator's log."""
    out = []
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "round_closed" and event.get("round", 0) >= 2:
            out.append(float(event["aggregate_s"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=5)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="round-time-") as tmp:
        row = run_latentfl(args.participants, args.size, args.rounds, secagg=False, dropout=False,
                           root=Path(tmp))
        seconds = aggregate_seconds(Path(tmp) / "logs" / "coordinator.log")
    print_table([row])
    print(f"aggregate_s median {statistics.median(seconds):.4f} min {min(seconds):.4f} "
          f"max {max(seconds):.4f}; load {os.getloadavg()[0]:.1f} (1 min) on "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
