"""Config loading: TOML -> frozen dataclasses, every problem reported in one clear message."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from latentfl.config import describe, from_dict, load_config, option, to_dict, to_toml, write_config
from latentfl.errors import ConfigError, DataError


@dataclass(frozen=True)
class Inner:
    lr: float = option(0.1, help="Learning rate.", min=0.0, min_exclusive=True)
    kind: Literal["a", "b"] = option("a", help="Kind.")


@dataclass(frozen=True)
class Outer:
    rounds: int = option(3, help="Rounds.", min=1)
    name: str = option("x", help="Name.")
    state_dir: Path | None = option(None, help="State folder.")
    sizes: tuple[int, ...] = option((1, 2), help="Sizes.")
    extra: dict[str, int] = option({}, help="Extra.")
    inner: Inner = option(Inner(), help="Inner section.")

    def problems(self) -> list[str]:
        return ["'name' must not be 'bad'."] if self.name == "bad" else []


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_and_values_are_converted(tmp_path):
    """Given values are typed, defaults fill the rest, relative paths resolve next to the file."""
    cfg = load_config(
        write(tmp_path, 'rounds = 5\nstate_dir = "st"\nsizes = [3]\n[inner]\nlr = 1\n'), Outer
    )
    assert cfg.rounds == 5 and cfg.name == "x" and cfg.sizes == (3,)
    assert cfg.state_dir == tmp_path / "st"
    assert cfg.inner == Inner(lr=1.0, kind="a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rounds = 2  # type: ignore[misc]


def test_all_problems_reported_together_with_file_and_key(tmp_path):
    """Unknown keys, wrong types, bad choices and bounds are all named in one error."""
    path = write(tmp_path, 'rounds = 0\nname = 3\ncolour = "red"\n[inner]\nlr = -1.0\nkind = "c"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, Outer)
    text = str(info.value)
    assert str(path) in text
    for fragment in (
        "'rounds' = 0",
        "expected a value >= 1",
        "'name' = 3; expected a string",
        "unknown key 'colour'",
        "'inner.lr' = -1.0",
        "'inner.kind' = 'c'",
    ):
        assert fragment in text


def test_bool_is_not_an_int_and_cross_field_checks_run():
    """true is refused for an integer; a schema's problems() is applied."""
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(Outer, {"rounds": True})
    with pytest.raises(ConfigError, match="must not be 'bad'"):
        from_dict(Outer, {"name": "bad"})


def test_missing_file_and_bad_toml(tmp_path):
    """A missing file and a syntax error each give one sentence naming the file."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", Outer)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "rounds = = 3"), Outer)


def test_mutable_defaults_are_not_shared_and_describe_lists_every_option():
    """Dict defaults are per instance; describe() documents nested keys with help text."""
    assert Outer().extra is not Outer().extra
    keys = [row[0] for row in describe(Outer)]
    assert "inner.lr" in keys and "rounds" in keys
    assert to_dict(Outer())["inner"] == {"lr": 0.1, "kind": "a"}


def test_written_toml_reads_back_equal(tmp_path):
    """write_config's TOML (quotes, unicode, odd keys, nested tables) reads back as the object."""
    obj = Outer(rounds=7, name='a "quoted" \\ näme\n', state_dir=tmp_path / "state dir",
                sizes=(3, 4), extra={"odd key": 1, "plain": 2}, inner=Inner(lr=2.5e-05, kind="b"))
    path = write_config(tmp_path / "c.toml", obj, comment="latentfl x --config c.toml")
    assert path.read_text().startswith("# latentfl x --config c.toml\nrounds = 7\n")
    assert load_config(path, Outer) == obj
    assert load_config(write_config(tmp_path / "d.toml", Outer()), Outer) == Outer()


def test_a_value_without_a_toml_form_is_refused():
    """A value TOML cannot hold (here a set) is a TypeError naming it, not a silent repr."""
    with pytest.raises(TypeError, match="no TOML form"):
        to_toml({"a": {1, 2}})


def _site_config(folder: Path, data: str) -> Path:
    """A participant config in ``folder`` naming ``data`` (keys and roster need not exist to
    load it)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write(folder, f'session = "s"\nkey_dir = "keys/p00"\nroster = "roster.toml"\n'
                         f'coordinator = "tcp://127.0.0.1:7700"\ndata = "{data}"\n')


def test_participant_data_is_relative_to_its_config_file_not_the_working_directory(
        tmp_path, monkeypatch):
    """`data = "npz:train.npz"` in site/p00.toml reads site/train.npz when the agent runs
    from another folder; `builtin:` stays a name; a missing file is named by its full path."""
    from latentfl.platform.participant import ParticipantConfig
    from latentfl.platform.participant.local_step import load_local_data

    site = tmp_path / "site"
    site.mkdir()
    np.savez(site / "train.npz", x=np.zeros((4, 8, 8, 3), np.uint8),
             y=np.array([0, 1, 0, 1]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(_site_config(site, "npz:train.npz"), ParticipantConfig)
    assert config.data == f"npz:{site / 'train.npz'}"
    assert len(load_local_data(config).y) == 4
    config = load_config(_site_config(site, "builtin:cifar10-mini"), ParticipantConfig)
    assert config.data == "builtin:cifar10-mini"
    config = load_config(_site_config(site, "imagefolder:missing"), ParticipantConfig)
    with pytest.raises(DataError, match=f"dataset path '{site / 'missing'}'"):
        load_local_data(config)
