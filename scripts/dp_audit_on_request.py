"""An operator asks two sites of a running consortium for a one-run DP audit (docs/audits.md).

    python scripts/dp_audit_on_request.py WORKDIR

Three participants on 127.0.0.1 (separate processes, real keys) train FedAvg with DP-SGD
(noise multiplier 1.0) for 3 rounds. p00 allows DP audits on request (``[audit] dp_on_request
= true``), p01 keeps the default (declines). The operator sends ``latentfl admin request-audit
dp-sgd`` to both; the script waits for p01's refusal and p00's aggregates, prints the timings
and what the coordinator stored, then renders ``latentfl report`` into WORKDIR/report.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from latentfl.config import write_config
from latentfl.data import PartitionConfig
from latentfl.platform.local import LocalConsortium
from latentfl.platform.supervisor import wait_until

STRATEGY = {"method": "fedavg", "model": {"name": "convnet", "options": {"width": 16, "depth": 2}},
            "local": {"epochs": 1, "batch_size": 64, "lr": 0.05}}
PRIVACY = {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0}, "policy": {"delta": 1e-5}}
REQUEST = ["--canaries", "1000", "--epochs", "3", "--width", "16"]


def main(root: Path) -> None:
    with LocalConsortium(root, 3, partition=PartitionConfig(alpha=0.5), operators=["ops"],
                         coordinator={"rounds": 3, "device": "cpu", "linger_s": 300.0,
                                      "strategy": STRATEGY}) as consortium:
        consortium.start_coordinator()
        for pid in consortium.ids:
            policy = {"audit": {"dp_on_request": True}} if pid == "p00" else {}
            consortium.start_participant(pid, consortium.participant_config(
                pid, state_dir=str(root / f"agent-{pid}"), privacy=PRIVACY, **policy))
        admin = write_config(root / "ops.toml", consortium.admin_config("ops"))
        start = time.time()
        for pid in ("p00", "p01"):
            subprocess.run(["latentfl", "admin", "--config", str(admin), "request-audit", "dp-sgd",
                            "--participant", pid, *REQUEST], check=True)

        def state(pid: str) -> str | None:
            path = consortium.state_dir / "audit_requests.json"
            requests = json.loads(path.read_text())["requests"] if path.exists() else []
            return next((r["state"] for r in requests if r["participant"] == pid), None)

        wait_until(lambda: state("p01") == "declined", 300, "p01's refusal")
        print(f"p01 declined {time.time() - start:.1f} s after the requests")
        wait_until(lambda: state("p00") == "answered", 1200, "p00's aggregates")
        print(f"p00 answered {time.time() - start:.1f} s after the requests")
        stored = consortium.state_dir / "audits" / "dp-audit" / "p00.json"
        print(f"stored {stored} ({stored.stat().st_size} bytes):")
        print(json.dumps(json.loads(stored.read_text())["aggregates"]["result"], indent=1))
        status = consortium.state_dir / "status.json"
        wait_until(lambda: json.loads(status.read_text())["phase"] == "finished", 1200, "3 rounds")
        subprocess.run(["latentfl", "report", "--config", str(consortium.config_path("coordinator")),
                        "--out", str(root / "report")], check=True)
        consortium.stop()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
