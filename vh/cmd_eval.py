"""`vh eval`: the report that says which head wins; `vh bench eval`: its scoring speed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from vh import durable
from vh.errors import VhError
from vh.shell import bench, config_options, count_option, done, file_option, folder_option, main


def _made_by_eval(out: Path) -> bool:
    """A report dir of a vh before ownership markers (or of ``vh demo``): eval.json is eval's."""
    rec = durable.try_read_json(out / "eval.json")
    return bool(rec) and "vh_version" in rec and "runs" in rec


def _inputs(run_dirs: tuple[str, ...], play: tuple[str, ...] = ()) -> dict[str, str | None]:
    """What eval reads: the run dirs, the caches they were fitted on, the play folders
    (role -> path)."""
    inputs: dict[str, str | None] = {f"--play {p}": p for p in play}
    for d in run_dirs:
        inputs[f"RUN_DIR {d}"] = d
        rec = durable.try_read_json(Path(d) / "config.json")  # a bad one fails later, named
        cache = (rec or {}).get("cache")
        inputs[f"cache of {d}"] = cache.get("path") if isinstance(cache, dict) else None
    return inputs


def _check_report_dir(out: str, run_dirs: tuple[str, ...], play: tuple[str, ...] = ()) -> None:
    """Refuse a report dir that is (or holds) an input, or that vh did not make as a report.

    The report writer replaces its own files (index.html, metrics.json, plots/, ...) in place,
    so a folder of the user's files, a run dir or a cache must never be its --out.
    """
    durable.check_not_input(out, _inputs(run_dirs, play))
    durable.check_owned(out, "report", legacy=_made_by_eval)


def _closing(report_dir: str, metrics: dict) -> str:
    winner = metrics.get("winner") or "no clear winner"
    return (
        f"wrote report to {report_dir}/index.html ({len(metrics['runs'])} runs; winner: {winner})"
    )


@main.command("eval")
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False))
@folder_option("--out", required=False, help="Report dir to write.")
@folder_option(
    "--rebuild",
    required=False,
    help="Rebuild REPORT_DIR from its files only (predictions, copied run files).",
)
@click.option(
    "--play",
    "play",
    multiple=True,
    type=click.Path(),
    help="A `vh play` output folder (repeatable); its heads that are runs evaluated join the "
    "section 'Offline vs play'. Default: a play/ folder beside the run dirs or their parent.",
)
@config_options
def eval_cmd(
    run_dirs: tuple[str, ...], out: str | None, rebuild: str | None, play: tuple[str, ...], cfg
) -> None:
    """Score each run's best head on the test split and write REPORT_DIR/index.html.

    \b
    vh eval RUN_DIR... --out REPORT_DIR     predict, score, compare, write the report
    vh eval RUN_DIR... --out R --play DIR   ... and set the heads' play results beside them
    vh eval --rebuild REPORT_DIR            rebuild it from its files (no cache needed)
    """
    from vh.eval.report import build_report
    from vh.eval.run import evaluate
    from vh.progress import say

    if rebuild is not None:
        if run_dirs or out or play:
            raise VhError("--rebuild takes neither RUN_DIR nor --out nor --play", field="--rebuild")
        _check_report_dir(rebuild, ())
        done(_closing(rebuild, build_report(rebuild, _rebuild_config(rebuild, cfg.eval), log=say)))
        return
    if not run_dirs or not out:
        raise VhError(
            "give RUN_DIR... and --out REPORT_DIR (or --rebuild REPORT_DIR)", field="RUN_DIR"
        )
    _check_report_dir(out, run_dirs, play)  # before anything is created
    created = not os.path.lexists(out)
    durable.claim(out, "report")
    try:
        metrics = evaluate(list(run_dirs), out, cfg.eval, play=list(play) or None)
    except BaseException:
        if created:  # a failed eval leaves no half-made report dir behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    done(_closing(out, metrics))


@bench.command("eval")
@count_option("--rows", 5_000_000, "Planted test states.")
@count_option("--runs", 20_000, "Test runs they belong to.")
@count_option("--heads", 2, "Ordinal heads to score.")
@folder_option(
    "--out", required=False, help="Where the report pages go (default: a temporary dir)."
)
@file_option("--md", help="Also write the results as section 'eval' of this markdown file.")
@config_options
def bench_eval(rows: int, runs: int, heads: int, out: str | None, md: str | None, cfg) -> None:
    """Score planted predictions: every metric, cfg.eval.n_boot resamples, the report pages."""
    import tempfile

    from vh.bench.eval import benchmark, eval_section
    from vh.bench.report import publish

    with tempfile.TemporaryDirectory() as tmp:
        r = benchmark(n_rows=rows, n_runs=runs, n_heads=heads, cfg=cfg.eval, out=out or tmp)
    publish(eval_section(r), md)


def _rebuild_config(report_dir: str, live):
    """The eval settings a rebuild uses: those recorded in the report's eval.json (the same
    resamples and seed give the same intervals), unless --config/--set changed the eval
    section from its defaults, in which case those win."""
    from vh.config import EvalConfig, from_dict
    from vh.durable import try_read_json

    if live != EvalConfig():
        return live
    rec = try_read_json(Path(report_dir) / "eval.json") or {}
    recorded = (rec.get("config") or {}).get("eval")
    return from_dict(EvalConfig, recorded) if isinstance(recorded, dict) else live
