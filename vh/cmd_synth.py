"""``vh synth`` (play games, write a dataset dir), ``vh bench synth`` and ``vh bench decode``."""

from __future__ import annotations

import click

from vh.shell import bench, config_options, count_option, done, folder_option, main


@main.command("synth")
@folder_option("--out", help="Dataset dir.")
@click.option("--games", type=click.IntRange(min=1), default=None, help="[synth.games]")
@click.option("--player", default=None, help="random, greedy or expectimax. [synth.player]")
@click.option(
    "--depth",
    type=click.IntRange(min=1),
    default=None,
    help="Expectimax depth in moves. [synth.depth]",
)
@click.option("--seed", type=click.IntRange(min=0), default=None, help="[synth.seed]")
@click.option(
    "--layout",
    type=click.Choice(["packed", "selfplay", "legacy"]),
    default=None,
    help="Row layout of the steps shards. [synth.layout]",
)
@click.option(
    "--board-eval/--no-board-eval",
    default=None,
    help="Packed layout: 46-byte rows with board_eval, or 42 without. [synth.board_eval]",
)
@click.option(
    "--values/--no-values", default=None, help="Also write the values-*.npy sidecar. [synth.values]"
)
@click.option(
    "--metadata",
    type=click.Choice(["modern", "legacy"]),
    default=None,
    help="legacy: runs columns num_moves/final_score. [synth.metadata]",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset dir at --out.")
@config_options
def synth_cmd(
    out, games, player, depth, seed, layout, board_eval, values, metadata, overwrite, cfg
):
    """Play 2048 games and write a dataset dir (steps shards, metadata.db) at --out."""
    from vh.config import SynthConfig, build
    from vh.extract.synth import synth

    given = {
        k: v
        for k, v in dict(
            games=games,
            player=player,
            depth=depth,
            seed=seed,
            layout=layout,
            board_eval=board_eval,
            values=values,
            metadata=metadata,
        ).items()
        if v is not None
    }
    scfg = build(SynthConfig, given, prefix="synth.", base=cfg.synth)  # flags over config
    s = synth(scfg, out, overwrite=overwrite)
    done(
        f"wrote {s.rows:,} rows of {s.runs:,} runs ({scfg.player}, {scfg.layout}, "
        f"{s.shards} shard{'s' if s.shards != 1 else ''}, highest tile {s.highest_tile}) "
        f"to {s.out}"
    )


@bench.command("synth")
@count_option("--games", 100_000, "Games played by random and greedy (in synth's waves).")
@count_option(
    "--moves", 100, "Moves per greedy game at most (random games play to their end, ~120 moves)."
)
@count_option("--search-games", 2_000, "Games played by expectimax.")
@count_option("--search-moves", 20, "Moves per expectimax game.")
@config_options
def bench_synth_cmd(games, moves, search_games, search_moves, cfg):
    """Moves/s of the engine with each player, vectorised over many games in one process."""
    from vh.bench.report import publish
    from vh.bench.synth import bench_play, synth_section

    plays = {}
    for name, n, m in (
        ("random", games, 0),
        ("greedy", games, moves),
        ("expectimax", search_games, search_moves),
    ):
        plays[name] = (n, *bench_play(name, n, m, depth=cfg.synth.depth, seed=cfg.synth.seed))
    publish(synth_section(plays, cfg.synth.depth), None)


@bench.command("decode")
@click.option("--rows", type=click.IntRange(min=1), default=4_000_000, show_default=True)
@count_option("--batch", 65_536, "Rows decoded per call into the preallocated buffer.")
def bench_decode_cmd(rows, batch):
    """Rows/s from dataset rows to tokens: packed boards (unpack) and self-play exps."""
    from vh.bench.report import publish
    from vh.bench.synth import bench_decode, decode_section

    publish(decode_section(bench_decode(rows, batch), rows, batch), None)
