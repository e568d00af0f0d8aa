"""The trunk's config.json ranges: each bound, non-finite and absurd values, the parameter
limit, and `vh trunk show` refusing what is out of range (split from tests/test_trunk.py)."""

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import assert_one_line_error
from safetensors.torch import save_file

from vh.cli import main
from vh.errors import VhError
from vh.extract import trunk as T


def tiny_state(seed=0, **kw) -> dict:
    return (
        T.Encoder(T.TrunkConfig.from_dict(T.preset_config("tiny", **kw), "p"))
        .init_weights(seed)
        .state_dict()
    )


def write_config(d: Path, **over) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    cfg = {**T.preset_config("tiny"), "extra_run_key": "kept", **over}
    cfg = {k: v for k, v in cfg.items() if v is not ...}  # ... deletes a field
    (d / "config.json").write_text(json.dumps(cfg))
    return cfg


def save_tiny(d: Path, state: dict) -> Path:
    write_config(d)
    save_file(state, d / "model.safetensors")
    return d / "model.safetensors"


# --------------------------------------------------------------------------- config.json ranges
# Each bound written out by hand (not read back from the declarations in trunk_config.py):
# (field, a value just inside, a value just outside, what the message must say, other fields
# the inside value needs to make a trunk).

TINY_CFG = T.preset_config("tiny")  # H 32, 4 heads on 2 kv heads, F 128, 2 layers, 32 bins
MLP_HEAD = {"objective": {"type": "mse"}, "arch": "mlp", "hidden": 8}
BOUNDS = [
    ("input_vocab_size", 16, 15, ">= 16"),
    ("input_vocab_size", 17, 18, "<= 17"),
    ("hidden_size", 4, 0, ">= 1"),
    ("hidden_size", 8192, 65537, "<= 65536"),  # 65536 itself: see the parameter limit below
    ("num_hidden_layers", 1, 0, ">= 1"),
    ("num_hidden_layers", 1024, 1025, "<= 1024"),
    ("num_attention_heads", 2, 0, ">= 1"),  # 2 heads on 2 kv heads: plain MHA
    ("num_attention_heads", 1024, 1025, "<= 1024", {"hidden_size": 1024}),
    ("num_key_value_heads", 1, 0, ">= 1"),
    (
        "num_key_value_heads",
        1024,
        1025,
        "<= 1024",
        {"hidden_size": 1024, "num_attention_heads": 1024},
    ),
    ("intermediate_size", 1, 0, ">= 1"),
    ("intermediate_size", 262_144, 262_145, "<= 262144"),
    ("layer_norm_eps", 1e-300, 0.0, "> 0"),
    ("layer_norm_eps", 0.999, 1.0, "< 1"),
    ("max_position_embeddings", 16, 15, ">= 16"),
    ("max_position_embeddings", 65_536, 65_537, "<= 65536"),
    ("output_n_bins", 1, 0, ">= 1"),
    ("output_n_bins", 65_536, 65_537, "<= 65536"),
    ("dropout_prob", 0.0, -1e-9, ">= 0"),
    ("dropout_prob", 0.999, 1.0, "< 1"),
    ("attention_dropout_prob", 0.0, -1.0, ">= 0"),
    ("attention_dropout_prob", 0.999, 2.0, "< 1"),
    ("value_head.objective.vocab_size", 1, 0, ">= 1"),
    ("value_head.objective.vocab_size", 65_536, 65_537, "<= 65536"),
    ("value_head.hidden", 1, 0, ">= 1"),
    ("value_head.hidden", 65_536, 65_537, "<= 65536"),
]


def with_value(key: str, value, needs: dict | None = None) -> dict:
    """The tiny config with ``key`` (dotted into the value_head block) set to ``value``."""
    base = {**TINY_CFG, **(needs or {})}
    if key == "value_head.hidden":
        return {**base, "value_head": {**MLP_HEAD, "hidden": value}}
    if key == "value_head.objective.vocab_size":
        objective = {"type": "cross_entropy", "vocab_size": value}
        return {**base, "value_head": {"objective": objective}}
    return {**base, key: value}


def refusal(raw: dict, where="config.json") -> VhError:
    with pytest.raises(VhError) as e:
        T.TrunkConfig.from_dict(raw, where)
    assert e.value.path == where and "\n" not in e.value.line()
    return e.value


@pytest.mark.parametrize("key, inside, outside, bound, needs", [(*b, {})[:5] for b in BOUNDS])
def test_each_bound_of_config_json(key, inside, outside, bound, needs):
    cfg = T.TrunkConfig.from_dict(with_value(key, inside, needs), "config.json")
    got = cfg
    for part in key.replace("objective.", "").split("."):  # the spec names it vocab_size
        got = getattr(got, part)
    assert got == inside
    e = refusal(with_value(key, outside, needs))
    assert e.field == key and "out of range" in e.message and bound in e.message


@pytest.mark.parametrize("key", ["layer_norm_eps", "dropout_prob", "attention_dropout_prob"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 1e30])
def test_non_finite_and_absurd_floats_are_refused(key, value):
    e = refusal(with_value(key, value))
    assert e.field == key and ("finite" in e.message or "out of range" in e.message)


@pytest.mark.parametrize(
    "over, key, says",
    [
        ({"num_key_value_heads": 3}, "num_key_value_heads", "not a multiple"),
        ({"num_attention_heads": 3}, "num_attention_heads", "hidden_size 32"),  # no head dim
        ({"num_attention_heads": 64, "num_key_value_heads": 64}, "num_attention_heads", "32"),
        ({"head_type": "q_values"}, "head_type", "'binned_ev', 'action_policy'"),
        ({"use_qk_norm": 1}, "use_qk_norm", "expected bool"),
        ({"use_attention_sinks": "true"}, "use_attention_sinks", "expected bool"),
        ({"output_n_bins": 3.0}, "output_n_bins", "expected int"),
        ({"value_head": {"pooling": "max"}}, "value_head.pooling", "'mean'"),
        ({"value_head": {"arch": "mlp"}}, "value_head.hidden", "needs hidden"),
        ({"value_head": {"activation": "relu"}}, "value_head.activation", "gelu"),
        ({"value_head": {"objective": {"type": "hinge"}}}, "value_head.objective.type", "mse"),
        ({"value_head": {"pre_pool_mlp": 0}}, "value_head.pre_pool_mlp", "expected bool"),
        ({"value_head": {"enabled": "no"}}, "value_head.enabled", "expected bool"),
    ],
)
def test_fields_that_cannot_be_true_together_or_in_kind(over, key, says):
    e = refusal({**TINY_CFG, **over})
    assert e.field == key and says in e.message


def test_huge_integers_are_one_line_errors():
    e = refusal({**TINY_CFG, "hidden_size": 10**2000})  # json reads integers up to 4300 digits
    assert e.field == "hidden_size" and "2001 digits" in e.message
    e = refusal({**TINY_CFG, "layer_norm_eps": 10**2000})  # a float field: no float holds it
    assert e.field == "layer_norm_eps" and "finite" in e.message


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"qk_norm": True, "sinks": True},
        {"head_type": "action_policy", "vocab": 17},
    ],
)
@pytest.mark.parametrize(
    "value_head",
    [
        None,
        {"objective": {"type": "cross_entropy", "vocab_size": 6}},
        {**MLP_HEAD, "pre_pool_mlp": True},
    ],
)
def test_parameter_count_is_what_torch_allocates(over, value_head):
    raw = {**T.preset_config("tiny", **over), "max_position_embeddings": 20}
    cfg = T.TrunkConfig.from_dict({**raw, "value_head": value_head}, "p")
    assert cfg.parameter_count() == sum(p.numel() for p in T.Encoder(cfg).parameters())


def test_a_trunk_over_the_parameter_limit_is_refused_before_allocating():
    # one layer of H = 8192 (8 heads): every count below by hand, nothing allocated
    H = 8192
    one_layer = dict(num_hidden_layers=1, num_attention_heads=8, num_key_value_heads=8)
    raw = {**TINY_CFG, "hidden_size": H, **one_layer}
    embeddings = 16 * H + 16 * H  # tok_emb, pos_emb (16 positions)
    attention = 4 * H * H + 2 * H  # wq, wk, wv, wo (as many kv heads as heads), two norms
    ev_heads = 4 * (32 * H + 32)
    fixed = embeddings + attention + H + ev_heads  # H: final_ln
    f_max = (T.MAX_PARAMETERS - fixed) // (3 * H)  # the SwiGLU: 3·H·F
    assert f_max <= 262_144  # so the limit, not intermediate_size's own bound, refuses f_max + 1
    cfg = T.TrunkConfig.from_dict({**raw, "intermediate_size": f_max}, "config.json")
    assert cfg.parameter_count() == fixed + 3 * H * f_max <= T.MAX_PARAMETERS
    e = refusal({**raw, "intermediate_size": f_max + 1})
    assert e.field == "intermediate_size" and "more than vh builds" in e.message
    # hidden_size 65536 is within its own bound but one layer of it is 17G parameters
    e = refusal({**TINY_CFG, "hidden_size": 65_536})
    assert e.field == "hidden_size" and "parameters" in e.message


def test_config_json_disagreeing_with_the_weights(tmp_path, capsys):
    # a plausible value the weights overrule: a warning; one that cannot be true: an error
    state = tiny_state(0)  # 32 bins
    save_tiny(tmp_path, state)
    write_config(tmp_path, output_n_bins=7)
    assert T.load_trunk(tmp_path).config.output_n_bins == 32
    assert "output_n_bins is 7 but the weights say 32" in capsys.readouterr().err
    for bins in (-1, 0, 10**9, "32"):
        write_config(tmp_path, output_n_bins=bins)
        with pytest.raises(VhError) as e:
            T.load_trunk(tmp_path)
        assert e.value.field == "output_n_bins"
        assert e.value.path == str(tmp_path / "config.json")
    write_config(tmp_path, head_type="q_values")
    with pytest.raises(VhError) as e:
        T.load_trunk(tmp_path)
    assert e.value.field == "head_type"


def test_malformed_json_is_one_line(tmp_path):
    # an integer beyond Python's 4300 digits and a very deep nesting both stop json.loads
    for text in ('{"hidden_size": 1' + "0" * 5000 + "}", "[" * 100_000 + "]" * 100_000):
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(VhError, match="not valid JSON") as e:
            T.load_trunk(tmp_path)
        assert e.value.path == str(tmp_path / "config.json") and "\n" not in e.value.line()


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "key, text",
    [
        ("layer_norm_eps", "Infinity"),  # made every embedding 0.0
        ("layer_norm_eps", "NaN"),
        ("hidden_size", "1000000000"),  # a traceback allocating 64 GB
        ("num_hidden_layers", "1000000"),  # hung, then a traceback
        ("max_position_embeddings", "1000000000"),
        ("output_n_bins", "1000000000"),
        ("input_vocab_size", "18"),
        ("dropout_prob", "2.0"),
        ("num_key_value_heads", "-1"),
    ],
)
@pytest.mark.parametrize("weights", [False, True], ids=["no-weights", "weights"])
def test_cli_trunk_show_refuses_config_values(tmp_path, key, text, weights):
    d = tmp_path / "t"
    write_config(d, **{key: "@value@"})
    if weights:
        save_file(tiny_state(0), d / "model.safetensors")
    # the value spliced in as JSON text, as a user (or another tool) would write it
    raw = (d / "config.json").read_text()
    (d / "config.json").write_text(raw.replace('"@value@"', text))
    assert json.loads((d / "config.json").read_text())[key] is not None
    before = snapshot(tmp_path)
    r = CliRunner().invoke(main, ["trunk", "show", str(d)])
    line = assert_one_line_error(r)
    assert line.startswith(f"error: {d / 'config.json'}: {key}: ")
    assert snapshot(tmp_path) == before  # nothing changed, nothing left behind


def test_cli_trunk_show_takes_values_at_the_bounds(tmp_path):
    at_bounds = dict(layer_norm_eps=0.999, dropout_prob=0.999, output_n_bins=65_536)
    write_config(tmp_path, input_vocab_size=17, max_position_embeddings=65_536, **at_bounds)
    r = CliRunner().invoke(main, ["trunk", "show", str(tmp_path)])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output[r.output.index("{") : r.output.rindex("}") + 1])
    assert shown["layer_norm_eps"] == 0.999 and shown["output_n_bins"] == 65_536
