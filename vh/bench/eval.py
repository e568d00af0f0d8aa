"""``vh bench eval``: how long the report's scoring takes on planted predictions.

Planted heads (:func:`vh.eval.planted.planted`) stand in for fitted ones, so the figures
measure the scoring alone: every metric, the by-run bootstrap, the verdict, then the pages.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

from vh.bench.report import Section, goal, measurements, number, section, today
from vh.config import EvalConfig
from vh.progress import say

SCORE_GOAL_S = 60.0  # 5M states x 2 heads scored within a minute on the 2-core VM


def _cpu() -> float:
    """User + system CPU seconds of this process so far."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def benchmark(
    *, n_rows: int, n_runs: int, n_heads: int, cfg: EvalConfig, out: Path, log=say
) -> dict:
    """Time the scoring (every metric, the bootstrap, the verdict) and the report pages.

    Args:
        n_rows, n_runs: planted test states and runs.
        n_heads: ordinal heads of increasing noise.
        cfg: eval config (``n_boot`` resamples).
        out: where the report pages go.
        log: where the progress line goes (a callable taking one line).

    Returns:
        ``{"rows", "runs", "heads", "n_boot", "planted_s", "score_s", "score_cpu_s", "write_s",
        "winner"}``; ``score_cpu_s`` (user + system CPU seconds of this process) tells the work
        apart from waiting when the machine is shared.
    """
    from vh.eval.planted import planted
    from vh.eval.report import score_all, write_report

    t0 = time.perf_counter()
    heads = {f"h{i}": ("ordinal", 0.3 + 0.1 * i, i) for i in range(n_heads)}
    preds = planted(
        n_rows=n_rows, n_runs=n_runs, heads=heads, val_rows=min(n_rows // 10, cfg.max_val_rows)
    )
    t1 = time.perf_counter()
    log(f"bench eval: planted {n_rows:,} rows x {n_heads} heads in {t1 - t0:.1f} s; scoring")
    c1 = _cpu()
    scored = score_all(preds, {}, cfg)
    t2, c2 = time.perf_counter(), _cpu()
    write_report(Path(out), scored, preds, {}, {"notes": ["planted benchmark data"]})
    t3 = time.perf_counter()
    return {
        "rows": n_rows,
        "runs": n_runs,
        "heads": n_heads,
        "n_boot": cfg.n_boot,
        "planted_s": t1 - t0,
        "score_s": t2 - t1,
        "score_cpu_s": c2 - c1,
        "write_s": t3 - t2,
        "winner": scored.verdicts[0]["winner"],
    }


def eval_section(r: dict) -> Section:
    """The ``eval`` section of BENCHMARKS.md for :func:`benchmark`'s figures."""
    setup = (
        f"`vh bench eval --rows {r['rows']} --runs {r['runs']} --heads {r['heads']}` — "
        f"{r['rows']:,} planted test states from {r['runs']:,} runs (ordinal heads, "
        f"`vh.eval.planted`), every metric of the report, {r['n_boot']} by-run bootstrap "
        f"resamples of the headline figures, the paired differences and the verdict, then the "
        f"report pages; {today()}."
    )
    figures = measurements(
        ["seconds", "goal"],
        [
            [
                f"scoring: all metrics + {r['n_boot']} resamples + verdict (wall)",
                number(r["score_s"], 1),
                f"≤ {number(SCORE_GOAL_S)}",
            ],
            ["scoring (CPU, user + sys)", number(r["score_cpu_s"], 1), "—"],
            ["report pages (PNGs, report.md, index.html)", number(r["write_s"], 1), "—"],
            ["planting the predictions", number(r["planted_s"], 1), "—"],
        ],
    )
    scored = r["rows"] * r["heads"]
    met = goal(
        f"scoring ≤ {number(SCORE_GOAL_S)} s: {number(r['score_s'], 1)} s",
        r["score_s"] <= SCORE_GOAL_S,
    )
    return section(
        "eval",
        setup,
        figures,
        f"Goal: {met}.",
        closing=f"scored {scored:,} predictions in {number(r['score_s'], 1)} s "
        f"({number(scored / r['score_s'])} rows/s); winner: {r['winner']}",
    )
