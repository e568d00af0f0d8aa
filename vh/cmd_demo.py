"""`vh demo [--out DIR]`: the whole study on a synthetic dataset, end to end."""

from __future__ import annotations

import click

from vh.shell import done, folder_option, init_option, main, trust_pickle_option


@main.command()
@folder_option(
    "--out",
    required=False,
    default="demo-out",
    help="Where the dataset, trunk, caches, runs and report go.",
)
@init_option("Use this trunk init dir instead of training one.")
@click.option(
    "--play",
    "play_games",
    default=50,
    show_default=True,
    type=click.IntRange(min=0),
    metavar="N",
    help="Play N seeded games with the study's heads and the baselines (random, greedy, "
    "expectimax, the trunk's policy) and report them beside the offline figures (0: no play).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a value of the embedded demo config (configs/demo.toml).",
)
@trust_pickle_option
def demo(out, init, play_games, sets, trust_pickle):
    """Synthesize games, train a small trunk on the training games' moves, extract caches
    (trunk and one-hot baseline), fit the seed's four comparisons plus the return head,
    play them (--play N), evaluate, and write the report. Resumable."""
    from vh.demo import demo_config, run_demo

    cfg = demo_config(sets)
    if init is not None:
        # a trunk that is refused is refused before the demo writes anything
        from vh.extract.trunk import load_trunk

        load_trunk(init, seed=cfg.extract.seed, trust_pickle=trust_pickle)
    run_demo(out, cfg, init=init, trust_pickle=trust_pickle, play_games=play_games)
    done(f"wrote the report to {out}/report/index.html (also report.md, metrics.json)")
