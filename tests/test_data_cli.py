"""``latentfl data inspect`` and ``latentfl data partition``, output and exit statuses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
from PIL import Image

from latentfl.cli import main


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's ~/.cache: the default cache dir points into tmp_path."""
    monkeypatch.setenv("LATENTFL_CACHE_DIR", str(tmp_path / "env-cache"))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() points structlog at this test's captured stderr; undo that for later tests."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session-wide cache where cifar10-mini is decoded once for all data tests."""
    return str(tmp_path_factory.getbasetemp() / "latentfl-data-cache")


PARTITION = ["partition", "builtin:cifar10-mini", "--clients", "10", "--scheme", "dirichlet"]


def test_inspect_builtin(capsys: pytest.CaptureFixture[str], shared_cache: str) -> None:
    """inspect prints images per split and class, the image shape and train mean/std."""
    assert main(["data", "inspect", "builtin:cifar10-mini", "--cache-dir", shared_cache]) == 0
    out = capsys.readouterr().out
    assert "32x32x3" in out and "train 5,000 images, test 1,000 images" in out
    assert any(line.split() == ["airplane", "500", "100"] for line in out.splitlines())
    assert "channel mean (train)  0.491" in out


def test_inspect_json(capsys: pytest.CaptureFixture[str], shared_cache: str) -> None:
    """inspect --json gives the same facts as a JSON object."""
    assert (
        main(["data", "inspect", "builtin:cifar10-mini", "--cache-dir", shared_cache, "--json"])
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == {"train": 5000, "test": 1000} and len(info["classes"]) == 10
    assert info["image_shape"] == {"height": 32, "width": 32, "channels": 3}
    assert info["per_class"]["test"] == [100] * 10


def test_partition_table_is_reproducible(
    capsys: pytest.CaptureFixture[str], shared_cache: str
) -> None:
    """partition prints a client x class table with totals; the same seed prints the same table."""
    argv = ["data", *PARTITION, "--alpha", "0.1", "--seed", "0", "--cache-dir", shared_cache]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first
    lines = first.splitlines()
    assert lines[1].split()[:2] == ["client", "airplane"] and lines[1].split()[-1] == "total"
    total = next(line for line in lines if line.startswith("total")).split()
    assert total[1:] == ["500"] * 10 + ["5000"]
    sizes = [int(line.split()[-1]) for line in lines[2:12]]
    assert len(sizes) == 10 and min(sizes) >= 10 and sum(sizes) == 5000


def test_partition_json(capsys: pytest.CaptureFixture[str], shared_cache: str) -> None:
    """partition --json lists per-client counts; every client meets min_size."""
    argv = ["data", *PARTITION, "--alpha", "0.1", "--seed", "2", "--min-size", "50", "--json"]
    assert main([*argv, "--cache-dir", shared_cache]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scheme"] == "dirichlet" and out["min_size"] == 50 and out["total"] == 5000
    assert len(out["clients"]) == 10 and all(c["total"] >= 50 for c in out["clients"])
    assert sum(c["total"] for c in out["clients"]) == 5000


def test_partition_shards(capsys: pytest.CaptureFixture[str], shared_cache: str) -> None:
    """--scheme shards --classes-per-client 2 gives each client two classes."""
    argv = ["data", "partition", "builtin:cifar10-mini", "--clients", "5", "--scheme", "shards"]
    assert main([*argv, "--classes-per-client", "2", "--json", "--cache-dir", shared_cache]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [sum(1 for n in c["counts"] if n) for c in out["clients"]] == [2] * 5


def _flat_archive(tmp_path: Path) -> Path:
    import tarfile

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with tarfile.open(tmp_path / "flat.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "a.png", arcname="a.png")
    return tmp_path / "flat.tar.gz"


def _corrupt_tree(tmp_path: Path) -> Path:
    (tmp_path / "bad" / "cls").mkdir(parents=True)
    (tmp_path / "bad" / "cls" / "x.png").write_bytes(b"not an image")
    return tmp_path / "bad"


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    np.savez(tmp_path / "d.npz", **arrays)
    return tmp_path / "d.npz"


@pytest.mark.parametrize(
    ("make_spec", "message"),
    [
        (lambda p: f"imagefolder:{p / 'nope'}", "does not exist"),
        (lambda p: f"imagefolder:{_flat_archive(p)}", "no class folders"),
        (lambda p: f"imagefolder:{_corrupt_tree(p)}", "no readable image"),
        (lambda p: "tfds:cifar10", "unknown scheme 'tfds'"),
        (lambda p: f"npz:{_npz(p, x=np.zeros((2, 4, 4), np.uint8))}", "lacks arrays"),
        (lambda p: f"npz:{_npz(p, x=np.zeros((2, 4, 4)), y=np.zeros(2, int))}", "expected uint8"),
        (
            lambda p: f"npz:{_npz(p, x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(5, int))}",
            "one per image",
        ),
    ],
)
@pytest.mark.parametrize("command", ["inspect", "partition"])
def test_bad_data_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_spec, message: str, command: str
) -> None:
    """Bad paths, layouts, images, schemes and arrays exit 2 with one 'latentfl: error:' line."""
    argv = ["data", command, make_spec(tmp_path)]
    if command == "partition":
        argv += ["--clients", "2"]
    assert main(argv) == 2
    err = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("latentfl: error:")
    ]
    assert len(err) == 1 and message in err[0]


def test_infeasible_partition_exits_2(
    capsys: pytest.CaptureFixture[str], shared_cache: str
) -> None:
    """A min_size no split can meet is a user error: exit 2 and a sentence saying what to change."""
    argv = ["data", *PARTITION, "--min-size", "600", "--cache-dir", shared_cache]
    assert main(argv) == 2
    assert "lower --min-size or use fewer clients" in capsys.readouterr().err
