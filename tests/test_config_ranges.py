"""Every config value is range-checked when the config is loaded (issue 10, item 5).

Three layers of tests:

* generated from the declarations in ``vh/config.py``: for every bound of every ranged field,
  a value just inside loads and a value just outside is refused naming the dotted key;
* hand-written: the cases the issue reported (negative lr, ``eval.ci = 1.5``, ...), written
  out here so that the suite does not only compare the code with itself;
* the CLI: one case per command class, refused with one ``error:`` line before anything is
  created, and the corrected command then works.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import typing
from pathlib import Path

import pytest
from conftest import FIT_SETS, TINY, assert_one_line_error, invoke

from vh import config as C
from vh.errors import VhError

# --------------------------------------------------------------------------- helpers


def ranged_fields(cls: type = C.Config, prefix: str = "") -> list[tuple[str, type, C.Range]]:
    """(dotted key, type, range) of every field with a declared range, recursively."""
    out, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += ranged_fields(tp, f"{prefix}{f.name}.")
        elif C.field_range(f) is not None:
            out.append((prefix + f.name, tp, C.field_range(f)))
    return out


def default_of(key: str):
    node = C.Config()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def toml(value) -> str:
    """``value`` as TOML text for ``--set`` (floats keep every bit through repr)."""
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def refused(sets: list[str], *names: str) -> VhError:
    """Loading ``sets`` raises a one-line VhError whose line names every one of ``names``."""
    with pytest.raises(VhError) as e:
        C.load_config(sets=sets)
    line = e.value.line()
    assert "\n" not in line
    for n in names:
        assert n in line, (n, line)
    return e.value


def companions(key: str, value) -> list[str]:
    """Other keys a value needs to satisfy the rules between fields (fractions sum to 1)."""
    split = ("fit.split.train", "fit.split.val", "fit.split.test")
    if key in split:
        a, b = (k for k in split if k != key)
        return [f"{a}={toml(1.0 - value)}", f"{b}=0.0"]
    return []


def elem_type(tp) -> type:
    """int or float: the numeric type of a field (of its elements, for a list)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is tuple:
        return args[0]
    return args[0] if args else tp


def beside(x: float, *, is_int: bool, up: bool) -> float:
    """The next value after ``x`` upwards or downwards (the next int, or the next float)."""
    if is_int:
        return int(x) + (1 if up else -1)
    return math.nextafter(float(x), math.inf if up else -math.inf)


def bound_cases() -> list[tuple[str, object, bool]]:
    """(key, value, loads?) just inside and just outside every declared numeric bound."""
    cases = []
    for key, tp, r in ranged_fields():
        is_int = elem_type(tp) is int
        for name, bound in (("ge", r.ge), ("gt", r.gt), ("le", r.le), ("lt", r.lt)):
            if bound is None:
                continue
            lower = name in ("ge", "gt")  # outside a lower bound is below it
            edge = int(bound) if is_int else float(bound)
            if name in ("ge", "le"):  # inclusive: the bound itself is inside
                inside, outside = edge, beside(edge, is_int=is_int, up=not lower)
            else:
                inside, outside = beside(edge, is_int=is_int, up=lower), edge
            for value, ok in ((inside, True), (outside, False)):
                if typing.get_origin(tp) is tuple:  # the probe goes to the end it bounds
                    elems = list(default_of(key))
                    elems[0 if lower else -1] = value
                    value = tuple(elems)
                cases.append((key, value, ok))
    return cases


# --------------------------------------------------------------------------- declarations


def test_every_value_field_declares_a_range():
    # bools and choices (Literal) are checked by their type; every other field needs a Range
    def walk(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                yield from walk(tp, f"{prefix}{f.name}.")
            elif tp is not bool and typing.get_origin(tp) is not typing.Literal:
                yield prefix + f.name, C.field_range(f)

    missing = [key for key, r in walk(C.Config) if r is None]
    assert not missing, missing
    assert len(ranged_fields()) >= 50  # the sections hold 50+ such fields today


def test_defaults_and_shipped_configs_are_in_range():
    C.validate(C.Config())
    for p in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")):
        C.load_config([p])  # would raise naming file and key


@pytest.mark.parametrize(
    "key, value, ok", bound_cases(), ids=lambda x: x if isinstance(x, str) else None
)
def test_each_bound(key, value, ok):
    sets = [f"{key}={toml(value)}"]
    if ok:
        cfg = C.load_config(sets=sets + companions(key, value))
        assert _get(cfg, key) == value
    else:
        e = refused(sets, key)
        assert e.path == "--set" and e.field.startswith(key)


def _get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_bound_cases_cover_every_numeric_field():
    numeric = {
        k
        for k, tp, r in ranged_fields()
        if r.pattern is None and r.one_of is None and k != "fit.target.bin_range"
    }
    assert numeric == {k for k, _, _ in bound_cases()}


# --------------------------------------------------------------------------- hand-written


@pytest.mark.parametrize(
    "item, key",
    [
        ("fit.train.lr=-1e-3", "fit.train.lr"),  # trained the wrong way, silently
        ("fit.train.lr=0", "fit.train.lr"),
        ("fit.train.lr=inf", "fit.train.lr"),
        ("fit.train.lr=nan", "fit.train.lr"),
        ("fit.train.wd=-1e-4", "fit.train.wd"),
        ("fit.train.batch_size=-5", "fit.train.batch_size"),  # became 1
        ("fit.train.batch_size=0", "fit.train.batch_size"),
        ("fit.train.microbatch=-1", "fit.train.microbatch"),  # ended in a traceback
        ("fit.train.epochs=0", "fit.train.epochs"),  # failed naming a checkpoint file
        ("fit.train.patience=0", "fit.train.patience"),
        ("fit.train.prefetch_chunks=0", "fit.train.prefetch_chunks"),  # became 1
        ("fit.train.seed=2147483648", "fit.train.seed"),  # JAX keys take int32 seeds
        ("fit.train.device_memory_fraction=1.5", "fit.train.device_memory_fraction"),
        ("fit.head.hidden=1000000000", "fit.head.hidden"),  # absurd: a traceback
        ("fit.head.hidden=0", "fit.head.hidden"),
        ("fit.head.dropout=1.0", "fit.head.dropout"),
        ("eval.ci=1.5", "eval.ci"),
        ("eval.ci=1.0", "eval.ci"),
        ("eval.ci=0.0", "eval.ci"),
        ("eval.ece_bins=0", "eval.ece_bins"),
        ("eval.n_boot=0", "eval.n_boot"),
        ("extract.gamma=1.5", "extract.gamma"),  # checked only after the cache was made
        ("extract.gamma=-0.1", "extract.gamma"),
        ("extract.gamma=nan", "extract.gamma"),
        ("extract.batch_size=0", "extract.batch_size"),
        ("extract.device='gpu'", "extract.device"),
        ("extract.device='cuda:'", "extract.device"),
        ("synth.gamma=1.5", "synth.gamma"),
        ("synth.depth=0", "synth.depth"),
        ("synth.games=0", "synth.games"),
        ("fit.loss.quartic=inf", "fit.loss.quartic"),
        ("fit.loss.max_weight=0.5", "fit.loss.max_weight"),
        ("fit.target.smoothing=nan", "fit.target.smoothing"),
        ("fit.target.n_bins=1", "fit.target.n_bins"),
        ("fit.target.thresholds=[]", "fit.target.thresholds"),
        ("fit.target.thresholds=[1000, 2048]", "fit.target.thresholds[0]"),  # not a power of 2
        ("fit.target.thresholds=[2, 4]", "fit.target.thresholds[0]"),  # below 4
        ("fit.target.thresholds=[2048, 1024]", "fit.target.thresholds"),  # not increasing
        ("fit.target.thresholds=[1024, 1024]", "fit.target.thresholds"),
        ("fit.target.thresholds=[1024, 262144]", "fit.target.thresholds[1]"),  # no such tile
        ("fit.target.bin_range=[1.0]", "fit.target.bin_range"),
        ("fit.target.bin_range=[2.0, 1.0]", "fit.target.bin_range"),
        ("fit.target.bin_range=[0.0, inf]", "fit.target.bin_range[1]"),
        ("fit.target.bin_range=[nan, 1.0]", "fit.target.bin_range[0]"),
        ("fit.split.train=-0.1", "fit.split.train"),
        ("fit.split.val_run_pct=100", "fit.split.val_run_pct"),
        ("fit.split.val_run_pct=0", "fit.split.val_run_pct"),
        ("fit.sampler.stages=[0.0, 0.5, 0.5, 1.0]", "fit.sampler.stages"),
        ("fit.sampler.stage_weights=[1.0, -1.0, 1.0]", "fit.sampler.stage_weights[1]"),
        ("fit.sampler.cap_per_run=0", "fit.sampler.cap_per_run"),
        ("fit.sampler.step_index_min=-1", "fit.sampler.step_index_min"),
    ],
)
def test_issue_cases_are_refused(item, key):
    e = refused([item], key, "--set")
    assert e.field == key


def test_a_valid_config_of_every_kind_still_loads():
    cfg = C.load_config(
        sets=[
            "fit.train.lr=10.0",
            "fit.train.wd=0",
            "fit.train.microbatch=0",
            "fit.head.dropout=0.0",
            "eval.ci=0.999",
            "eval.ece_bins=1",
            "extract.gamma=1.0",
            "extract.device='cuda:1'",
            "fit.target.thresholds=[4, 131072]",
            "fit.target.bin_range=[-1.5, 2.5]",
            "fit.split.val_run_pct=20.0",
            "fit.split.val_where='id % 4 = 1'",
        ]
    )
    assert cfg.fit.target.thresholds == (4, 131072) and cfg.extract.device == "cuda:1"


@pytest.mark.parametrize(
    "items, key",
    [
        (["fit.split.train=0.5"], "fit.split.train"),  # 0.5 + 0.05 + 0.05 != 1
        (["fit.sampler.stages=[0.1, 0.5, 1.0]", "fit.sampler.stage_weights=[1.0, 1.0]"],
         "fit.sampler.stages"),  # must start at 0
        (["fit.sampler.stages=[0.0, 0.5, 0.9]", "fit.sampler.stage_weights=[1.0, 1.0]"],
         "fit.sampler.stages"),  # must end at 1
        (["fit.sampler.stage_weights=[1.0, 1.0]"], "fit.sampler.stage_weights"),  # 3 stages
        (["fit.sampler.stage_weights=[0.0, 0.0, 0.0]"], "fit.sampler.stage_weights"),
        (["fit.sampler.step_index_min=10", "fit.sampler.step_index_max=5"],
         "fit.sampler.step_index_max"),
        (["fit.target.return_encoding='gaussian'", "fit.target.return_sigma=0"],
         "fit.target.return_sigma"),
    ],
)  # fmt: skip
def test_rules_between_fields(items, key):
    e = refused(items, key)
    assert e.field == key and e.path == "--set"


def test_rules_between_fields_hold_for_the_resolved_config_not_each_layer(tmp_path):
    # a file may set related keys one at a time: only the final config must add up
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("[fit.split]\ntrain = 0.7\n")
    b.write_text("[fit.split]\nval = 0.15\ntest = 0.15\n")
    cfg = C.load_config([a, b])
    assert (cfg.fit.split.train, cfg.fit.split.val, cfg.fit.split.test) == (0.7, 0.15, 0.15)
    with pytest.raises(VhError) as e:
        C.load_config([a])
    assert e.value.field == "fit.split.train" and e.value.path == str(a)  # who broke it
    with pytest.raises(VhError) as e:
        C.load_config([a, b], ["fit.split.test=0.5"])
    assert e.value.field == "fit.split.train" and e.value.path == "--set"


def test_a_file_value_out_of_range_names_file_and_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[fit.train]\nlr = -inf\n")
    with pytest.raises(VhError) as e:
        C.load_config([p])
    assert e.value.path == str(p) and e.value.field == "fit.train.lr"


def test_sql_predicates_refuse_control_characters(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[fit.split]\nval_where = "id = 1\\u0000"\n')  # sqlite would raise ValueError
    with pytest.raises(VhError) as e:
        C.load_config([p])
    assert e.value.field == "fit.split.val_where"


def test_recorded_configs_are_checked_with_their_full_key():
    # a run dir's config.json is read back through from_dict: out of range is refused too
    fit = C.to_dict(C.Config().fit)
    fit["train"]["lr"] = -1.0
    with pytest.raises(VhError) as e:
        C.from_dict(C.FitConfig, fit)
    assert e.value.field == "fit.train.lr"
    fit["train"]["lr"], fit["split"]["train"] = 1e-3, 0.2
    with pytest.raises(VhError) as e:
        C.from_dict(C.FitConfig, fit)
    assert e.value.field == "fit.split.train"


def test_grid_values_are_checked_like_the_config():
    assert C.check_grid({"lr": (1e-4, 1e-3), "wd": (0.0,), "seed": (0, 1)})
    for grid, key in (({"lr": (1e-3, -1e-3)}, "lr"), ({"wd": (-1.0,)}, "wd"),
                      ({"seed": (-1,)}, "seed")):  # fmt: skip
        with pytest.raises(VhError) as e:
            C.check_grid(grid)
        assert e.value.field == f"fit.train.{key}" and e.value.path == f"--grid {key}"


# the trunk's config.json is parsed by extract/trunk_config.py, its ranges declared there
# (each bound is tested in tests/test_trunk.py); these are the cases the issue reported
@pytest.mark.parametrize(
    "key, value",
    [
        ("layer_norm_eps", math.inf),  # every embedding becomes zero
        ("hidden_size", 10**9),  # a traceback allocating 64 GB
        ("intermediate_size", 10**9),
        ("max_position_embeddings", 10**9),
        ("input_vocab_size", 18),  # the board vocab is 16 or 17
        ("dropout_prob", 2.0),
    ],
)
def test_trunk_config_values_out_of_range(key, value):
    from vh.extract.trunk import TrunkConfig, preset_config

    with pytest.raises(VhError) as e:
        TrunkConfig.from_dict({**preset_config("tiny"), key: value}, "config.json")
    assert e.value.field == key and e.value.path == "config.json"


# --------------------------------------------------------------------------- the CLI


def test_cli_synth(tmp_path):
    out = tmp_path / "d"
    assert_one_line_error(invoke(["synth", "--out", out, "--depth", "100"]), "synth.depth")
    assert_one_line_error(invoke(["synth", "--out", out, "--set", "synth.gamma=2"]), "synth.gamma")
    assert not out.exists()


def test_cli_extract_gamma_refused_first_then_the_corrected_command_works(tiny, tmp_path):
    out = tmp_path / "X"
    args = ["extract", "--dataset", tiny["ds"], "--init", tiny["trunk"], "--out", out,
            "--config", TINY]  # fmt: skip
    assert_one_line_error(invoke([*args, "--gamma", "1.5"]), "extract.gamma", "1.5")
    assert not out.exists()  # no half-made cache that would refuse the corrected command
    assert_one_line_error(invoke([*args, "--device", "gpu"]), "extract.device")
    assert not out.exists()
    r = invoke([*args, "--gamma", "0.99"])
    assert r.exit_code == 0, r.output
    assert (out / "complete.json").exists()


def test_cli_fit(tiny, tmp_path):
    out = tmp_path / "run"
    args = ["fit", "--cache", tiny["cache"], "--out", out, "--config", TINY, *FIT_SETS]
    assert_one_line_error(invoke([*args, "--set", "fit.train.lr=-1e-3"]), "fit.train.lr", "--set")
    assert_one_line_error(invoke([*args, "--set", "fit.train.epochs=0"]), "fit.train.epochs")
    assert_one_line_error(invoke([*args, "--grid", "lr=1e-3,-1e-3"]), "--grid lr", "fit.train.lr")
    assert not out.exists()


def test_cli_eval(tiny, tmp_path):
    out = tmp_path / "report"
    r = invoke(["eval", tiny["run"], "--out", out, "--set", "eval.ci=1.5"])
    assert_one_line_error(r, "eval.ci")
    assert not out.exists()


def test_cli_demo(tmp_path):
    out = tmp_path / "demo"
    r = invoke(["demo", "--out", out, "--set", "fit.train.batch_size=-1"])
    assert_one_line_error(r, "fit.train.batch_size")
    assert not out.exists()


def test_cli_trunk_and_export_seeds(tiny, tmp_path):
    out = tmp_path / "t"
    assert_one_line_error(invoke(["trunk", "init", "--out", out, "--seed", "-1"]), "--seed")
    assert not out.exists()
    weightless = tmp_path / "w"
    weightless.mkdir()
    shutil.copy(tiny["trunk"] / "config.json", weightless / "config.json")
    assert_one_line_error(invoke(["trunk", "show", weightless, "--seed", "-1"]), "--seed")
    r = invoke(["export", tiny["run"], "--init", weightless, "--out", out, "--seed", "-1"])
    assert_one_line_error(r, "--seed")
    assert not out.exists()
    assert json.loads((weightless / "config.json").read_text())  # input untouched
