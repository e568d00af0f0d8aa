"""``vh bench fit``: heads on cached embeddings against the alternatives, on the same states.

(a) one epoch of the probe and of the MLP head (JAX, data on the device, epoch in
``lax.scan``); (b) the seed's design: the frozen 288×10 PyTorch trunk (bfloat16) run for every
training batch with the same probe, timed on a slice and extrapolated to an epoch; (c) a plain
PyTorch loop over the same cached embeddings; (d) 8- and 64-member vmapped probe grids against
one head. Lives in the shell (it imports torch); the heads never do.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

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


def _jax_epoch(x, y, cfg: FitConfig, arch: str, members: int, repeats: int = 3) -> float:
    """Seconds of one epoch of ``members`` stacked heads: the fastest of ``repeats`` epochs
    after a compiling one (other load on the machine only ever adds time)."""
    import dataclasses

    import jax

    from vh.heads import train as T
    from vh.heads.losses import make_objective
    from vh.heads.modules import make_head
    from vh.heads.targets import make_spec

    spec = make_spec(
        dataclasses.replace(
            cfg.target, kind="ordinal", thresholds=tuple(2 ** (10 + k) for k in range(6))
        )
    )
    model = make_head(arch, spec, cfg.head)
    objective = make_objective(spec, cfg.loss)
    grid = [T.Member(f"m{i:03d}", cfg.train.lr * (1 + i), cfg.train.wd, i) for i in range(members)]
    mesh = T.make_mesh()
    batch, micro = T.batch_layout(cfg.train.batch_size, cfg.train.microbatch, len(x), mesh.size)
    n_val = min(len(x), batch)
    data = T.DeviceData(x, y, x[:n_val], y[:n_val], batch, mesh, seed=0, micro=micro)
    key = (model, objective, "constant", 0, 1, mesh)
    data.bind(
        key,
        lambda: (
            T.make_step(model, objective, T.lr_factor(cfg.train, 1)),
            T.make_eval(model, objective),
        ),
    )
    state = T.replicate(T.init_state(model, grid, x.shape[1]), mesh)
    keys = T.replicate(T.member_keys(grid)[1], mesh)
    times = []
    for epoch in range(repeats + 1):
        t0 = time.perf_counter()
        state, stats = data.train_epoch(state, keys, epoch)
        jax.block_until_ready(stats)
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def _torch_probe_epoch(x, y, cfg: FitConfig) -> float:
    """Seconds of one epoch of the obvious PyTorch loop over the cached rows (fastest of 3)."""
    import torch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y).float()
    head = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.wd)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    b = cfg.train.batch_size
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x))
        for a in range(0, len(x), b):
            idx = perm[a : a + b]
            loss = loss_fn(head(xt[idx].float()), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return min(times)


def _seed_rows_per_s(cfg: FitConfig, batches: int, batch: int = 1024) -> float:
    """Rows/s of the seed's design: the frozen 288×10 bf16 trunk in the loop, then the probe
    (its fastest batch after a warm-up one, so the ratio to it errs in the seed's favour)."""
    import torch

    from vh.extract.trunk import load_trunk, write_init_dir

    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_trunk(
            write_init_dir(Path(tmp) / "init", "288x10", seed=0), dtype=torch.bfloat16
        )
    trunk = loaded.model
    head = torch.nn.Linear(loaded.dim, K_THRESHOLDS)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.wd)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(batches + 1):  # batch 0 warms up
        t0 = time.perf_counter()
        tokens = torch.randint(0, 12, (batch, 16), generator=gen)
        y = torch.randint(0, 2, (batch, K_THRESHOLDS), generator=gen).float()
        with torch.no_grad():
            emb = trunk.pooled(tokens).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(emb), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return batch / min(times[1:])


def _write_section(path: str, name: str, text: str) -> None:
    """Replace (or append) the ``## name`` section of a markdown file."""
    p = Path(path)
    doc = p.read_text() if p.exists() else "# Benchmarks\n"
    head = f"## {name}\n"
    if head in doc:
        start = doc.index(head)
        end = doc.find("\n## ", start + len(head))
        doc = doc[:start] + text + (doc[end + 1 :] if end >= 0 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    p.write_text(doc)


def run_bench(
    cfg: FitConfig,
    *,
    rows: int,
    dim: int,
    cache: str | None,
    seed_batches: int,
    mlp_rows: int,
    md: str | None,
) -> str:
    """Run the four comparisons and return them as a markdown section.

    Args:
        cfg: the fit config (batch size, lr, wd, MLP width).
        rows, dim: cached states (random float16 embeddings unless ``cache``).
        cache: read the first ``rows`` rows of this cache instead.
        seed_batches: batches of 1,024 states the seed's in-loop trunk is timed on.
        mlp_rows: rows of the MLP epoch slice.
        md: markdown file whose section ``fit`` is replaced with the results.

    Returns:
        The markdown section.
    """
    import jax
    import torch

    load = os.getloadavg()[0]
    x, y = _states(rows, dim, cache)
    n = len(x)
    probe = _jax_epoch(x, y, cfg, "probe", 1)
    grid8 = _jax_epoch(x, y, cfg, "probe", 8)
    grid64 = _jax_epoch(x, y, cfg, "probe", 64, repeats=2)
    m = min(mlp_rows, n)
    mlp_rate = m / _jax_epoch(x[:m], y[:m], cfg, "mlp", 1, repeats=2)
    torch_probe = _torch_probe_epoch(x, y, cfg)
    seed_rate = _seed_rows_per_s(cfg, seed_batches)

    rate = n / probe
    rows_tab = [
        ("(a) probe, one epoch (JAX, data on device, epoch in lax.scan)", rate, probe, ""),
        (f"(a) MLP head H={cfg.head.hidden}, from a {m:,}-row slice", mlp_rate, n / mlp_rate, ""),
        (
            "(b) seed's design: 288×10 bf16 trunk in the loop + probe (torch), from "
            f"{seed_batches}×1,024 states",
            seed_rate,
            n / seed_rate,
            f"probe is {rate / seed_rate:,.0f}× faster",
        ),
        (
            "(c) plain PyTorch loop over the cached embeddings (probe)",
            n / torch_probe,
            torch_probe,
            f"probe is {torch_probe / probe:.2f}× as fast",
        ),
        (
            "(d) 8-member vmapped probe grid",
            8 * n / grid8,
            grid8,
            f"{grid8 / probe:.2f}× one head's time",
        ),
        (
            "(d) 64-member vmapped probe grid",
            64 * n / grid64,
            grid64,
            f"{grid64 / probe:.2f}× one head's time",
        ),
    ]
    goals = [
        (
            f"probe ≥ 2,000× the seed's in-loop trunk: {rate / seed_rate:,.0f}×",
            rate / seed_rate >= 2000,
        ),
        (
            f"probe at least as fast as the PyTorch loop: {torch_probe / probe:.2f}×",
            probe <= torch_probe,
        ),
        (f"8-head grid ≤ 2.5× one head: {grid8 / probe:.2f}×", grid8 <= 2.5 * probe),
        (f"MLP head ≥ 60k rows/s: {mlp_rate:,.0f}", mlp_rate >= 60_000),
    ]
    lines = [
        "## fit",
        "",
        f"Command: `vh bench fit --rows {rows} --dim {dim}"
        + (f" --cache {cache}" if cache else "")
        + f" --md BENCHMARKS.md` — {n:,} cached "
        f"float16 states × {x.shape[1]}, batch {cfg.train.batch_size:,}, 6 ordinal thresholds; "
        f"{platform.processor() or platform.machine()}, jax {jax.__version__} "
        f"({jax.devices()[0].platform}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads; {time.strftime('%Y-%m-%d')}; load average "
        f"{load:.1f} at the start (on {os.cpu_count()} cores). Times: the fastest of a few "
        "epochs after a compiling one (other load only adds time).",
        "",
        f"| what | rows/s | seconds per {n:,}-row epoch | ratio |",
        "| --- | ---: | ---: | --- |",
        *[f"| {w} | {r:,.0f} | {s:,.2f} | {c} |" for w, r, s, c in rows_tab],
        "",
        "Goals: " + "; ".join(f"{t} ({'met' if ok else 'NOT met'})" for t, ok in goals) + ".",
        "",
    ]
    text = "\n".join(lines)
    if md:
        _write_section(md, "fit", text)
    return text
