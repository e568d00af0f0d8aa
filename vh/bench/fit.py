"""``vh bench fit``: heads on cached embeddings against the alternatives, on the same states.

(a) one epoch of the probe and of the MLP head (JAX, data on the device, epoch in
``lax.scan``); (b) the seed's design: the frozen 288×10 PyTorch trunk (bfloat16) run for every
training batch with the same probe, timed on a slice and extrapolated to an epoch; (c) a plain
PyTorch loop over the same cached embeddings; (d) 8- and 64-member vmapped probe grids against
one head. Lives in the shell (it imports torch); the heads never do.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from vh.bench.report import Section, goal, machine, number, section, table, times, today
from vh.config import FitConfig

K_THRESHOLDS = 6


def _states(rows: int, dim: int, cache: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [n, D] float16 and planted ordinal labels [n, K] (a random logistic model)."""
    rng = np.random.default_rng(0)
    if cache:
        from vh.cache.reader import open_cache

        c = open_cache(cache)
        x = c.read_rows(0, min(rows, c.n))
    else:
        x = np.empty((rows, dim), np.float16)
        for a in range(0, rows, 1 << 18):  # in slices: no 4-byte copy of everything
            x[a : a + (1 << 18)] = rng.standard_normal((min(1 << 18, rows - a), dim), np.float32)
    w = rng.normal(size=x.shape[1]) / np.sqrt(x.shape[1])
    s = x[:, :].astype(np.float32) @ w.astype(np.float32)
    cuts = np.linspace(1.5, -1.5, K_THRESHOLDS)
    q = 1 / (1 + np.exp(-(s[:, None] + cuts[None, :])))
    return x, (rng.random((len(x), 1)) < q).astype(np.uint8)


def _jax_runner(x, y, cfg: FitConfig, arch: str, members: int):
    """A function running one epoch of ``members`` stacked heads, returning its seconds."""
    import dataclasses

    import jax

    from vh.heads import train as T
    from vh.heads.losses import make_objective
    from vh.heads.modules import make_head
    from vh.heads.targets import make_spec

    thresholds = tuple(2 ** (10 + k) for k in range(K_THRESHOLDS))
    spec = make_spec(dataclasses.replace(cfg.target, kind="ordinal", thresholds=thresholds))
    model, objective = make_head(arch, spec, cfg.head), make_objective(spec, cfg.loss)
    grid = [T.Member(f"m{i:03d}", cfg.train.lr * (1 + i), cfg.train.wd, i) for i in range(members)]
    mesh = T.make_mesh()
    b = T.Batching.plan(requested=cfg.train.batch_size, micro=cfg.train.microbatch,
                        n_train=len(x), n_dev=mesh.size, seed=0)  # fmt: skip
    data = T.DeviceData(x_train=x, y_train=y, x_val=x[: b.batch], y_val=y[: b.batch],
                        batching=b, mesh=mesh)  # fmt: skip
    factor = T.lr_factor(cfg.train, 1)
    data.bind(T.make_step(model, objective, factor), T.make_eval(model, objective))
    box = {"state": T.replicate(T.init_state(model, grid, x.shape[1]), mesh), "epoch": 0}
    keys = T.replicate(T.member_keys(grid)[1], mesh)

    def run() -> float:
        t0 = time.perf_counter()
        box["state"], stats = data.train_epoch(box["state"], keys, box["epoch"])
        jax.block_until_ready(stats)
        box["epoch"] += 1
        return time.perf_counter() - t0

    return run


def _torch_runner(x, y, cfg: FitConfig):
    """One epoch of the obvious PyTorch loop over the cached rows, returning its seconds."""
    import torch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y).float()
    head = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.wd)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    b = cfg.train.batch_size

    def run() -> float:
        t0 = time.perf_counter()
        perm = torch.randperm(len(x))
        for a in range(0, len(x), b):
            idx = perm[a : a + b]
            loss = loss_fn(head(xt[idx].float()), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    return run


def _seed_runner(cfg: FitConfig, batch: int):
    """One batch of the seed's design (the frozen 288×10 bf16 trunk run in the loop, then the
    same probe), returning its seconds."""
    import torch

    from vh.extract.trunk import load_trunk, write_init_dir

    with tempfile.TemporaryDirectory() as tmp:
        init = write_init_dir(Path(tmp) / "init", "288x10", seed=0)
        loaded = load_trunk(init, dtype=torch.bfloat16)
    trunk = loaded.model
    head = torch.nn.Linear(loaded.dim, K_THRESHOLDS)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.wd)
    gen = torch.Generator().manual_seed(0)

    def run() -> float:
        t0 = time.perf_counter()
        tokens = torch.randint(0, 12, (batch, 16), generator=gen)
        y = torch.randint(0, 2, (batch, K_THRESHOLDS), generator=gen).float()
        with torch.no_grad():
            emb = trunk.pooled(tokens).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(emb), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return run


def _torch_child(conn, path: str, cfg: dict, seed_batch: int) -> None:
    """The PyTorch contenders, in a process of their own (no JAX thread pool next to them)."""
    from vh.config import from_dict

    data = np.load(path, allow_pickle=False)
    fcfg = from_dict(FitConfig, cfg)
    runners = {
        "torch": _torch_runner(data["x"], data["y"], fcfg),
        "seed": _seed_runner(fcfg, seed_batch),
    }
    while (name := conn.recv()) is not None:
        conn.send(runners[name]())


class _TorchProcess:
    """Runs :func:`_torch_child` in a spawned process; ``runner(name)`` times one run there.

    JAX's CPU thread pool keeps spinning a moment after each computation, which slowed the
    PyTorch loop by ~30 % when both ran in one process (measured), so the two never share one.
    """

    def __init__(self, x, y, cfg: FitConfig, seed_batch: int, tmp: str):
        import multiprocessing as mp

        from vh.config import to_dict

        path = str(Path(tmp) / "states.npz")
        np.savez(path, x=x, y=y)
        self.conn, child = mp.Pipe()
        self.proc = mp.get_context("spawn").Process(
            target=_torch_child, args=(child, path, to_dict(cfg), seed_batch), daemon=True
        )
        self.proc.start()

    def runner(self, name: str):
        def run() -> float:
            self.conn.send(name)
            return self.conn.recv()

        return run

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join()


def _time_rounds(runners: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of every contender in each round; round 0 compiles and warms up, unrecorded.

    Every contender runs once per round, one after the other, so load from other processes on
    a shared machine hits them alike.
    """
    t = {k: [] for k in runners}
    for r in range(rounds + 1):
        for k, run in runners.items():
            seconds = run()
            if r:
                t[k].append(seconds)
    return t


def run_bench(
    cfg: FitConfig,
    *,
    rows: int,
    dim: int,
    cache: str | None,
    rounds: int,
    seed_batch: int,
    mlp_rows: int,
) -> Section:
    """Run the comparisons in interleaved rounds and return them as the ``fit`` section.

    Rows/s come from each contender's fastest round (load only ever adds time), ratios are
    the median over rounds of the ratio within a round.

    Args:
        cfg: the fit config (batch size, micro-batch, lr, wd, MLP width).
        rows, dim: cached states (random float16 embeddings unless ``cache``).
        cache: read the first ``rows`` rows of this cache instead.
        rounds: timed rounds (after one warm-up round that also compiles).
        seed_batch: states per timed batch of the seed's in-loop trunk.
        mlp_rows: rows of the MLP epoch slice.

    Returns:
        The section (see :func:`vh.bench.report.publish`).
    """
    load = os.getloadavg()[0]
    x, y = _states(rows, dim, cache)
    m = min(mlp_rows, len(x))
    with tempfile.TemporaryDirectory() as tmp:
        torch_proc = _TorchProcess(x, y, cfg, seed_batch, tmp)
        runners = {
            "probe": _jax_runner(x, y, cfg, "probe", 1),
            "grid8": _jax_runner(x, y, cfg, "probe", 8),
            "grid64": _jax_runner(x, y, cfg, "probe", 64),
            "mlp": _jax_runner(x[:m], y[:m], cfg, "mlp", 1),
            "torch": torch_proc.runner("torch"),
            "seed": torch_proc.runner("seed"),
        }
        t = _time_rounds(runners, rounds)
        torch_proc.close()
    n = len(x)
    work = {"probe": n, "grid8": n, "grid64": n, "mlp": m, "torch": n, "seed": seed_batch}
    run = {"rows": rows, "dim": dim, "rounds": rounds, "cache": cache, "load": load, "m": m}
    return _section(cfg, x, run, seed_batch, work, t)


def _section(cfg: FitConfig, x, run: dict, seed_batch: int, work: dict, t: dict) -> Section:
    """The ``fit`` section from each contender's work (rows) and seconds per round."""

    n, m = len(x), run["m"]
    rate = {k: work[k] / min(v) for k, v in t.items()}  # rows per second, fastest round
    per = {k: np.array([work[k] / s for s in v]) for k, v in t.items()}  # rows/s each round

    def ratio(a: str, b: str) -> float:  # median over rounds of rate a / rate b
        return float(np.median(per[a] / per[b]))

    vs_seed, vs_torch = ratio("probe", "seed"), ratio("probe", "torch")
    g8, g64 = 1 / ratio("grid8", "probe"), 1 / ratio("grid64", "probe")  # epoch-time ratios
    contenders = [  # (what, rows/s, members, ratio)
        ("(a) probe, one epoch (JAX, data on the device, epoch in lax.scan)", "probe", 1, ""),
        (f"(a) MLP head H={cfg.head.hidden}, epochs of a {m:,}-row slice", "mlp", 1, ""),
        (
            f"(b) seed's design: 288×10 bf16 trunk in the loop + probe (torch), batches of "
            f"{seed_batch:,}",
            "seed",
            1,
            f"probe {times(vs_seed, 0)} faster",
        ),
        (
            "(c) plain PyTorch loop over the cached embeddings (probe)",
            "torch",
            1,
            f"probe {times(vs_torch)} as fast",
        ),
        (
            "(d) 8-member vmapped probe grid (rows × members)",
            "grid8",
            8,
            f"epoch {times(g8)} one head's",
        ),
        (
            "(d) 64-member vmapped probe grid (rows × members)",
            "grid64",
            64,
            f"epoch {times(g64)} one head's",
        ),
    ]
    goals = [
        goal(f"probe ≥ 2,000× the seed's in-loop trunk: {times(vs_seed, 0)}", vs_seed >= 2000),
        goal(f"probe at least as fast as the PyTorch loop: {times(vs_torch)}", vs_torch >= 1.0),
        goal(f"8-head grid ≤ 2.5× one head: {times(g8)}", g8 <= 2.5),
        goal(f"MLP head ≥ 60k rows/s: {number(rate['mlp'])}", rate["mlp"] >= 60_000),
    ]
    setup = _setup(cfg, x, run)
    # a grid's rows/s count rows × members; its epoch still takes n / rate seconds
    rows = [
        [what, number(members * rate[k]), number(n / rate[k], 2), r]
        for what, k, members, r in contenders
    ]
    scale = (
        "Under load the PyTorch contenders lose more than the XLA ones. For scale, the quiet-"
        "machine figures of MEASUREMENTS.md (the seed's trunk ~1,085 states/s; a PyTorch probe "
        f"loop ~0.8 s per 2M-row epoch, 2.5M rows/s) put this probe rate at "
        f"{times(rate['probe'] / 1085, 0)} and {times(rate['probe'] / 2.5e6)} those."
    )
    return section(
        "fit",
        setup,
        table(
            ["what", "rows/s", f"seconds per {n:,}-row epoch", "ratio"],
            [False, True, True, False],
            rows,
        ),
        "Goals: " + "; ".join(goals) + ".",
        scale,
        closing=f"benchmarked vh fit on {run['rows']:,} rows: probe {times(vs_seed, 0)} the "
        f"seed's in-loop trunk, {times(vs_torch)} a PyTorch loop",
    )


def _setup(cfg: FitConfig, x, run: dict) -> str:
    """The section's first paragraph: the command, the data, the machine, how it was timed."""
    import jax
    import torch

    n = len(x)
    command = (
        f"`vh bench fit --rows {run['rows']} --dim {run['dim']} --rounds {run['rounds']}"
        + (f" --cache {run['cache']}" if run["cache"] else "")
        + " --md BENCHMARKS.md`"
    )
    setup = (
        f"{command} — {n:,} cached float16 states × {x.shape[1]}, 6 ordinal thresholds, batch "
        f"{cfg.train.batch_size:,} in micro-batches of {cfg.train.microbatch:,}; "
        f"{machine()}, jax {jax.__version__} ({jax.devices()[0].platform}), torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); {today()}. Load average "
        f"{run['load']:.1f} at the start (a shared machine): {run['rounds']} interleaved rounds "
        "after a warm-up one; rows/s from each contender's fastest round, ratios the median of "
        "the per-round ratios; the PyTorch contenders run in a process of their own."
    )
    return setup
