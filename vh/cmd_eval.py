"""`vh eval`: the report that says which head wins; `vh bench eval`: its scoring speed."""

from __future__ import annotations

import click

from vh.errors import VhError
from vh.shell import bench, config_options, done, main


def _closing(report_dir: str, metrics: dict) -> str:
    winner = metrics.get("winner") or "no clear winner"
    return (
        f"wrote report to {report_dir}/index.html ({len(metrics['runs'])} runs; winner: {winner})"
    )


@main.command("eval")
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Report dir to write.")
@click.option(
    "--rebuild",
    type=click.Path(file_okay=False),
    default=None,
    help="Rebuild REPORT_DIR from its files only (predictions, copied run files).",
)
@config_options
def eval_cmd(run_dirs: tuple[str, ...], out: str | None, rebuild: str | None, cfg) -> None:
    """Score each run's best head on the test split and write REPORT_DIR/index.html.

    \b
    vh eval RUN_DIR... --out REPORT_DIR     predict, score, compare, write the report
    vh eval --rebuild REPORT_DIR            rebuild it from its files (no cache needed)
    """
    from vh.eval.report import build_report
    from vh.eval.run import evaluate

    if rebuild is not None:
        if run_dirs or out:
            raise VhError("--rebuild takes neither RUN_DIR nor --out", field="--rebuild")
        done(_closing(rebuild, build_report(rebuild, cfg.eval)))
        return
    if not run_dirs or not out:
        raise VhError(
            "give RUN_DIR... and --out REPORT_DIR (or --rebuild REPORT_DIR)", field="RUN_DIR"
        )
    done(_closing(out, evaluate(list(run_dirs), out, cfg.eval)))


@bench.command("eval")
@click.option("--rows", default=5_000_000, show_default=True, help="Planted test states.")
@click.option("--runs", default=20_000, show_default=True, help="Test runs they belong to.")
@click.option("--heads", default=2, show_default=True, help="Ordinal heads to score.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the report pages go (default: a temporary dir).",
)
@config_options
def bench_eval(rows: int, runs: int, heads: int, out: str | None, cfg) -> None:
    """Score planted predictions: every metric, cfg.eval.n_boot resamples, the report pages."""
    import tempfile

    from vh.eval.run import benchmark

    with tempfile.TemporaryDirectory() as tmp:
        r = benchmark(n_rows=rows, n_runs=runs, n_heads=heads, cfg=cfg.eval, out=out or tmp)
    click.echo(
        f"bench eval: {r['rows']:,} rows, {r['runs']:,} runs, {r['heads']} heads, "
        f"{r['n_boot']} resamples: scoring {r['score_s']:.1f} s wall, {r['score_cpu_s']:.1f} s "
        f"CPU (all metrics, bootstrap, verdict); report pages {r['write_s']:.1f} s; planting "
        f"{r['planted_s']:.1f} s"
    )
    done(
        f"scored {r['rows'] * r['heads']:,} predictions in {r['score_s']:.1f} s "
        f"({r['rows'] * r['heads'] / r['score_s']:,.0f} rows/s); winner: {r['winner']}"
    )
