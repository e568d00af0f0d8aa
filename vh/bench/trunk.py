"""``vh bench trunk-train``: rows/s of ``vh trunk train``'s training loop, per trunk size.

What is timed is :func:`vh.extract.trunk_train.train_epoch` itself (batches gathered from
memory, forward, masked cross-entropy and the tile-counts read-out, backward, AdamW step)
over boards drawn at random with their legal moves from the engine; reading the dataset (once
per command) is not in the figure. One warm-up batch runs first, untimed (allocator and kernel selection).
"""

from __future__ import annotations

import os
import time

import numpy as np

from vh.bench.report import Section, machine, number, section, table, times, today


def random_moves(rows: int, seed: int = 0):
    """``rows`` random boards (exponents 0..11) that have a legal move, a legal move each."""
    from vh.extract.trunk_data import Moves, legal_moves

    rng = np.random.default_rng(seed)
    exps = rng.integers(0, 12, size=(rows * 2, 16), dtype=np.uint8)
    legal = legal_moves(exps)
    keep = np.flatnonzero(legal.any(axis=1))[:rows]
    exps, legal = exps[keep], legal[keep]
    # a uniform legal move: the first legal one after a random rotation of UDLR
    shift = rng.integers(0, 4, size=len(keep))
    rolled = np.stack([np.roll(r, -s) for r, s in zip(legal, shift, strict=True)])
    move = (np.argmax(rolled, axis=1) + shift) % 4
    return Moves(exps, move.astype(np.int64), legal)


def bench_train(
    preset: str, rows: int, batch: int, device: str = "cpu", seed: int = 0, threads: int = 0
) -> dict:
    """Train rows/s of one preset: ``{preset, parameters, rows, batch, seconds, rows_per_s}``."""
    import torch

    from vh.config import TrunkTrainConfig
    from vh.extract.trunk_config import TrunkConfig, preset_config
    from vh.extract.trunk_data import CountsScale
    from vh.extract.trunk_objective import Objective, TrainNet
    from vh.extract.trunk_train import deterministic, train_epoch

    raw = preset_config(preset, head_type="action_policy")
    dev = torch.device(device)
    data = random_moves(rows + batch, seed)
    with deterministic(dev, seed, threads):
        cfg = TrunkConfig.from_dict(raw, preset)
        # the default objective of vh trunk train: the policy and the tile-counts read-out
        weight = TrunkTrainConfig().counts_weight
        objective = Objective(weight, CountsScale.of(data.tokens, cfg.input_vocab_size))
        model = TrainNet(cfg, objective.counts).init_weights(seed).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        train_epoch(model, opt, data, np.arange(batch), batch, dev, objective)  # warm-up
        order = np.arange(batch, len(data))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_epoch(model, opt, data, order, batch, dev, objective)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        used = torch.get_num_threads()
    return {
        "preset": preset,
        "parameters": sum(p.numel() for p in model.parameters()),
        "rows": len(order),
        "batch": batch,
        "seconds": seconds,
        "rows_per_s": len(order) / seconds,
        "threads": used,
        "device": device,
    }


def trunk_section(results: list[dict]) -> Section:
    """The ``trunk train`` section from :func:`bench_train` results (same device)."""
    rows = [
        [
            r["preset"],
            number(r["parameters"]),
            r["device"],
            number(r["batch"]),
            f"{number(r['rows'])} in {number(r['seconds'], 2)} s",
            number(r["rows_per_s"]),
        ]
        for r in results
    ]
    rate = {r["preset"]: r["rows_per_s"] for r in results}
    first, last = results[0]["preset"], results[-1]["preset"]
    closing = f"{first} trains at {number(rate[first])} rows/s"
    if first != last:
        closing += f"; {first}/{last} speed ratio {times(rate[first] / rate[last], 1)}"
    return section(
        "trunk train",
        f"`vh bench trunk-train` — the training loop of `vh trunk train` (forward, masked "
        f"cross-entropy over the legal moves and the tile-counts read-out at its default "
        f"weight, backward, AdamW step; parameters include the read-out) on random boards; "
        f"{machine()}, {results[0]['threads']} torch threads, load average "
        f"{os.getloadavg()[0]:.1f} when it ended (a shared host: figures scale down with "
        f"load); {today()}. GPU: not measured (no device lent to this run).",
        table(
            ["preset", "parameters", "device", "batch", "rows timed", "train rows/s"],
            [False, True, False, True, True, True],
            rows,
        ),
        closing=closing,
    )
