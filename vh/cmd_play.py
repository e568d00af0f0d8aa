"""`vh play` (value heads play seeded games against the baselines) and `vh bench play`."""

from __future__ import annotations

import click

from vh.cmd_trunk import trust_pickle_option
from vh.shell import bench, done, main


@main.command("play")
@click.option(
    "--run",
    "runs",
    multiple=True,
    type=click.Path(file_okay=False),
    help="A fitted run dir whose best head plays (repeatable); needs --init.",
)
@click.option("--init", type=click.Path(), help="The trunk init dir the runs' caches came from.")
@click.option(
    "--export",
    "export",
    type=click.Path(file_okay=False),
    help="Instead of --run/--init: an init dir with a value_head (from vh export).",
)
@click.option("--games", type=int, default=100, show_default=True, help="Games per player.")
@click.option(
    "--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="Game seed."
)
@click.option(
    "--depth",
    type=int,
    default=1,
    show_default=True,
    help="Moves searched ahead: 1, or 2 (expectimax over the spawn; ~50x the leaves).",
)
@click.option(
    "--mode",
    default="expectation",
    show_default=True,
    help="expectation: exact expectation over the spawn; afterstate: the board after the move.",
)
@click.option(
    "--value",
    default=None,
    help="Leaf value: score, return, or p:T = P(highest tile >= T) (default: the head's own).",
)
@click.option(
    "--baselines",
    default=None,
    help="Comma-separated from random,greedy,expectimax,policy; '' for none "
    "(default: all that apply; policy when the trunk has a policy head).",
)
@click.option(
    "--max-moves",
    type=int,
    default=0,
    show_default=True,
    help="Stop games after N moves (0: never).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier play folder.")
@trust_pickle_option
def play(
    runs, init, export, games, seed, depth, mode, value, baselines, max_moves, out, device,
    overwrite, trust_pickle,
):  # fmt: skip
    """Play seeded games with value heads choosing the moves, and the baselines on the same
    seeds; writes play.json and play.md."""
    from vh.extract.play import PlayConfig
    from vh.extract.play import play as run_play

    names = None if baselines is None else tuple(b.strip() for b in baselines.split(",") if b)
    cfg = PlayConfig(
        games=games, seed=seed, depth=depth, mode=mode, value=value, baselines=names,
        device=device, max_moves=max_moves,
    )  # fmt: skip
    path = run_play(
        runs=runs, init=init, export=export, out=out, cfg=cfg, overwrite=overwrite,
        trust_pickle=trust_pickle,
    )  # fmt: skip
    done(f"wrote play results to {path} (play.json, play.md)")


@bench.command("play")
@click.option("--games", type=int, default=32, show_default=True, help="Games per trunk size.")
@click.option("--moves", type=int, default=20, show_default=True, help="Moves per game.")
@click.option("--presets", default="tiny,small", show_default=True, help="Trunk sizes.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--md", type=click.Path(dir_okay=False), default=None, help="Write into this file.")
def bench_play(games: int, moves: int, presets: str, device: str, md: str | None) -> None:
    """Moves/s of `vh play` per trunk size: depth 1 (expectation, afterstate) and depth 2."""
    from vh.bench.play import benchmark, play_section
    from vh.bench.report import publish

    names = tuple(p.strip() for p in presets.split(",") if p.strip())
    publish(play_section(benchmark(names, games, moves, device), games, moves, device), md)
