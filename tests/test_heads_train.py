"""The train engine on plain arrays: traces once, grid == single heads, AdamW == optax,
non-finite loss stops the run, streaming visits every row, 4 devices == 1 device."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vh.config import HeadConfig, LossConfig, TargetConfig, TrainConfig
from vh.errors import VhError
from vh.heads import train as T
from vh.heads.losses import make_objective, masked_mean
from vh.heads.modules import make_head
from vh.heads.targets import make_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC = make_spec(TargetConfig(thresholds=(2, 4, 8)))
OBJ = make_objective(SPEC, LossConfig())
PROBE = make_head("probe", SPEC, HeadConfig())


def _data(n=1000, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float16)
    y = (x[:, :3].astype(np.float32) + rng.normal(size=(n, 3)) > 0).astype(np.uint8)
    return x, y


def _train(tmp, members, tcfg, x, y, model=PROBE, mesh=None, stream=False, micro=0):
    mesh = mesh or T.make_mesh()
    n_val = len(x) // 5
    batching = T.Batching(tcfg.batch_size, micro, tcfg.seed)
    if stream:
        data = T.StreamData(
            reader=_Reader(x),
            train_rows=np.arange(n_val, len(x)),
            y_train=y[n_val:],
            val_rows=np.arange(n_val),
            y_val=y[:n_val],
            batching=batching,
            mesh=mesh,
            prefetch=2,
        )
    else:
        data = T.DeviceData(
            x_train=x[n_val:],
            y_train=y[n_val:],
            x_val=x[:n_val],
            y_val=y[:n_val],
            batching=batching,
            mesh=mesh,
        )
    books = T.train(tmp, model, OBJ, members, tcfg, data, x.shape[1], mesh=mesh, log=lambda s: None)
    return books, data


class _Reader:
    """The two things StreamData needs of a cache reader."""

    def __init__(self, x, chunk_rows=64):
        self.x, self.chunk_rows = x, chunk_rows

    def take(self, idx):
        return self.x[idx]


def _best(tmp, name):
    from vh.heads.checkpoint import load_tensors

    return load_tensors(Path(tmp) / "members" / name / "best.safetensors")[0]


# --------------------------------------------------------------------------- compile once


@pytest.mark.parametrize("stream", [False, True])
def test_step_traces_once_across_full_and_padded_batches(tmp_path, stream):
    x, y = _data(n=1000)  # 800 train rows, batch 96: 8 full batches + one padded (32 rows)
    T.TRACES.clear()
    tcfg = TrainConfig(batch_size=96, epochs=3, patience=5)
    books, data = _train(tmp_path, T.make_members(tcfg), tcfg, x, y, stream=stream)
    assert T.TRACES["step"] == 1
    assert data.steps_per_epoch == 9 and books["m000"].epochs_run == 3


# --------------------------------------------------------------------------- optimiser, grid


def test_update_is_optax_adamw(tmp_path):
    # three steps of our written-out AdamW == optax.adamw on the same batches (full batch)
    x, y = _data(n=500)
    tcfg = TrainConfig(lr=0.05, wd=0.1, batch_size=400, epochs=3, patience=9)
    members = T.make_members(tcfg)
    _train(tmp_path, members, tcfg, x, y)
    params = PROBE.init(T.member_keys(members)[0][0], jnp.zeros((1, 5)))["params"]
    opt = optax.adamw(0.05, weight_decay=0.1)
    st = opt.init(params)
    xt, yt = jnp.asarray(x[100:]), jnp.asarray(y[100:])

    @jax.jit
    def update(params, st):
        g = jax.grad(lambda p: masked_mean(OBJ.loss(PROBE.apply({"params": p}, xt), yt)))(params)
        u, st = opt.update(g, st, params)
        return optax.apply_updates(params, u), st

    for _ in range(3):
        params, st = update(params, st)
    best = _best(tmp_path, "m000")  # val NLL falls every epoch here, so best = last
    np.testing.assert_allclose(best["out.kernel"], params["out"]["kernel"], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(best["out.bias"], params["out"]["bias"], rtol=2e-5, atol=1e-6)


def test_grid_members_equal_individually_trained_heads(tmp_path):
    x, y = _data(n=1200, seed=1)
    mlp = make_head("mlp", SPEC, HeadConfig(hidden=8, dropout=0.2))  # dropout: keys matter
    tcfg = TrainConfig(batch_size=128, epochs=3, patience=1)
    grid = T.make_members(tcfg, {"lr": (1e-3, 3e-2), "seed": (0, 1)})
    books, _ = _train(tmp_path / "grid", grid, tcfg, x, y, model=mlp)
    for m in grid:
        alone = [T.Member("m000", m.lr, m.wd, m.seed)]
        b, _ = _train(tmp_path / m.name, alone, tcfg, x, y, model=mlp)
        assert b["m000"].best_epoch == books[m.name].best_epoch
        a, g = _best(tmp_path / m.name, "m000"), _best(tmp_path / "grid", m.name)
        for k in a:
            np.testing.assert_allclose(a[k], g[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("stream", [False, True])
def test_micro_batches_give_the_whole_batch_gradient(tmp_path, stream):
    x, y = _data(n=1000, seed=4)  # 800 train rows: batches of 400 in 4 micro-batches of 100
    tcfg = TrainConfig(lr=0.02, batch_size=400, epochs=2, patience=9)
    members = T.make_members(tcfg, {"lr": (0.02, 0.05)})
    _train(tmp_path / "whole", members, tcfg, x, y, stream=stream)
    _train(tmp_path / "micro", members, tcfg, x, y, stream=stream, micro=100)
    for m in members:
        a, b = _best(tmp_path / "whole", m.name), _best(tmp_path / "micro", m.name)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_batch_layout():
    assert T.batch_layout(65536, 4096, 10**6, 1) == (65536, 4096)
    assert T.batch_layout(65536, 4096, 1000, 1) == (1000, 1000)  # no larger than the data
    assert T.batch_layout(1000, 300, 10**6, 4) == (1200, 300)  # whole micro-batches
    assert T.batch_layout(1000, 0, 10**6, 3) == (1002, 1002)  # sharded over 3 devices
    with pytest.raises(VhError, match="not a multiple of the micro-batch 3"):
        T.Batching(batch=8, micro=3)
    # the plan: the configured batch clamped to the train rows, recorded as asked and used
    b = T.Batching.plan(requested=4096, micro=0, n_train=1000, n_dev=1, seed=7)
    assert (b.batch, b.micro, b.seed) == (1000, 1000, 7)
    assert b.record() == {"requested": 4096, "used": 1000, "micro": 1000}


def test_parse_grid_and_members():
    g = T.parse_grid(["lr=1e-4,3e-4", "seed=0,1"])
    assert g == {"lr": (1e-4, 3e-4), "seed": (0, 1)}
    ms = T.make_members(TrainConfig(wd=0.5), g)
    assert [(m.name, m.lr, m.wd, m.seed) for m in ms] == [
        ("m000", 1e-4, 0.5, 0),
        ("m001", 1e-4, 0.5, 1),
        ("m002", 3e-4, 0.5, 0),
        ("m003", 3e-4, 0.5, 1),
    ]
    with pytest.raises(VhError, match="unknown grid key"):
        T.parse_grid(["momentum=0.9"])
    with pytest.raises(VhError, match="comma-separated"):
        T.parse_grid(["lr=fast"])


def test_lr_schedule_warmup_cosine():
    f = T.lr_factor(TrainConfig(schedule="cosine", warmup_steps=10), total_steps=110)
    got = [float(f(jnp.asarray(s))) for s in (0, 9, 10, 60, 110)]
    # warmup (s+1)/10, then 0.5(1 + cos(pi (s-10)/100)): hand values
    np.testing.assert_allclose(got, [0.1, 1.0, 1.0, 0.5, 0.0], atol=1e-6)
    c = T.lr_factor(TrainConfig(), total_steps=10)
    assert float(c(jnp.asarray(7))) == 1.0


# --------------------------------------------------------------------------- guards


def test_non_finite_loss_stops_with_the_step_range(tmp_path):
    x, y = _data(n=1000)
    x[500] = np.inf  # train position 300 (train rows are x[200:])
    tcfg = TrainConfig(batch_size=100, epochs=2, seed=3)
    order = T.epoch_order(800, 0, 3)
    bad_step = int(np.flatnonzero(order == 300)[0]) // 100
    with pytest.raises(
        VhError, match=f"non-finite training loss at step {bad_step} of steps 0–7 \\(epoch 0\\)"
    ) as e:
        _train(tmp_path, T.make_members(tcfg), tcfg, x, y)
    assert e.value.code != 0
    assert not (tmp_path / "last").exists()  # nothing of the bad epoch is kept


def test_streaming_visits_every_train_row_once_per_epoch():
    x, _ = _data(n=700)
    pos = np.arange(700, dtype=np.int32)  # labels = positions, to see which rows come
    data = T.StreamData(
        reader=_Reader(x, chunk_rows=50),
        train_rows=np.arange(700) * 1,
        y_train=pos,
        val_rows=np.arange(0),
        y_val=pos[:0],
        batching=T.Batching(64, seed=0),
        mesh=T.make_mesh(),
        prefetch=3,
    )
    rng = np.random.default_rng(0)
    seen = [
        np.asarray(b["y"])[np.asarray(b["mask"]) > 0]
        for b in data._batches(data.train_rows, pos, rng, 700)
    ]
    assert sorted(np.concatenate(seen).tolist()) == list(range(700))
    assert len(seen) == data.steps_per_epoch == 11  # ceil(700 / 64), one padded batch
    first = np.concatenate(seen)
    assert not np.array_equal(first, np.sort(first))  # shuffled

    def part(limit):  # an epoch of `limit` states, stopped early: reproducible from the seed
        bs = data._batches(data.train_rows, pos, np.random.default_rng([0, 5]), limit)
        return np.concatenate([np.asarray(b["y"])[np.asarray(b["mask"]) > 0] for b in bs])

    a, b = part(300), part(300)
    assert len(a) == 300 and len(set(a.tolist())) == 300 and np.array_equal(a, b)


# --------------------------------------------------------------------------- devices

FOUR_DEVICES = textwrap.dedent("""
    import os, sys, tempfile
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from test_heads_train import _data, _train, _best
    from vh.config import TrainConfig
    from vh.heads import train as T
    assert len(jax.devices()) == 4
    x, y = _data(n=1000)
    tcfg = TrainConfig(batch_size=96, epochs=3)
    out = {{}}
    for n in (1, 4):
        tmp = tempfile.mkdtemp()
        members = T.make_members(tcfg, {{"lr": (1e-2, 3e-2)}})
        # 4 micro-batches of 24 rows, each sharded 6 rows per device
        _train(tmp, members, tcfg, x, y, mesh=T.make_mesh(jax.devices()[:n]), micro=24)
        out[n] = [_best(tmp, m.name) for m in members]
    for a, b in zip(out[1], out[4]):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    print("same")
""")


def test_four_devices_equal_one_device():
    script = FOUR_DEVICES.format(tests=str(ROOT / "tests"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "same", p.stderr[-3000:]
