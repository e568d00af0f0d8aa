"""The trunk: numerics against an independent numpy reference, golden values, strict loading."""

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

# the tiny trunk's state and config.json writers, shared with the config-range tests split
# from this file (tests/test_trunk_config.py)
from test_trunk_config import save_tiny, tiny_state, write_config

from vh.cli import main
from vh.cmd_trunk import PRESET_NAMES
from vh.errors import VhError
from vh.extract import trunk as T

DATA = Path(__file__).parent / "data"

# a small config with every feature: GQA (4 query heads on 2 kv heads), vocab 17, spare positions
BASE = dict(
    input_vocab_size=17,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    layer_norm_eps=1e-5,
    max_position_embeddings=20,
    head_type="binned_ev",
    output_n_bins=5,
)


def make(**over) -> T.Encoder:
    return T.Encoder(T.TrunkConfig.from_dict({**BASE, **over}, "test")).eval()


@torch.no_grad()
def randomize(model: T.Encoder, seed: int = 0) -> T.Encoder:
    """Weights large enough that attention is far from uniform (so head mappings matter)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        r = torch.randn(p.shape, generator=g)
        if name.endswith("norm.weight") or name.endswith("ln.weight"):
            p.copy_(1.0 + 0.3 * r)
        elif name.endswith("sinks") or p.ndim == 1:
            p.copy_(r)
        elif "emb" in name:
            p.copy_(r)
        else:
            p.copy_(1.5 * r / math.sqrt(p.shape[1]))
    return model


# --------------------------------------------------------------------------- numpy reference


def np_rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def right_kv(h, nh, nkv):
    return h % nkv  # queries viewed as (groups, nkv), group-major


def right_sink(h, nh, nkv):
    return (h % nkv) * (nh // nkv) + h // nkv  # sinks laid out as (nkv, groups)


def interleave_kv(h, nh, nkv):
    return h // (nh // nkv)  # what torch.repeat_interleave / enable_gqa would do


def plain_sink(h, nh, nkv):
    return h


def np_hidden(P, c, tokens, kv_of=right_kv, sink_of=right_sink):
    """final_ln output in float64, written from the architecture's description, head by head."""
    H, nh, nkv, eps = (
        c["hidden_size"],
        c["num_attention_heads"],
        c["num_key_value_heads"],
        c["layer_norm_eps"],
    )
    hd = H // nh
    B, S = tokens.shape
    x = P["tok_emb.weight"][tokens] + P["pos_emb.pos_emb.weight"][:S]
    for i in range(c["num_hidden_layers"]):
        b = f"blocks.{i}."
        a = np_rms(x, P[b + "attn_norm.weight"], eps)
        q, k, v = (a @ P[b + f"attn.{w}.weight"].T for w in ("wq", "wk", "wv"))
        out = np.zeros((B, S, H))
        for h in range(nh):
            kv = kv_of(h, nh, nkv)
            qh, kh, vh = (
                q[..., h * hd : (h + 1) * hd],
                k[..., kv * hd : (kv + 1) * hd],
                v[..., kv * hd : (kv + 1) * hd],
            )
            if c.get("use_qk_norm"):
                qh, kh = (
                    np_rms(qh, P[b + "attn.q_norm.weight"], eps),
                    np_rms(kh, P[b + "attn.k_norm.weight"], eps),
                )
            s = qh @ kh.transpose(0, 2, 1) / math.sqrt(hd)  # (B, S, S)
            if c.get("use_attention_sinks"):
                sink = np.full((B, S, 1), P[b + "attn.sinks"][sink_of(h, nh, nkv)])
                s = np.concatenate([s, sink], axis=-1)
            e = np.exp(s - s.max(-1, keepdims=True))
            out[..., h * hd : (h + 1) * hd] = (e / e.sum(-1, keepdims=True))[..., :S] @ vh
        x = x + out @ P[b + "attn.wo.weight"].T
        m = np_rms(x, P[b + "mlp_norm.weight"], eps)
        gate, up = m @ P[b + "mlp.w_gate.weight"].T, m @ P[b + "mlp.w_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ P[b + "mlp.w_down.weight"].T
    return np_rms(x, P["final_ln.weight"], eps)


def params64(model):
    return {k: v.double().numpy() for k, v in model.state_dict().items()}


def run(model, tokens):
    with torch.inference_mode():
        hidden, logits, value = model(torch.as_tensor(tokens))
    return hidden.double().numpy(), logits.double().numpy(), value


TOKENS = np.random.default_rng(1).integers(0, 17, size=(6, 16))


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"use_qk_norm": True},
        {"use_attention_sinks": True},
        {"use_qk_norm": True, "use_attention_sinks": True},
        {"num_key_value_heads": 4, "use_attention_sinks": True},  # plain MHA
        {"num_key_value_heads": 1, "use_attention_sinks": True},  # MQA
    ],
    ids=["gqa", "gqa-qknorm", "gqa-sinks", "gqa-qknorm-sinks", "mha-sinks", "mqa-sinks"],
)
def test_encoder_matches_numpy_reference(over):
    model = randomize(make(**over))
    c = {**BASE, **over}
    P = params64(model)
    hidden, logits, value = run(model, TOKENS)
    ref = np_hidden(P, c, TOKENS)
    np.testing.assert_allclose(hidden, ref, atol=1e-5, rtol=0)
    pooled = ref.mean(1)
    for d in range(4):  # the output heads on the pooled vector
        want = pooled @ P[f"ev_heads.{d}.weight"].T + P[f"ev_heads.{d}.bias"]
        np.testing.assert_allclose(logits[:, d], want, atol=1e-5, rtol=0)
    with torch.inference_mode():
        np.testing.assert_allclose(model.pooled(torch.as_tensor(TOKENS)).numpy(), pooled, atol=1e-5)
    assert value is None
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    if 1 < nkv < nh:
        # the repeat-interleave head mapping is a different model: the test above would catch it
        wrong = np_hidden(P, c, TOKENS, kv_of=interleave_kv)
        assert np.abs(wrong - hidden).max() > 1e-2
        if c.get("use_attention_sinks"):  # and so is a sink layout of (groups, nkv)
            wrong = np_hidden(P, c, TOKENS, sink_of=plain_sink)
            assert np.abs(wrong - hidden).max() > 1e-2


@pytest.mark.parametrize("over", [{}, {"use_qk_norm": True}, {"num_key_value_heads": 4}])
def test_sdpa_equals_explicit_softmax(over):
    model = randomize(make(**over), seed=3)
    sdpa, _, _ = run(model.use_sdpa(True), TOKENS)
    explicit, _, _ = run(model.use_sdpa(False), TOKENS)
    # float32 rounding differs by a few 1e-6 on O(1) activations; both match float64 to 1e-5
    np.testing.assert_allclose(sdpa, explicit, atol=1e-5, rtol=0)


def test_very_negative_sinks_are_no_sinks():
    # a sink logit of -inf is no sink: the sink model with very negative sinks == no sinks
    model = randomize(make(use_attention_sinks=True))
    plain = make()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("sinks")})
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.sinks.fill_(-1e4)
    np.testing.assert_allclose(run(model, TOKENS)[0], run(plain, TOKENS)[0], atol=1e-5)


def test_bfloat16_is_close_to_float32(tmp_path):
    T.write_init_dir(tmp_path / "t", "tiny", seed=2, sinks=True)
    f32 = T.load_trunk(tmp_path / "t").model
    bf16 = T.load_trunk(tmp_path / "t", dtype=torch.bfloat16).model
    tok = torch.as_tensor(TOKENS % 16)
    with torch.inference_mode():
        a, b = f32.pooled(tok), bf16.pooled(tok)
    assert b.dtype == torch.float32  # pooled is returned in float32 whatever the model dtype
    assert float((a - b).abs().max()) < 0.05 * float(a.abs().max())


# --------------------------------------------------------------------------- golden values


def test_golden_pooled_embeddings_of_the_seeded_tiny_preset():
    gold = json.loads((DATA / "trunk_tiny_golden.json").read_text())
    boards = torch.tensor(gold["boards"])
    for variant in gold["variants"].values():
        cfg = T.TrunkConfig.from_dict(T.preset_config("tiny", **variant["kwargs"]), "preset")
        model = T.Encoder(cfg).init_weights(gold["seed"]).eval()
        with torch.inference_mode():
            p = model.pooled(boards).double().numpy()
        np.testing.assert_allclose(p[:, :8], variant["pooled_first8"], atol=1e-5)
        np.testing.assert_allclose(p.sum(1), variant["pooled_sum"], atol=1e-4)


def test_seeding_is_deterministic():
    a, b, c = (
        T.Encoder(T.TrunkConfig.from_dict(T.preset_config("tiny", sinks=True), "p"))
        .init_weights(s)
        .state_dict()
        for s in (5, 5, 6)
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["tok_emb.weight"], c["tok_emb.weight"])
    assert float(a["blocks.0.attn.sinks"].abs().min()) > 0  # sinks are random, not zero
    assert torch.equal(a["final_ln.weight"], torch.ones(32))


def test_presets_and_cli_choices_agree():
    assert tuple(T.PRESETS) == PRESET_NAMES
    n = sum(
        p.numel()
        for p in T.Encoder(T.TrunkConfig.from_dict(T.preset_config("small"), "p")).parameters()
    )
    # 4 layers of 4·128² attention + 3·128·512 SwiGLU, plus embeddings, norms and heads
    assert n == 4 * (
        4 * 128 * 128 - 2 * 64 * 128 + 3 * 128 * 512 + 2 * 128
    ) + 16 * 128 + 16 * 128 + 128 + 4 * (128 * 32 + 32)


# --------------------------------------------------------------------------- loading


def pooled(lt, tokens=TOKENS % 16):
    with torch.inference_mode():
        return lt.model.pooled(torch.as_tensor(tokens)).numpy()


def reference_pooled(state, **kw):
    m = T.Encoder(T.TrunkConfig.from_dict(T.preset_config("tiny", **kw), "p")).eval()
    m.load_state_dict(state)
    with torch.inference_mode():
        return m.pooled(torch.as_tensor(TOKENS % 16)).numpy()


def test_init_dir_round_trip(tmp_path):
    d = T.write_init_dir(tmp_path / "t", "tiny", seed=7, qk_norm=True)
    lt = T.load_trunk(d)
    assert lt.source == str(d / "model.safetensors")
    assert lt.weights_sha256 == hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    assert lt.seed is None and lt.fingerprint["weights_sha256"] == lt.weights_sha256
    assert lt.config.use_qk_norm and lt.config.extra_keys == ("vh_init",)
    assert lt.config_dict["vh_init"]["seed"] == 7 and lt.dim == 32
    np.testing.assert_array_equal(
        pooled(lt), reference_pooled(tiny_state(7, qk_norm=True), qk_norm=True)
    )
    assert not any(p.requires_grad for p in lt.model.parameters()) and not lt.model.training


@pytest.mark.parametrize(
    "prefix", ["_orig_mod.", "module.", "module._orig_mod.", "_orig_mod.module."]
)
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    state = tiny_state(1)
    write_config(tmp_path)
    save_file({prefix + k: v for k, v in state.items()}, tmp_path / "model.safetensors")
    np.testing.assert_array_equal(pooled(T.load_trunk(tmp_path)), reference_pooled(state))


def test_pt_bundle_alone_and_in_an_init_dir(tmp_path):
    state = tiny_state(2)
    cfg = T.preset_config("tiny")
    torch.save(
        {
            "model": {"_orig_mod." + k: v for k, v in state.items()},
            "encoder_config": cfg,
            "optimizer": {"state": {}},
            "global_step": 10,
        },
        tmp_path / "bundle.pt",
    )
    lt = T.load_trunk(tmp_path / "bundle.pt")  # no config.json anywhere: the bundle's config
    np.testing.assert_array_equal(pooled(lt), reference_pooled(state))
    assert lt.weights_sha256 == hashlib.sha256((tmp_path / "bundle.pt").read_bytes()).hexdigest()
    d = tmp_path / "dir"
    write_config(d)
    torch.save({"model": state}, d / "model.pt")
    np.testing.assert_array_equal(pooled(T.load_trunk(d)), reference_pooled(state))


def test_pt_bundle_with_other_pickled_objects_is_refused_unless_trusted(tmp_path, capsys):
    # PosixPath is not on torch's weights_only allowlist: refused by default (unpickling it
    # could run code), loaded with trust_pickle, with a warning that says what that means
    state = tiny_state(2)
    bundle = tmp_path / "bundle.pt"
    torch.save(
        {"model": state, "encoder_config": T.preset_config("tiny"), "run_dir": Path("/x")}, bundle
    )
    with pytest.raises(VhError) as e:
        T.load_trunk(bundle)
    assert e.value.path == str(bundle) and e.value.field == "weights"
    assert "--trust-pickle" in e.value.message and "safetensors" in e.value.message
    lt = T.load_trunk(bundle, trust_pickle=True)
    np.testing.assert_array_equal(pooled(lt), reference_pooled(state))
    assert lt.weights_sha256 == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert "--trust-pickle" in capsys.readouterr().err


def test_bare_safetensors_file_reads_the_config_beside_it(tmp_path):
    state = tiny_state(3)
    write_config(tmp_path)
    save_file(state, tmp_path / "weights-step-100.safetensors")
    lt = T.load_trunk(tmp_path / "weights-step-100.safetensors")
    np.testing.assert_array_equal(pooled(lt), reference_pooled(state))
    (tmp_path / "config.json").unlink()
    with pytest.raises(VhError, match="config.json"):
        T.load_trunk(tmp_path / "weights-step-100.safetensors")


@pytest.mark.parametrize("first", range(len(T.WEIGHT_NAMES)))
def test_weights_search_order(tmp_path, first):
    write_config(tmp_path)
    for seed, name in enumerate(T.WEIGHT_NAMES[first:], start=first):
        state = tiny_state(seed)
        if name.endswith(".pt"):
            torch.save({"model": state}, tmp_path / name)
        else:
            save_file(state, tmp_path / name)
    lt = T.load_trunk(tmp_path)
    assert Path(lt.source).name == T.WEIGHT_NAMES[first]
    np.testing.assert_array_equal(pooled(lt), reference_pooled(tiny_state(first)))


def test_head_type_and_bins_are_inferred_from_the_keys(tmp_path, capsys):
    policy = tiny_state(0, head_type="action_policy")
    write_config(tmp_path / "p", head_type=..., output_n_bins=...)
    save_file(policy, tmp_path / "p" / "model.safetensors")
    lt = T.load_trunk(tmp_path / "p")
    assert lt.config.head_type == "action_policy" and lt.config_dict["head_type"] == "action_policy"
    assert run(lt.model, TOKENS % 16)[1].shape == (6, 4)
    binned = tiny_state(0, bins=7)
    write_config(tmp_path / "b", head_type=..., output_n_bins=...)
    save_file(binned, tmp_path / "b" / "model.safetensors")
    lt = T.load_trunk(tmp_path / "b")
    assert (lt.config.head_type, lt.config.output_n_bins) == ("binned_ev", 7)
    # a config.json that says otherwise is overruled by the weights, loudly
    write_config(tmp_path / "c", head_type="binned_ev", output_n_bins=32)
    save_file(policy, tmp_path / "c" / "model.safetensors")
    assert T.load_trunk(tmp_path / "c").config.head_type == "action_policy"
    assert "head_type is 'binned_ev' but the weights say 'action_policy'" in capsys.readouterr().err


def test_random_init_warns_and_is_seeded(tmp_path, capsys):
    write_config(tmp_path)
    a = T.load_trunk(tmp_path, seed=4)
    assert f"no weights in {tmp_path}: using a RANDOM trunk (seed 4)" in capsys.readouterr().err
    assert a.source is None and a.weights_sha256 is None and a.fingerprint["seed"] == 4
    np.testing.assert_array_equal(pooled(a), pooled(T.load_trunk(tmp_path, seed=4)))
    np.testing.assert_array_equal(pooled(a), reference_pooled(tiny_state(4)))
    assert not np.allclose(pooled(a), pooled(T.load_trunk(tmp_path, seed=5)))


def test_value_head_probe_and_mlp(tmp_path):
    state = tiny_state(0)
    H, rng = 32, torch.Generator().manual_seed(0)
    probe = {"objective": {"type": "cross_entropy", "vocab_size": 6, "vocab_type": "ordinal"}}
    W, b = torch.randn(6, H, generator=rng), torch.randn(6, generator=rng)
    write_config(tmp_path / "p", value_head=probe)
    save_file(
        {**state, "value_head.weight": W, "value_head.bias": b},
        tmp_path / "p" / "model.safetensors",
    )
    lt = T.load_trunk(tmp_path / "p")
    base = reference_pooled(state)
    with torch.inference_mode():
        got = lt.model.value(torch.as_tensor(TOKENS % 16)).numpy()
    np.testing.assert_allclose(got, base @ W.numpy().T + b.numpy(), atol=1e-5)

    mlp = {"objective": {"type": "mse"}, "arch": "mlp", "hidden": 8}
    w = {
        "value_head.ln.weight": 1 + 0.1 * torch.randn(H, generator=rng),
        "value_head.ln.bias": 0.1 * torch.randn(H, generator=rng),
        "value_head.fc1.weight": torch.randn(8, H, generator=rng) / 4,
        "value_head.fc1.bias": torch.randn(8, generator=rng),
        "value_head.fc2.weight": torch.randn(1, 8, generator=rng),
        "value_head.fc2.bias": torch.randn(1, generator=rng),
    }
    write_config(tmp_path / "m", value_head=mlp)
    save_file({**state, **w}, tmp_path / "m" / "model.safetensors")
    lt = T.load_trunk(tmp_path / "m")
    with torch.inference_mode():
        _, _, got = lt.model(torch.as_tensor(TOKENS % 16))
    n = {k: v.double().numpy() for k, v in w.items()}
    x = base.astype(np.float64)
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    h = x * n["value_head.ln.weight"] + n["value_head.ln.bias"]
    h = h @ n["value_head.fc1.weight"].T + n["value_head.fc1.bias"]
    h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))  # flax nn.gelu
    want = (h @ n["value_head.fc2.weight"].T + n["value_head.fc2.bias"])[:, 0]
    assert got.shape == (6,)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)

    with pytest.raises(VhError, match="missing keys.*value_head.fc1.bias"):
        save_file(state, tmp_path / "m" / "model.safetensors")
        T.load_trunk(tmp_path / "m")
    with pytest.raises(VhError, match="value_head.arch"):
        write_config(tmp_path / "m", value_head={**mlp, "arch": "transformer"})
        T.load_trunk(tmp_path / "m")


# --------------------------------------------------------------------------- bad input


def test_wrong_shapes_missing_and_unexpected_keys_are_listed(tmp_path):
    state = tiny_state(0)
    state["blocks.1.attn.wk.weight"] = torch.zeros(8, 32)
    del state["blocks.0.mlp.w_up.weight"], state["final_ln.weight"]
    state["blocks.0.attn.sinks"] = torch.zeros(4)
    path = save_tiny(tmp_path, state)
    with pytest.raises(VhError) as e:
        T.load_trunk(tmp_path)
    line = e.value.line()
    assert e.value.path == str(path) and "\n" not in line
    assert "missing keys (2): blocks.0.mlp.w_up.weight, final_ln.weight" in line
    assert "unexpected keys (1): blocks.0.attn.sinks" in line
    assert "wrong shapes (1): blocks.1.attn.wk.weight (8, 32) vs (16, 32)" in line


def test_long_key_lists_are_truncated(tmp_path):
    state = {k: v for k, v in tiny_state(0).items() if not k.startswith("blocks.")}
    save_tiny(tmp_path, state)
    with pytest.raises(VhError, match=r"missing keys \(18\): .* \(\+10 more\)"):
        T.load_trunk(tmp_path)


def test_non_finite_weights_name_the_tensor(tmp_path):
    state = tiny_state(0)
    state["blocks.1.mlp.w_down.weight"][3, 4] = float("nan")
    save_tiny(tmp_path, state)
    with pytest.raises(VhError) as e:
        T.load_trunk(tmp_path)
    assert e.value.field == "blocks.1.mlp.w_down.weight" and "NaN" in e.value.message


def test_vocab_mismatch_names_both(tmp_path):
    save_tiny(tmp_path, tiny_state(0, vocab=17))
    with pytest.raises(VhError, match="input_vocab_size is 16 but tok_emb.weight has 17 rows"):
        T.load_trunk(tmp_path)


@pytest.mark.parametrize(
    "over, field",
    [
        ({"hidden_size": ...}, "hidden_size"),
        ({"layer_norm_eps": ...}, "layer_norm_eps"),
        ({"hidden_size": "32"}, "hidden_size"),
        ({"num_hidden_layers": 2.0}, "num_hidden_layers"),
        ({"use_qk_norm": 1}, "use_qk_norm"),
        ({"layer_norm_eps": True}, "layer_norm_eps"),
        ({"max_position_embeddings": 9}, "max_position_embeddings"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"head_type": "q_values"}, "head_type"),
        ({"output_n_bins": ...}, "output_n_bins"),
        (
            {"value_head": {"objective": {"type": "cross_entropy"}}},
            "value_head.objective.vocab_size",
        ),
    ],
)
def test_bad_config_json_names_the_field(tmp_path, over, field):
    write_config(tmp_path, **over)  # no weights: the config alone decides
    with pytest.raises(VhError) as e:
        T.load_trunk(tmp_path)
    assert e.value.field == field and e.value.path == str(tmp_path / "config.json")


def test_unreadable_files_are_one_line_errors(tmp_path):
    path = save_tiny(tmp_path / "a", tiny_state(0))
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    with pytest.raises(VhError, match="cannot read safetensors") as e:
        T.load_trunk(tmp_path / "a")
    assert e.value.path == str(path)
    (tmp_path / "b.pt").write_bytes(b"not a zip")
    with pytest.raises(VhError, match="cannot read .pt"):
        T.load_trunk(tmp_path / "b.pt")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("{nope")
    with pytest.raises(VhError, match="not valid JSON"):
        T.load_trunk(tmp_path / "c")
    with pytest.raises(VhError, match="no config.json"):
        T.load_trunk(tmp_path)
    torch.save({"model": tiny_state(0)}, tmp_path / "d.pt")  # no encoder_config, no config.json
    with pytest.raises(VhError) as e:
        T.load_trunk(tmp_path / "d.pt")
    assert e.value.field == "encoder_config"


# --------------------------------------------------------------------------- baseline and CLI


def test_onehot_baseline():
    lt = T.load_onehot(vocab=17)
    tok = torch.as_tensor(TOKENS)
    got = lt.model.pooled(tok).numpy()
    want = np.zeros((6, 16, 17), np.float32)
    want[np.arange(6)[:, None], np.arange(16), TOKENS] = 1  # (B, 16, V), cell-major
    np.testing.assert_array_equal(got, want.reshape(6, -1))
    assert lt.dim == T.trunk_dim(lt.model) == 272 and lt.fingerprint["kind"] == "onehot"


def test_cli_init_and_show(tmp_path):
    runner = CliRunner()
    r = runner.invoke(
        main,
        [
            "trunk",
            "init",
            "--out",
            str(tmp_path / "t"),
            "--seed",
            "3",
            "--sinks",
            "--head",
            "action_policy",
            "--vocab",
            "17",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (
        r.output.strip().splitlines()[-1]
        == f"wrote a random tiny trunk (seed 3) to {tmp_path / 't'}"
    )
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert (cfg["use_attention_sinks"], cfg["head_type"], cfg["input_vocab_size"]) == (
        True,
        "action_policy",
        17,
    )
    r = runner.invoke(main, ["trunk", "show", str(tmp_path / "t")])
    sha = hashlib.sha256((tmp_path / "t" / "model.safetensors").read_bytes()).hexdigest()
    assert r.exit_code == 0 and f"sha256: {sha}" in r.output
    r = runner.invoke(main, ["trunk", "init", "--out", str(tmp_path / "t")])  # refuses to overwrite
    assert r.exit_code == 3 and r.output.count("\n") == 1 and "already holds a trunk" in r.output


def test_cli_init_claims_only_a_fresh_folder(tmp_path):
    from vh import durable

    r = CliRunner().invoke(main, ["trunk", "init", "--out", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    assert durable.owner(tmp_path / "t") == "init"  # marked like the init dirs export writes
    assert sorted(durable.entries(tmp_path / "t")) == ["config.json", "model.safetensors"]
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "notes.txt").write_text("mine")  # a folder of the user's: not claimed
    r = CliRunner().invoke(main, ["trunk", "init", "--out", str(tmp_path / "u")])
    assert r.exit_code == 0, r.output
    assert durable.owner(tmp_path / "u") is None


def test_the_command_module_does_not_import_torch():
    # `vh --help` stays fast: torch is imported inside the commands only
    code = "import sys, vh.cmd_trunk; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
