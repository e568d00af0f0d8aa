"""The one strict value parser (vh/strict.py) that the TOML config and the trunk's config.json
share: each kind of value checked against hand-written answers, the two configs refusing the
same wrong kinds with the same words, and integers too large for a float (JSON reads them,
``vh trunk train --epochs`` takes them) refused in one line instead of an OverflowError."""

from __future__ import annotations

import json
import math
from typing import Literal

import pytest
from click.testing import CliRunner

from vh import config as C
from vh import strict
from vh.cli import main
from vh.errors import VhError
from vh.extract import trunk as T
from vh.ranges import Range

# --------------------------------------------------------------------------- the parser

# (annotation, value given, the canonical value), each written out by hand
ACCEPTED = [
    (int, 3, 3),
    (int, -(2**63), -(2**63)),
    (float, 1, 1.0),  # JSON writes 1 for 1.0; TOML lets a user write lr = 1
    (float, 2.5, 2.5),
    (bool, False, False),
    (str, "", ""),
    (dict, {"a": 1}, {"a": 1}),
    (Literal["packed", "legacy"], "legacy", "legacy"),
    (float | None, "none", None),  # --set extract.gamma=none
    (float | None, "NONE", None),
    (float | None, None, None),
    (float | None, 0, 0.0),
    (tuple[int, ...], [1, 2], (1, 2)),
    (tuple[float, ...], (1, 0.5), (1.0, 0.5)),
    (tuple[float, ...], [], ()),
]


@pytest.mark.parametrize("tp, value, want", ACCEPTED)
def test_accepted_values_in_canonical_form(tp, value, want):
    got = strict.coerce(value, tp, "k")
    assert got == want and type(got) is type(want)
    if isinstance(want, tuple):
        assert [type(v) for v in got] == [type(v) for v in want]


# (annotation, value given, the key the error names, the message), each written out by hand
REFUSED = [
    (int, True, "k", "expected int, got True"),  # a bool is never a number
    (float, False, "k", "expected float, got False"),
    (int, 3.0, "k", "expected int, got 3.0"),
    (int, "3", "k", "expected int, got '3'"),
    (bool, 1, "k", "expected bool, got 1"),
    (bool, "true", "k", "expected bool, got 'true'"),
    (str, 5, "k", "expected str, got 5"),
    (dict, [1], "k", "expected dict, got [1]"),
    (Literal["a", "b"], "c", "k", "expected 'a' | 'b', got 'c'"),
    (float | None, "x", "k", "expected float | none, got 'x'"),
    (int | None, True, "k", "expected int | none, got True"),
    (tuple[float, ...], 0.5, "k", "expected list of float, got 0.5"),
    (tuple[float, ...], [0.5, True], "k[1]", "expected float, got True"),
    (float, 10**400, "k", "expected a finite number, got an integer of 401 digits"),
    (str, 10**400, "k", "expected str, got an integer of 401 digits"),
]


@pytest.mark.parametrize("tp, value, key, message", REFUSED)
def test_refused_values_name_the_key(tp, value, key, message):
    with pytest.raises(VhError) as e:
        strict.coerce(value, tp, "k")
    assert (e.value.field, e.value.message, e.value.path) == (key, message, None)


def test_parse_checks_the_type_before_the_range():
    r = Range(ge=1, le=10)
    assert strict.parse(10, int, "k", r) == 10
    with pytest.raises(VhError) as e:
        strict.parse(11, int, "k", r)
    assert e.value.message == "out of range: expected >= 1 and <= 10, got 11"
    with pytest.raises(VhError) as e:
        strict.parse(True, int, "k", r)  # True is 1, in range: the type is checked first
    assert e.value.message == "expected int, got True"


@pytest.mark.parametrize(
    "value, message",
    [
        # an int is finite however long: compared exactly, shown by its length
        (10**400, "out of range: expected >= 1 and <= 10, got an integer of 401 digits"),
        (-(10**400), "out of range: expected >= 1 and <= 10, got an integer of 401 digits"),
        (2**1000 + 1, "out of range: expected >= 1 and <= 10, got an integer of 302 digits"),
        (2**100, f"out of range: expected >= 1 and <= 10, got {2**100}"),  # short: printed
        (math.inf, "expected a finite number >= 1 and <= 10, got inf"),
    ],
)
def test_range_check_of_integers_too_large_for_a_float(value, message):
    with pytest.raises(VhError) as e:
        Range(ge=1, le=10).check(value, "k")
    assert e.value.message == message and e.value.field == "k"


def test_a_huge_power_of_two_is_compared_exactly():
    assert Range(pow2=True).check(2**2000, "k") is None  # no float conversion on the way
    with pytest.raises(VhError, match="power of two"):
        Range(pow2=True).check(2**2000 + 2, "k")


def test_located_names_the_file_only_where_none_is_named():
    with pytest.raises(VhError) as e, strict.located("a.toml"):
        raise VhError("bad", field="k", code=3)
    assert (e.value.path, e.value.field, e.value.message, e.value.code) == ("a.toml", "k", "bad", 3)
    with pytest.raises(VhError) as e, strict.located("a.toml"):
        raise VhError("bad", path="b.json", field="k")
    assert e.value.path == "b.json"


# --------------------------------------------------------------------------- both configs


@pytest.mark.parametrize(
    "toml_key, json_key, value, message",
    [
        ("extract.batch_size", "hidden_size", True, "expected int, got True"),
        ("extract.batch_size", "hidden_size", 3.0, "expected int, got 3.0"),
        ("extract.batch_size", "hidden_size", "8", "expected int, got '8'"),
        ("extract.compile", "use_qk_norm", 1, "expected bool, got 1"),
        ("extract.gamma", "layer_norm_eps", False, "expected float | none, got False"),
        ("extract.device", "head_type", 5, "expected str, got 5"),
    ],
)
def test_the_two_configs_refuse_a_wrong_kind_alike(tmp_path, toml_key, json_key, value, message):
    section, key = toml_key.split(".")
    p = tmp_path / "c.toml"
    p.write_text(f"[{section}]\n{key} = {json.dumps(value)}\n")  # JSON literals are TOML's too
    with pytest.raises(VhError) as e:
        C.load_config([p])
    assert (e.value.path, e.value.field, e.value.message) == (str(p), toml_key, message)
    with pytest.raises(VhError) as e:
        T.TrunkConfig.from_dict({**T.preset_config("tiny"), json_key: value}, "config.json")
    # the trunk's fields are never optional once given (null means the default there)
    want = message.replace("float | none", "float")
    assert (e.value.path, e.value.field, e.value.message) == ("config.json", json_key, want)


def test_an_int_for_a_float_field_becomes_a_float_in_both():
    cfg = C.load_config(sets=["fit.train.lr=1", "extract.gamma=0"])
    assert type(cfg.fit.train.lr) is float and cfg.fit.train.lr == 1.0
    assert type(cfg.extract.gamma) is float and cfg.extract.gamma == 0.0
    tc = T.TrunkConfig.from_dict({**T.preset_config("tiny"), "dropout_prob": 0}, "p")
    assert type(tc.dropout_prob) is float and tc.dropout_prob == 0.0


def test_presets_are_the_documented_shapes():
    # (hidden, layers, heads, kv heads, intermediate) as the --preset help and README say
    shapes = {"tiny": (32, 2, 4, 2, 128), "small": (128, 4, 4, 2, 512),
              "288x10": (288, 10, 6, 2, 1152)}  # fmt: skip
    for name, (h, layers, heads, kv, f) in shapes.items():
        assert T.PRESETS[name] == dict(
            hidden_size=h,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            intermediate_size=f,
        )
    assert list(T.PRESETS) == list(shapes)


# --------------------------------------------------------------------------- the CLI


def test_cli_trunk_train_refuses_a_huge_epoch_count_in_one_line(tmp_path):
    # click's int takes 401 digits; the range check used to raise OverflowError on it
    out = tmp_path / "t"
    args = ["trunk", "train", "--dataset", str(tmp_path / "ds"), "--out", str(out)]
    r = CliRunner().invoke(main, [*args, "--epochs", str(10**400)])
    assert r.exit_code not in (0, None) and isinstance(r.exception, SystemExit)
    assert "Traceback" not in r.output
    assert r.output.strip().splitlines() == [
        "error: --epochs: trunk.epochs: out of range: expected >= 1 and <= 100000, "
        "got an integer of 401 digits"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing created
