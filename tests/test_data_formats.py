"""The .npz loader and the non-executing reader of torchvision's CIFAR-10 python files."""

from __future__ import annotations

import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import _log_to_current_stderr, _private_cache  # noqa: F401 (autouse)
from latentfl.data import load_dataset
from latentfl.data._cifar_pickle import parse_plain_pickle
from latentfl.errors import DataError

# --- .npz -------------------------------------------------------------------------------------


def test_npz_nhwc_with_test_split_and_classes(tmp_path: Path) -> None:
    """x/y plus x_test/y_test/classes load as given, with stats from x."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "set.npz"
    np.savez(
        path,
        x=x,
        y=np.array([0, 1, 2, 0, 1, 2], dtype=np.int32),
        x_test=x[:2],
        y_test=np.array([2, 2]),
        classes=np.array(["r", "g", "b"]),
    )
    ds = load_dataset(f"npz:{path}")
    assert ds.name == "set" and ds.train.classes == ("r", "g", "b")
    np.testing.assert_array_equal(ds.train.x, x)
    assert ds.train.y.dtype == np.int64 and ds.test is not None and ds.test.y.tolist() == [2, 2]
    np.testing.assert_allclose(ds.mean, (x / 255.0).mean(axis=(0, 1, 2)))


def test_npz_nhw_becomes_one_channel(tmp_path: Path) -> None:
    """A 3-D x is read as single-channel images; classes default to "0".."max label"."""
    path = tmp_path / "gray.npz"
    np.savez(path, x=np.zeros((3, 5, 5), np.uint8), y=np.array([0, 3, 1]))
    ds = load_dataset(f"npz:{path}")
    assert ds.image_shape == (1, 5, 5) and ds.train.classes == ("0", "1", "2", "3")
    assert ds.test is None


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 4, 4, 3), np.uint8)}, r"lacks arrays \['y'\]"),
        (
            {"x": np.zeros((2, 4, 4, 3), np.float32), "y": np.zeros(2, int)},
            "dtype float32; expected uint8",
        ),
        (
            {"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.zeros(3, int)},
            r"shape \(3,\); expected \(2,\)",
        ),
        ({"x": np.zeros((2, 4), np.uint8), "y": np.zeros(2, int)}, "expected \\(N, H, W, C\\)"),
        (
            {"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(2, float)},
            "expected an integer dtype",
        ),
        ({"x": np.zeros((1, 4, 4), np.uint8), "y": np.array([-1])}, "expected labels >= 0"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    """Missing keys, wrong dtypes and mismatched shapes are one-sentence DataErrors."""
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(f"npz:{path}")


def test_npz_not_a_zip(tmp_path: Path) -> None:
    """A file that is not an .npz at all is a DataError."""
    path = tmp_path / "junk.npz"
    path.write_bytes(b"hello")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(f"npz:{path}")


# --- CIFAR-10 python files ---------------------------------------------------------------------
# The writer below emits the byte stream Python 2's cPickle (protocol 2) produced for the
# official CIFAR-10 files, opcode by opcode, so the test needs no pickle module.


def _p2(obj: object) -> bytes:
    if isinstance(obj, dict):
        body = b"".join(_p2(k) + _p2(v) for k, v in obj.items())
        return b"}q\x00(" + body + b"u"
    if isinstance(obj, list):
        return b"]q\x01(" + b"".join(_p2(v) for v in obj) + b"e"
    if isinstance(obj, bytes):
        if len(obj) < 256:
            return b"U" + bytes([len(obj)]) + obj
        return b"T" + struct.pack("<i", len(obj)) + obj
    if isinstance(obj, int):
        if 0 <= obj < 256:
            return b"K" + bytes([obj])
        if 0 <= obj < 65536:
            return b"M" + struct.pack("<H", obj)
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, np.ndarray):
        assert obj.dtype == np.uint8 and obj.ndim == 2
        return (
            b"cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03"
            + b"K\x00\x85q\x04U\x01bq\x05\x87q\x06Rq\x07(K\x01"
            + _p2(obj.shape[0])
            + _p2(obj.shape[1])
            + b"\x86q\x08"
            + b"cnumpy\ndtype\nq\x09U\x02u1K\x00K\x01\x87Rq\x0a"
            + b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            + b"\x89"
            + _p2(obj.tobytes())
            + b"tb"
        )
    raise TypeError(type(obj))


def pickle_bytes(obj: object) -> bytes:
    return b"\x80\x02" + _p2(obj) + b"."


CLASSES = [b"airplane", b"automobile", b"bird"]


def write_cifar(folder: Path, per_batch: int = 2) -> dict[str, np.ndarray]:
    """Write a tiny cifar-10-batches-py folder; returns the expected NHWC arrays."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": CLASSES, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle_bytes(meta))
    expected: dict[str, list[np.ndarray]] = {
        "train_x": [],
        "train_y": [],
        "test_x": [],
        "test_y": [],
    }
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, len(CLASSES), per_batch).tolist()
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": rows,
            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle_bytes(batch))
        split = "test" if name == "test_batch" else "train"
        expected[f"{split}_x"].append(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        expected[f"{split}_y"].append(np.array(labels))
    return {k: np.concatenate(v) for k, v in expected.items()}


def test_plain_pickle_reader_reads_cifar_batch_dict() -> None:
    """The reader returns the dict, ints, byte strings and numpy array a batch file holds."""
    rows = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    out = parse_plain_pickle(pickle_bytes({b"labels": [7, 300, 70000], b"data": rows}), "mem")
    assert out["labels"] == [7, 300, 70000]
    np.testing.assert_array_equal(out["data"], rows)
    assert parse_plain_pickle(b"\x80\x02(U\x03abcq\x05h\x05t.", "memo") == (b"abc", b"abc")


def test_plain_pickle_reader_refuses_code() -> None:
    """A pickle naming any callable outside the numpy array globals is refused, not run."""
    evil = b"\x80\x02cos\nsystem\nU\x04trueR."
    with pytest.raises(DataError, match="global os.system is not allowed"):
        parse_plain_pickle(evil, "evil")
    with pytest.raises(DataError, match="opcode .* is not allowed"):
        parse_plain_pickle(b"\x80\x02\x81.", "newobj")
    with pytest.raises(DataError, match="file ends early"):
        parse_plain_pickle(pickle_bytes({b"a": b"x" * 300})[:50], "cut")
    with pytest.raises(DataError, match="malformed"):
        parse_plain_pickle(b"\x80\x02]q\x01h\x01a.", "self-containing list")


@pytest.mark.parametrize("where", ["folder", "parent", "archive"])
def test_cifar10_python_files(tmp_path: Path, where: str) -> None:
    """cifar10:PATH reads the batches folder, its parent or its .tar.gz into NHWC arrays."""
    expected = write_cifar(tmp_path / "cifar-10-batches-py")
    target = {"folder": tmp_path / "cifar-10-batches-py", "parent": tmp_path}.get(where)
    if target is None:
        target = tmp_path / "cifar-10-python.tar.gz"
        with tarfile.open(target, "w:gz") as tar:
            tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    ds = load_dataset(f"cifar10:{target}", cache_dir=tmp_path / "cache")
    assert ds.train.classes == ("airplane", "automobile", "bird") and ds.image_shape == (3, 32, 32)
    np.testing.assert_array_equal(ds.train.x, expected["train_x"])
    np.testing.assert_array_equal(ds.train.y, expected["train_y"])
    assert ds.test is not None
    np.testing.assert_array_equal(ds.test.x, expected["test_x"])
    np.testing.assert_array_equal(ds.test.y, expected["test_y"])


def test_cifar10_missing_files(tmp_path: Path) -> None:
    """A folder without the six batch files and batches.meta is a DataError listing them."""
    write_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"lacks CIFAR-10 files \['data_batch_3'\]"):
        load_dataset(f"cifar10:{tmp_path / 'c'}")
