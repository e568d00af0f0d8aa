import dataclasses

import pytest

from vh import config as C
from vh.errors import VhError


def test_defaults_file_matches_dataclass_defaults():
    # configs/defaults.toml documents every default; it must agree with the code
    cfg = C.load_config([C.builtin_config("defaults")])
    assert cfg == C.Config()


def test_set_overrides_and_types():
    cfg = C.load_config(
        sets=[
            "fit.train.lr=1e-3",
            "fit.target.thresholds=[512, 1024]",
            "extract.gamma=0.99",
            "fit.head.arch=mlp",
        ]
    )
    assert cfg.fit.train.lr == 1e-3
    assert cfg.fit.target.thresholds == (512, 1024)
    assert cfg.extract.gamma == 0.99
    assert cfg.fit.head.arch == "mlp"
    assert dataclasses.is_dataclass(cfg) and isinstance(hash(cfg), int)  # frozen, hashable


@pytest.mark.parametrize(
    "item, key",
    [
        ("fit.train.lrr=1", "fit.train.lrr"),
        ("fit.train.lr=abc", "fit.train.lr"),
        ("fit.train.epochs=1.5", "fit.train.epochs"),
        ("fit.head.arch=transformer", "fit.head.arch"),
        ("fit.target.thresholds=[1, 'a']", "fit.target.thresholds[1]"),
        ("nosection.x=1", "nosection"),
        ("synth.board_eval=1", "synth.board_eval"),
    ],
)
def test_bad_overrides_name_the_key(item, key):
    with pytest.raises(VhError) as e:
        C.load_config(sets=[item])
    assert e.value.field == key
    assert "\n" not in e.value.line()


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[fit.train]\nlr = 1e-3\nbatchsize = 3\n")
    with pytest.raises(VhError) as e:
        C.load_config([p])
    assert e.value.path == str(p) and e.value.field == "fit.train.batchsize"


def test_round_trip_through_dict():
    cfg = C.load_config(sets=["fit.sampler.kind=stratified", "extract.gamma=0.9"])
    assert C.from_dict(C.Config, C.to_dict(cfg)) == cfg


def test_tiny_config_loads():
    cfg = C.load_config([C.builtin_config("tiny")])
    assert cfg.synth.games < C.Config().synth.games
