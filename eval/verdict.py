"""The verdict: which head wins, by the seed's rules, and why.

Heads are compared only inside a pool (threshold heads, log-score heads, return heads: their
figures are not on one scale across pools). Each step is decided only when the paired
bootstrap interval of the difference excludes zero:

1. Inside a family (same target and thresholds or bins) the best test NLL (RMSE for scalar
   return heads). If the NLL interval does not separate the two best, AUROC at the top
   thresholds (>= 16384 and >= 32768) then calibration at those thresholds (ordinal), or top±1
   accuracy (tiles, logscore), or MAE (return); then stability (the spread of validation NLL
   over the run's grid members, which decides only when one spread is at most half the other).
2. Family champions of one pool then meet on the pool's cross criteria (``Pool.cross``; for
   threshold heads: AUROC, calibration and top±1 on the shared thresholds).

The pools, their order and their cross criteria, and each family's criteria, belong to the
target kinds (``vh.heads.targets``); this module only applies them.

When nothing separates the two best heads there is no winner. A head whose figures cannot be
compared (its primary figure is NaN or infinite, or a criterion is non-finite for it while
finite for another head of the pool) is left out of the verdict, and the verdict says which
figure and why; a pool whose heads are all left out has no winner.
"""

from __future__ import annotations

import math

import numpy as np

from vh.eval import bootstrap as B
from vh.eval.scoring import HeadScore
from vh.heads import targets

HIGHER_IS_BETTER = {
    "auroc_top",
    "top1",
    "within1",
    "spearman_score",
    "pearson_score",
    "spearman",
    "pearson",
}


def pool_names() -> list[str]:
    """The pools of the registered target kinds, in report order (threshold heads first);
    heads are ranked inside a pool only."""
    return [p.name for p in targets.pools()]


def cross_criteria(pool: str) -> list[str]:
    """What family champions of ``pool`` meet on (their NLLs are not on one scale)."""
    return list(targets.pool(pool).cross)


def decide(scores: list[HeadScore], ci: float, n_runs: int | None = None) -> list[dict]:
    """One verdict per pool present (threshold heads first).

    With fewer than :data:`vh.eval.bootstrap.MIN_RUNS_FOR_INTERVALS` test runs (``n_runs``)
    the intervals are approximate (they under-cover: tests/test_bootstrap_coverage.py), so no
    winner is declared on them (a pool with one head keeps it: no interval decided it): the
    head that would have won is kept as ``"provisional_winner"`` and the verdict records
    ``"too_few_runs"``."""
    verdicts = [
        decide_pool([s for s in scores if s.pool == pool], ci)
        for pool in pool_names()
        if any(s.pool == pool for s in scores)
    ]
    if n_runs is not None and n_runs < B.MIN_RUNS_FOR_INTERVALS:
        for v in verdicts:
            if sum(len(f["ranking"]) for f in v["families"]) < 2:
                continue  # a lone head wins no contest: no interval decided it
            if v["winner"] is not None:
                v["provisional_winner"], v["winner"] = v["winner"], None
            v["too_few_runs"] = n_runs
    return verdicts


def decide_pool(scores: list[HeadScore], ci: float) -> dict:
    """The verdict among comparable heads: family champions, then the champions' contest.

    Returns:
        ``{"pool", "winner" (name or None), "families": [...], "cross": cascade or None,
        "deciding": the step that decided, or the first step of the undecided comparison}``,
        plus ``"excluded": [{"run", "metric", "value"}]`` when a head was left out for
        non-finite figures.
    """
    pool = scores[0].pool
    excluded = non_finite(scores)
    kept = [s for s in scores if s.name not in {e["run"] for e in excluded}]
    if kept:
        verdict = _decide_kept(pool, kept, ci)
    else:
        verdict = {"pool": pool, "winner": None, "families": [], "cross": None, "deciding": None}
    if excluded:  # only then: a report without such heads keeps its metrics.json unchanged
        verdict["excluded"] = excluded
    return verdict


def _decide_kept(pool: str, scores: list[HeadScore], ci: float) -> dict:
    """:func:`decide_pool` over heads with finite figures."""
    families: dict[str, list[HeadScore]] = {}
    for s in scores:
        families.setdefault(s.family, []).append(s)
    fam_results, champions, clear = [], [], True
    for fam, heads in families.items():
        ranked = sorted(heads, key=lambda h: _rank_key(h, h.primary))
        res = {"family": fam, "ranking": [h.name for h in ranked], "cascade": None}
        champ = ranked[0]
        if len(ranked) > 1:
            res["cascade"] = _cascade(ranked[0], ranked[1], family_criteria(ranked[0]), ci)
            won = res["cascade"]["winner"]
            clear &= won is not None
            champ = next(h for h in ranked if h.name == won) if won else ranked[0]
        res["champion"] = champ.name
        fam_results.append(res)
        champions.append(champ)
    cross = None
    if len(champions) > 1:
        criteria = cross_criteria(pool)
        champions.sort(key=lambda h: _rank_key(h, criteria[0]))
        cross = _cascade(champions[0], champions[1], criteria, ci)
        clear &= cross["winner"] is not None
        winner = cross["winner"]
    else:
        winner = fam_results[0]["champion"]
    return {
        "pool": pool,
        "winner": winner if clear else None,
        "families": fam_results,
        "cross": cross,
        "deciding": _deciding_step([cross] + [r["cascade"] for r in fam_results]),
    }


# --------------------------------------------------------------------------- non-finite figures


def verdict_figures(s: HeadScore) -> list[str]:
    """The figures the verdict may compare ``s`` on: its primary, its family's criteria and
    its pool's cross criteria (those it has)."""
    names = [s.primary] + family_criteria(s) + cross_criteria(s.pool)
    return [m for m in dict.fromkeys(names) if m in s.headline]


def non_finite(scores: list[HeadScore]) -> list[dict]:
    """The heads of one pool the verdict must leave out, with the figure that rules each out.

    A head is left out when its primary figure is NaN or infinite (broken predictions or
    labels), or when another criterion is non-finite for it but finite for another head. A
    criterion undefined for every head (AUROC at a threshold no test state reaches) is no
    head's fault: it simply cannot decide.

    Returns:
        ``[{"run", "metric", "value"}]`` (value spelled ``nan``, ``inf`` or ``-inf``).
    """
    out = []
    for s in scores:
        for m in verdict_figures(s):
            v = float(s.headline[m])
            if math.isfinite(v):
                continue
            elsewhere = any(
                math.isfinite(o.headline.get(m, math.nan)) for o in scores if o is not s
            )
            if m == s.primary or elsewhere:
                out.append({"run": s.name, "metric": m, "value": str(v)})
                break
    return out


# --------------------------------------------------------------------------- comparisons


def family_criteria(s: HeadScore) -> list[str]:
    """What two heads of ``s``'s family are compared on, in order (stability comes last):
    its kind's rule (``TargetKind.family_criteria``)."""
    return list(targets.get(s.kind, field="kind").family_criteria(s))


def _better(metric: str, a: float, b: float) -> bool:
    return a > b if metric in HIGHER_IS_BETTER else a < b


def _rank_key(s: HeadScore, metric: str) -> float:
    """Sort key, best first; a head without the figure (or NaN) sorts last."""
    v = s.headline.get(metric, np.nan)
    return np.inf if not np.isfinite(v) else (-v if metric in HIGHER_IS_BETTER else v)


def paired(a: HeadScore, b: HeadScore, metric: str, ci: float) -> dict:
    """Compare two heads on one metric: their values and the paired difference a - b."""
    lo, hi = B.interval(a.reps[metric] - b.reps[metric], ci)
    decided = B.excludes_zero(lo, hi)
    va, vb = a.headline[metric], b.headline[metric]
    return {
        "criterion": metric,
        "a": a.name,
        "b": b.name,
        "a_value": va,
        "b_value": vb,
        "a_ci": B.interval(a.reps[metric], ci),
        "b_ci": B.interval(b.reps[metric], ci),
        "diff": va - vb,
        "lo": lo,
        "hi": hi,
        "decided": decided,
        "winner": (a.name if _better(metric, va, vb) else b.name) if decided else None,
    }


def _grid_spread(s: HeadScore) -> float | None:
    """Standard deviation of the validation NLL over the run's grid members (2 or more)."""
    nlls = s.figures.get("grid_val_nll") or []
    return float(np.std(nlls)) if len(nlls) >= 2 else None


def _stability(a: HeadScore, b: HeadScore) -> dict | None:
    """The stability step: decides only when one spread is at most half the other."""
    sa, sb = _grid_spread(a), _grid_spread(b)
    if sa is None or sb is None:
        return None
    winner = (
        a.name if sa <= 0.5 * sb and sa < sb else (b.name if sb <= 0.5 * sa and sb < sa else None)
    )
    return {
        "criterion": "stability",
        "a": a.name,
        "b": b.name,
        "a_value": sa,
        "b_value": sb,
        "decided": winner is not None,
        "winner": winner,
    }


def _cascade(a: HeadScore, b: HeadScore, criteria: list[str], ci: float) -> dict:
    """Walk the criteria until one separates ``a`` and ``b``; stability last."""
    steps = []
    for metric in criteria:
        if metric in a.reps and metric in b.reps:
            steps.append(paired(a, b, metric, ci))
            if steps[-1]["decided"]:
                return {"winner": steps[-1]["winner"], "steps": steps}
    stab = _stability(a, b)
    if stab is not None:
        steps.append(stab)
        if stab["decided"]:
            return {"winner": stab["winner"], "steps": steps}
    return {"winner": None, "steps": steps}


def _deciding_step(cascades: list[dict | None]) -> dict | None:
    """The step to cite for "the difference between the two best heads"."""
    cascades = [c for c in cascades if c and c["steps"]]
    for c in cascades:
        if c["winner"] is None:
            return c["steps"][0]
    return cascades[0]["steps"][-1] if cascades else None
