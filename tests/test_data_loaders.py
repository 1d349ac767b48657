"""ImageFolder loading (folder and archive), the decoded-array cache, statistics, built-in set."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from structlog.testing import capture_logs

from data_fixtures import _log_to_current_stderr, _private_cache  # noqa: F401 (autouse)
from latentfl.data import Dataset, ImageSet, channel_stats, load_dataset, to_tensors
from latentfl.errors import DataError


@pytest.fixture(scope="session")
def builtin_mini(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """cifar10-mini decoded once per session into a cache shared by the data test files."""
    cache = tmp_path_factory.getbasetemp() / "latentfl-data-cache"
    return load_dataset("builtin:cifar10-mini", cache_dir=cache)


def _pixel(label: int, index: int, channels: int) -> tuple[int, ...] | int:
    value = (40 * label + 7 * index) % 256
    return value if channels == 1 else (value, 255 - value, (value * 3) % 256)


def write_tree(
    root: Path,
    splits: dict[str, dict[str, int]],
    *,
    size: tuple[int, int] = (6, 5),
    channels: int = 3,
) -> None:
    """Write PNGs, ``splits[split][class] = count``; split "" puts class folders at the root."""
    mode = "L" if channels == 1 else "RGB"
    for split, classes in splits.items():
        for label, (name, count) in enumerate(sorted(classes.items())):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new(mode, size, _pixel(label, i, channels)).save(folder / f"{i:03d}.png")


def write_archive(tree: Path, archive: Path, wrapper: str | None) -> Path:
    """Pack ``tree`` into a .tar.gz, its contents under ``wrapper/`` or at the archive's top."""
    with tarfile.open(archive, "w:gz") as tar:
        for child in sorted(tree.iterdir()):
            tar.add(child, arcname=f"{wrapper}/{child.name}" if wrapper else child.name)
    return archive


def test_folder_with_train_and_test_splits(tmp_path: Path) -> None:
    """A train/test ImageFolder tree gives NHWC uint8 arrays with sorted-class labels."""
    write_tree(tmp_path / "set", {"train": {"dog": 3, "cat": 2}, "test": {"cat": 1, "dog": 2}})
    ds = load_dataset(f"imagefolder:{tmp_path / 'set'}", cache_dir=tmp_path / "c")
    assert ds.name == "set"
    assert ds.train.classes == ("cat", "dog") and ds.num_classes == 2
    assert ds.train.x.shape == (5, 5, 6, 3) and ds.train.x.dtype == np.uint8
    assert ds.image_shape == (3, 5, 6)
    assert ds.train.y.tolist() == [0, 0, 1, 1, 1] and ds.train.y.dtype == np.int64
    assert ds.test is not None and ds.test.y.tolist() == [0, 1, 1]
    assert tuple(ds.train.x[3, 0, 0]) == _pixel(1, 1, 3)


def test_single_split_tree_is_the_train_split(tmp_path: Path) -> None:
    """Class folders directly under the root make a train split and no test split."""
    write_tree(tmp_path / "flat", {"": {"a": 2, "b": 2, "c": 1}})
    ds = load_dataset(f"imagefolder:{tmp_path / 'flat'}", cache_dir=tmp_path / "c")
    assert len(ds.train) == 5 and ds.test is None and ds.train.classes == ("a", "b", "c")


@pytest.mark.parametrize("wrapper", [None, "wrapped"])
def test_archive_matches_folder(tmp_path: Path, wrapper: str | None) -> None:
    """A .tar.gz of a tree, wrapped in one top folder or not, loads as the folder does."""
    write_tree(tmp_path / "t", {"train": {"x": 2, "y": 3}, "test": {"x": 1, "y": 1}})
    archive = write_archive(tmp_path / "t", tmp_path / "t.tar.gz", wrapper)
    a = load_dataset(f"imagefolder:{tmp_path / 't'}", cache_dir=tmp_path / "c")
    b = load_dataset(f"imagefolder:{archive}", cache_dir=tmp_path / "c")
    assert b.name == "t"
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.train.y, b.train.y)
    assert b.test is not None and a.test is not None
    np.testing.assert_array_equal(a.test.x, b.test.x)


def test_wrapped_single_split_archive(tmp_path: Path) -> None:
    """An archive holding one folder of class folders is a single train split."""
    write_tree(tmp_path / "t", {"": {"p": 1, "q": 2}})
    archive = write_archive(tmp_path / "t", tmp_path / "flat.tgz", "flat")
    ds = load_dataset(f"imagefolder:{archive}", cache_dir=tmp_path / "c")
    assert ds.train.classes == ("p", "q") and len(ds.train) == 3 and ds.test is None


def test_grayscale_and_mixed_channels(tmp_path: Path) -> None:
    """All-gray trees load with one channel; gray images among colour ones are widened to RGB."""
    write_tree(tmp_path / "g", {"": {"a": 2, "b": 1}}, channels=1)
    gray = load_dataset(f"imagefolder:{tmp_path / 'g'}", cache_dir=tmp_path / "c")
    assert gray.train.x.shape == (3, 5, 6, 1) and len(gray.mean) == 1
    Image.new("RGB", (6, 5), (1, 2, 3)).save(tmp_path / "g" / "b" / "rgb.png")
    mixed = load_dataset(f"imagefolder:{tmp_path / 'g'}", cache_dir=tmp_path / "c")
    assert mixed.train.x.shape == (4, 5, 6, 3)
    assert np.all(mixed.train.x[0] == mixed.train.x[0, :, :, :1])


def test_channel_stats_match_float_reference(tmp_path: Path) -> None:
    """Histogram-based mean/std equal numpy's float64 mean/std over the train split."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(7, 4, 5, 3), dtype=np.uint8)
    mean, std = channel_stats(x)
    ref = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 1, 2)), rtol=1e-12)


def test_dataset_stats_come_from_train_split(tmp_path: Path) -> None:
    """Dataset.mean/std are the train split's statistics, not the test split's."""
    write_tree(tmp_path / "s", {"train": {"a": 3, "b": 2}, "test": {"a": 4}})
    ds = load_dataset(f"imagefolder:{tmp_path / 's'}", cache_dir=tmp_path / "c")
    mean, std = channel_stats(ds.train.x)
    np.testing.assert_allclose(ds.mean, mean)
    np.testing.assert_allclose(ds.std, std)


def test_to_tensors_normalises_nchw(tmp_path: Path) -> None:
    """to_tensors gives float32 NCHW (x/255 - mean)/std and int64 labels."""
    images = ImageSet(
        x=np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3),
        y=np.array([1, 0]),
        classes=("a", "b"),
    )
    x, y = to_tensors(images, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    assert x.shape == (2, 3, 2, 3) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous() and images.x[1, 0, 2, 1] == 25  # the uint8 source is untouched
    expected = (images.x[1, 0, 2, 1] / 255.0 - 0.2) / 0.25
    assert x[1, 1, 0, 2].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(DataError, match="one per channel"):
        to_tensors(images, (0.5,), (0.5,))


def test_subset_keeps_classes() -> None:
    """subset picks by index and keeps class names; labels become int64, non-integers fail."""
    images = ImageSet(
        x=np.zeros((4, 2, 2, 1), np.uint8), y=np.array([0, 1, 2, 3]), classes=tuple("abcd")
    )
    part = images.subset([3, 1])
    assert part.y.tolist() == [3, 1] and len(part) == 2 and part.classes == tuple("abcd")
    assert (
        ImageSet(x=images.x, y=np.array([0, 1, 2, 3], np.int32), classes=("a",)).y.dtype == np.int64
    )
    with pytest.raises(DataError, match="expected integers"):
        ImageSet(x=images.x, y=np.zeros(4), classes=("a",))


def test_corrupt_image_is_skipped_with_warning(tmp_path: Path) -> None:
    """An undecodable image is skipped; a warning names its path and a count is logged."""
    write_tree(tmp_path / "d", {"train": {"a": 2, "b": 2}})
    bad = tmp_path / "d" / "train" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with capture_logs() as logs:
        ds = load_dataset(f"imagefolder:{tmp_path / 'd'}", cache_dir=tmp_path / "c")
    assert len(ds.train) == 4
    named = [e for e in logs if e["event"] == "unreadable image skipped"]
    assert [e["path"] for e in named] == [str(bad)] and named[0]["log_level"] == "warning"
    counted = [e for e in logs if e["event"] == "unreadable images skipped"]
    assert counted[0]["count"] == 1 and counted[0]["split"] == "train"


def test_split_with_only_corrupt_images_fails(tmp_path: Path) -> None:
    """A split whose every image is unreadable is a DataError, not an empty dataset."""
    write_tree(tmp_path / "d", {"train": {"a": 1}})
    (tmp_path / "d" / "test" / "a").mkdir(parents=True)
    (tmp_path / "d" / "test" / "a" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="split 'test' .* no readable image"):
        load_dataset(f"imagefolder:{tmp_path / 'd'}", cache_dir=tmp_path / "c")


def test_layout_and_path_errors(tmp_path: Path) -> None:
    """Missing paths, trees without class folders, unknown schemes and odd sizes raise DataError."""
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "a.png")
    Image.new("RGB", (4, 4)).save(flat / "b.png")
    archive = write_archive(flat, tmp_path / "flat.tar.gz", None)
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(f"imagefolder:{archive}")
    with pytest.raises(DataError, match="unknown scheme 'foo'"):
        load_dataset("foo:bar")
    with pytest.raises(DataError, match="expected SCHEME:TARGET"):
        load_dataset(str(flat))
    with pytest.raises(DataError, match="unknown built-in dataset"):
        load_dataset("builtin:imagenet")
    write_tree(tmp_path / "sizes", {"": {"a": 1}})
    Image.new("RGB", (9, 9)).save(tmp_path / "sizes" / "a" / "big.png")
    with pytest.raises(DataError, match="9x9 pixels"):
        load_dataset(f"imagefolder:{tmp_path / 'sizes'}")


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "datasets").glob("*"))


def test_cache_is_reused_and_invalidated_by_mtime(tmp_path: Path) -> None:
    """The second load reads the cache entry; touching the source makes a new entry."""
    write_tree(tmp_path / "t", {"train": {"x": 2, "y": 2}})
    archive = write_archive(tmp_path / "t", tmp_path / "t.tar.gz", "t")
    cache = tmp_path / "c"
    first = load_dataset(f"imagefolder:{archive}", cache_dir=cache)
    [entry] = _entries(cache)
    with capture_logs() as logs:
        second = load_dataset(f"imagefolder:{archive}", cache_dir=cache)
    assert not [e for e in logs if e["event"] == "dataset cached"]
    np.testing.assert_array_equal(first.train.x, second.train.x)
    assert first.mean == second.mean
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_dataset(f"imagefolder:{archive}", cache_dir=cache)
    assert len(_entries(cache)) == 2 and entry in _entries(cache)


def test_cache_dir_argument_env_and_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cache_dir wins over LATENTFL_CACHE_DIR, which wins over ~/.cache/latentfl."""
    write_tree(tmp_path / "t", {"": {"x": 1}})
    spec = f"imagefolder:{tmp_path / 't'}"
    load_dataset(spec, cache_dir=tmp_path / "arg")
    assert len(_entries(tmp_path / "arg")) == 1 and not (tmp_path / "env-cache").exists()
    load_dataset(spec)
    assert len(_entries(tmp_path / "env-cache")) == 1
    monkeypatch.delenv("LATENTFL_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    load_dataset(spec)
    assert len(_entries(tmp_path / "home" / ".cache" / "latentfl")) == 1


def test_corrupt_cache_entry_is_rebuilt(tmp_path: Path) -> None:
    """A damaged cache file is ignored with a warning, decoded again and rewritten atomically."""
    write_tree(tmp_path / "t", {"": {"x": 2, "y": 1}})
    spec = f"imagefolder:{tmp_path / 't'}"
    cache = tmp_path / "c"
    good = load_dataset(spec, cache_dir=cache)
    [entry] = _entries(cache)
    entry.write_bytes(entry.read_bytes()[:100])
    with capture_logs() as logs:
        again = load_dataset(spec, cache_dir=cache)
    assert any(e["event"] == "corrupt cache entry ignored" for e in logs)
    np.testing.assert_array_equal(good.train.x, again.train.x)
    assert _entries(cache) == [entry]
    with capture_logs() as logs:
        load_dataset(spec, cache_dir=cache)
    assert not any(e["event"] == "corrupt cache entry ignored" for e in logs)


def test_unwritable_cache_still_loads(tmp_path: Path) -> None:
    """A cache location that cannot be created only costs a warning, not the load."""
    write_tree(tmp_path / "t", {"": {"x": 1}})
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with capture_logs() as logs:
        ds = load_dataset(f"imagefolder:{tmp_path / 't'}", cache_dir=blocker)
    assert len(ds.train) == 1
    assert any(e["event"] == "dataset cache not written" for e in logs)


def test_builtin_cifar10_mini(builtin_mini: Dataset) -> None:
    """builtin:cifar10-mini ships in the package: 5,000 train, 1,000 test, 10 classes, 3x32x32."""
    ds = builtin_mini
    assert (len(ds.train), len(ds.test or ())) == (5000, 1000)
    assert ds.num_classes == 10 and ds.image_shape == (3, 32, 32)
    assert ds.train.classes[0] == "airplane" and ds.train.classes[-1] == "truck"
    assert np.bincount(ds.train.y).tolist() == [500] * 10
    np.testing.assert_allclose(ds.mean, (0.491, 0.481, 0.444), atol=0.005)


def test_a_missing_relative_data_path_says_relative_to_what(tmp_path: Path, monkeypatch) -> None:
    """A relative dataset path that does not exist names the working directory it was taken
    from, so a user whose config sits elsewhere sees why."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"working directory {tmp_path}, not from the config"):
        load_dataset("imagefolder:images/site-a")
