"""The options several commands share are built once (vh/shell.py): the same option means the
same type, bounds and metavar in every command, and a default is always shown in --help."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from vh.cli import main
from vh.extract import trunk as T
from vh.shell import PRESET_NAMES


def commands(group: click.Group = main, path: str = "vh") -> list[tuple[str, click.Command]]:
    """(``vh trunk init``, the command) for every command, nested groups included."""
    out = []
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out += commands(cmd, f"{path} {name}")
        else:
            out.append((f"{path} {name}", cmd))
    return out


def options(name: str) -> list[tuple[str, click.Option]]:
    """(command path, the option) for every option spelled ``name`` in any command."""
    return [(p, o) for p, c in commands() for o in c.params if name in getattr(o, "opts", ())]


def default_of(o: click.Option):
    """The option's default value (None when it has none: click marks that with a sentinel)."""
    d = o.default
    return d if isinstance(d, (str, int, tuple)) and not isinstance(d, bool) else None


FOLDERS = ["--out", "--dataset", "--cache", "--workdir", "--rebuild"]
FILES = ["--md", "--benchmarks", "--settings", "--config"]


@pytest.mark.parametrize(
    "name,file_dir",
    [(n, (False, True)) for n in FOLDERS] + [(n, (True, False)) for n in FILES],
)
def test_path_options_take_folders_or_files(name, file_dir):
    """Every folder option takes a folder only, every file option a file only."""
    found = options(name)
    assert found, name
    for path, o in found:
        assert isinstance(o.type, click.Path), (path, name)
        assert (o.type.file_okay, o.type.dir_okay) == file_dir, (path, name)


def test_every_preset_option_offers_the_trunk_presets():
    found = options("--preset")
    assert len(found) >= 5  # trunk init, trunk train, bench extract, bench gpu, bench trunk-train
    assert PRESET_NAMES == tuple(T.PRESETS)
    for path, o in found:
        assert tuple(o.type.choices) == PRESET_NAMES, path
        default = default_of(o)
        defaults = default if isinstance(default, tuple) else (default,)
        assert set(defaults) - {None} <= set(PRESET_NAMES), path


def test_weight_seeds_are_int32_with_a_default_of_0():
    # numpy, torch and JAX all take seeds in [0, 2**31 - 1]
    for cmd in ("vh trunk init", "vh trunk show", "vh export"):
        (o,) = [o for p, o in options("--seed") if p == cmd]
        assert (o.type.min, o.type.max, o.default) == (0, 2**31 - 1, 0), cmd


def test_trunk_reading_commands_take_trust_pickle():
    have = {p for p, _ in options("--trust-pickle")}
    assert {"vh extract", "vh export", "vh demo", "vh trunk show"} <= have


@pytest.mark.parametrize("path, cmd", commands(), ids=[p for p, _ in commands()])
def test_shared_options_show_their_defaults(path, cmd):
    # every shared option (folders, files, presets) and every count says its default in --help
    names = {*FOLDERS, *FILES, "--preset"}
    r = CliRunner().invoke(main, [*path.split()[1:], "--help"])
    assert r.exit_code == 0, r.output
    for o in cmd.params:
        shared = names & set(getattr(o, "opts", ())) or isinstance(o.type, click.IntRange)
        d = default_of(o)
        if shared and d not in (None, (), False):
            assert o.show_default, (path, o.opts)
            text = ", ".join(d) if isinstance(d, tuple) else str(d)
            assert f"default: {text}" in " ".join(r.output.split()), (path, o.opts)
