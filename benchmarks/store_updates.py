"""Time the coordinator's update storage: ``StateStore.save_updates`` of one group of updates.

Each update is ConvNet-3 width 128 (1.28 MB of safetensors), decoded and checked as the intake
does, then stored in a fresh state folder as the group commit stores it (files written, fsynced
together, renamed, the folder fsynced once). The median and minimum of ``--repeats`` groups are
printed. To compare with a tree from before the payload was stored as received (issue 27),
put that tree's ``src`` first on PYTHONPATH: its ``save_updates`` took (update, digest) pairs
and re-serialised the tensors, which this script detects.

    python benchmarks/store_updates.py --updates 10 --repeats 11
    PYTHONPATH=/path/to/old/src python benchmarks/store_updates.py --updates 10 --repeats 11
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import statistics
import tempfile
import time
from pathlib import Path

from latentfl.models import model_manifest
from latentfl.platform.coordinator.store import StateStore
from latentfl.platform.protocol import pack_tensors, unpack_tensors
from latentfl.strategies import ModelSpec, Update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=10, help="Updates stored together.")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--dir", type=Path, default=None,
                        help="Where the state folders go (the disk measured); default: tmp.")
    args = parser.parse_args()
    model = ModelSpec("convnet", options={"width": 128, "depth": 3}).build()
    manifest = model_manifest(model)
    stores_payload = "payload" in inspect.getsource(StateStore.save_updates)
    times = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            store = StateStore(Path(tmp))
            items = []
            for i in range(args.updates):
                payload = pack_tensors({k: v + 0.01 * i for k, v in model.state_dict().items()})
                update = Update(f"p{i:03d}", 1, unpack_tensors(payload, manifest),
                                num_examples=10, num_steps=1)
                digest = hashlib.sha256(payload).hexdigest()
                items.append((update, digest, payload) if stores_payload else (update, digest))
            started = time.perf_counter()
            store.save_updates(items)
            times.append(time.perf_counter() - started)
    layout = "payload as received" if stores_payload else "tensors re-serialised"
    print(f"{layout}: {args.updates} updates of {len(payload)} bytes, save_updates median "
          f"{1000 * statistics.median(times):.1f} ms, min {1000 * min(times):.1f} ms "
          f"({args.repeats} groups)")


if __name__ == "__main__":
    main()
