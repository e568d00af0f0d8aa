"""The plain-English verdict: paragraphs naming the winner (or none) and citing the numbers."""

from __future__ import annotations

import numpy as np

from vh.eval import bootstrap as B
from vh.eval.formatting import LABELS, head_label, label_of, num, see, with_ci
from vh.eval.scoring import Context, HeadScore
from vh.eval.verdict import cross_criteria, paired
from vh.heads import targets


def writeup(
    verdicts: list[dict],
    by_name: dict[str, HeadScore],
    top: list[int],
    ctx: Context,
    notes: list[str],
) -> list[str]:
    """The plain-English page: paragraphs naming the winner (or none) and citing numbers.

    Args:
        verdicts: :func:`vh.eval.verdict.decide`'s verdicts, one per pool.
        by_name: every head's score by name.
        top: the shared top thresholds (``auroc_top``, ``ece_high``).
        ctx: the scoring context (rows, runs, config).
        notes: remarks of the evaluation (different test sets, missing columns).
    """
    ci = int(round(ctx.cfg.ci * 100))
    paras = [
        f"{len(by_name)} head(s) were scored on the same {ctx.index.code.size:,} test "
        f"states from {ctx.index.n_runs:,} test runs. Intervals are {ci} % bootstrap "
        f"intervals over runs ({ctx.cfg.n_boot} resamples); a difference "
        "decides only when its interval excludes zero."
    ]
    for v in verdicts:
        paras += _verdict_paragraphs(v, by_name, top)
    paras += _baseline_sentences(verdicts, by_name, top, ctx.cfg.ci)
    paras += _skill_sentences(list(by_name.values()), ctx.cfg.ci)
    paras += _calibration_sentences(verdicts, by_name, top)
    paras += _outcome_and_distribution_sentences(verdicts, by_name)
    paras += _ece_note(list(by_name.values()), ctx.cfg.ci)
    paras += [f"Note: {n}" for n in notes]
    return paras


def _too_few_runs_sentence(v: dict) -> str:
    """Why a verdict with fewer than MIN_RUNS_FOR_INTERVALS test runs names no winner."""
    lead = v.get("provisional_winner")
    text = (
        f"only {v['too_few_runs']} test runs (fewer than {B.MIN_RUNS_FOR_INTERVALS}), so the "
        "intervals are approximate and no winner is declared on them"
    )
    return text + (f"; {lead} would lead (provisional)" if lead else "")


def _verdict_paragraphs(v: dict, by_name: dict[str, HeadScore], top: list[int]) -> list[str]:
    """One pool: the winner (or none), heads left out, each family's contest, the cross one."""
    pool = targets.pool(v["pool"]).title
    if v["winner"]:
        w = by_name[v["winner"]]
        paras = [f"**Winner among the {pool}: {head_label(w)}** ({w.family})."]
    else:
        paras = [f"**No clear winner among the {pool}.**"]
    if v.get("too_few_runs") is not None:
        text = _too_few_runs_sentence(v)
        paras.append(f"{text[0].upper()}{text[1:]}.")
    paras += [_excluded_sentence(e) for e in v.get("excluded", [])]
    for fam in v["families"]:
        if fam["cascade"] is None:
            paras.append(f"{fam['champion']} is the only {fam['family']} head.")
            continue
        lead = (
            f"In the {fam['family']} family ({len(fam['ranking'])} heads), "
            f"{fam['ranking'][0]} has the best test {LABELS[by_name[fam['ranking'][0]].primary]}"
            f" and {fam['ranking'][1]} is next."
        )
        paras.append(" ".join([lead] + [step_sentence(s, top) for s in fam["cascade"]["steps"]]))
    if v["cross"] is not None:
        paras.append(
            " ".join(
                ["Across families, the champions meet on the shared thresholds."]
                + [step_sentence(s, top) for s in v["cross"]["steps"]]
            )
        )
    return paras


def _excluded_sentence(e: dict) -> str:
    """Why a head takes no part in the verdict."""
    return (
        f"{e['run']} is left out of the verdict: its test {label_of(e['metric'])} is "
        f"{e['value']}, and a figure that is not a finite number cannot be compared "
        "(check its predictions and the labels of its test states)."
    )


def step_sentence(step: dict, top: list[int]) -> str:
    """One step of a comparison: both values with intervals, and whether it decides."""
    crit = step["criterion"]
    what = {
        "nll": "test NLL",
        "auroc_top": "AUROC at " + " and ".join(f">= {t}" for t in top),
        "ece_high": "calibration (ECE) at " + " and ".join(f">= {t}" for t in top),
        "within1": "top±1 accuracy",
        "rmse": "RMSE of the return",
        "mae": "MAE of the return",
        "stability": "stability (spread of the validation NLL over the grid members)",
    }.get(crit, LABELS.get(crit, crit))
    if crit == "stability":
        text = (
            f"On {what}: {step['a']} {num(step['a_value'])} vs {step['b']} {num(step['b_value'])}"
        )
        return text + (
            f"; {step['winner']} is the more stable."
            if step["decided"]
            else "; not different enough to decide."
        )
    a_lo, a_hi = step["a_ci"]
    b_lo, b_hi = step["b_ci"]
    text = (
        f"On {what}, {step['a']} has {num(step['a_value'])} [{num(a_lo)}, {num(a_hi)}] "
        f"and {step['b']} {num(step['b_value'])} [{num(b_lo)}, {num(b_hi)}]; the "
        f"difference {num(step['diff'])} [{num(step['lo'])}, {num(step['hi'])}] "
    )
    if step["decided"]:
        return text + f"excludes zero, so {step['winner']} wins on it."
    return text + "includes zero, so it does not separate them."


def _leader(v: dict) -> str | None:
    """The pool's winner, else its first family's best head; None when every head is out."""
    if v["winner"]:
        return v["winner"]
    return v["families"][0]["ranking"][0] if v["families"] else None


def _ece_note(scores: list[HeadScore], ci: float) -> list[str]:
    """Say so when an ECE estimate lies below its own interval (ECE's upward noise bias)."""
    for s in scores:
        for k in s.headline:
            lo, _ = B.interval(s.reps[k], ci)
            if k.startswith("ece") and s.headline[k] < lo:
                return [
                    "Note: ECE is biased upward by sampling noise, and a resample of runs adds "
                    "noise, so some ECE intervals lie above their estimate (e.g. "
                    f"{s.name} {label_of(k)} {with_ci(s, k, ci)}); read them as a range of "
                    "plausible miscalibration, not a symmetric error bar."
                ]
    return []


def _baseline_sentences(
    verdicts: list[dict], by_name: dict[str, HeadScore], top: list[int], ci: float
) -> list[str]:
    """The leader of each pool against each raw-board baseline, on the pool's first criterion."""
    out = []
    for v in verdicts:
        if not v["families"]:
            continue
        leader = by_name[v["winner"] or v["families"][0]["champion"]]
        metric = cross_criteria(v["pool"])[0]
        left_out = {e["run"] for e in v.get("excluded", [])}
        for s in by_name.values():
            if (
                s.baseline
                and s is not leader
                and s.pool == v["pool"]
                and metric in s.reps
                and s.name not in left_out
            ):
                out.append(
                    "Against the raw-board baseline: "
                    + step_sentence(paired(leader, s, metric, ci), top)
                )
    return out


def _calibration_sentences(
    verdicts: list[dict], by_name: dict[str, HeadScore], top: list[int]
) -> list[str]:
    """What temperature scaling would do to the leader of each pool, and whether it helps:
    T is recommended only when its by-run interval excludes 1 and it lowers the validation
    NLL; otherwise the test figures at T are given for reference, not as a fix."""
    out = []
    for v in verdicts:
        name = _leader(v)
        temp = by_name[name].figures.get("temperature") if name else None
        if not temp:
            continue
        shift = f"test NLL {num(temp['before']['nll'])} -> {num(temp['after']['nll'])}"
        for t in top:
            if f"ece@{t}" in temp["before"]:
                b, a = temp["before"][f"ece@{t}"], temp["after"][f"ece@{t}"]
                shift += f", ECE at >= {t} {num(b)} -> {num(a)}"
        out.append(temperature_sentence(name, temp) + f" At T the {shift}.")
    return out


def _outcome_and_distribution_sentences(
    verdicts: list[dict], by_name: dict[str, HeadScore]
) -> list[str]:
    """Per pool leader: where a threshold head errs most by final outcome (its largest under-
    and over-estimate of a milestone), and how a binned return head fares as a distribution
    (CRPS, PIT flatness, the end bins, its mean against its mode)."""
    out = []
    for v in verdicts:
        name = _leader(v)
        s = by_name.get(name) if name else None
        if s is None:
            continue
        if s.figures.get("outcome") and s.figures.get("per_threshold"):
            out.append(_outcome_sentence(s))
        if s.figures.get("distribution"):
            d, h = s.figures["distribution"], s.headline
            ends = d["end_bins"]
            out.append(
                f"As a distribution, {name} has CRPS {num(h['crps'])} ({d['crps_units']}); "
                f"its PIT histogram deviates from flat by at most {num(d['pit_max_dev'])} "
                f"(0 = calibrated). Its end bins hold {num(ends['predicted_low'])} and "
                f"{num(ends['predicted_high'])} of the predicted mass against observed shares "
                f"{num(ends['observed_low'])} and {num(ends['observed_high'])}. Its predictive "
                f"mean errs by MAE {num(h['mae_mean'])}, its mode by MAE {num(h['mae_mode'])}."
            )
    return out


def _outcome_sentence(s: HeadScore) -> str:
    """The largest under- and over-estimate of P(>= T) by the runs' final outcome."""
    thresholds = [r["threshold"] for r in s.figures["per_threshold"]]
    cells = [
        (b, r["outcome"], t, p)
        for r in s.figures["outcome"]
        for t, p, b in zip(thresholds, r["predicted"], r["bias"], strict=True)
        if b is not None
    ]
    under, over = min(cells), max(cells)
    return (
        f"By final outcome, {s.name} most under-estimates P(>= {under[2]}) for runs whose "
        f"highest tile was {under[1]} (predicted {num(under[3])} on average, "
        f"{under[0]:+.3f}) and most over-estimates P(>= {over[2]}) for runs whose highest "
        f"tile was {over[1]} (predicted {num(over[3])}, {over[0]:+.3f})."
    )


def temperature_sentence(name: str, temp: dict) -> str:
    """T of one head with its interval, and plainly whether scaling helps."""
    t = f"T = {temp['T']:.3f}"
    if temp.get("lo") is not None and temp["lo"] == temp["lo"]:  # not NaN
        t += f" [{temp['lo']:.3f}, {temp['hi']:.3f}] over {temp['val_runs']:,} validation runs"
    text = f"Temperature scaling of {name} fitted on the validation split gives {t}: "
    if temp.get("recommended"):
        return text + (
            f"recommended, since {temp.get('why')} "
            f"({num(temp['val_nll_before'])} -> {num(temp['val_nll_after'])})."
        )
    return text + f"scaling does not help, since {temp.get('why', 'it has no interval')}."


def no_skill_heads(scores: list[HeadScore]) -> list[HeadScore]:
    """Heads whose NLL skill over the train base rates has an interval that includes 0."""
    return [s for s in scores if s.figures.get("no_skill")]


def _skill_sentences(scores: list[HeadScore], ci: float) -> list[str]:
    """Each head's skill over the train split's base rates; the heads with none flagged."""
    rated = [s for s in scores if "nll_skill" in s.headline]
    if not rated:
        return []
    parts = [f"{s.name} {with_ci(s, 'nll_skill', ci)}" for s in rated]
    out = [
        "NLL skill over the train split's base rates (1 - head NLL / base-rate NLL on the "
        "same test states; 0 = no better than always predicting the base rates): "
        + "; ".join(parts)
        + "."
    ]
    for s in no_skill_heads(rated):
        out.append(
            f"**{s.name}: no skill over the base rates** (its NLL skill interval includes 0 "
            "or lies below it)."
        )
    return out


# --------------------------------------------------------------------------- the first page

COMPARISON, VERDICT = "Comparison across runs", "Verdict"

# the verdict's criteria in words a newcomer reads without the glossary
PLAIN = {
    "nll": "test NLL (how surprised it is by the outcomes)",
    "bucket_nll": "bucket NLL (how surprised it is by the outcomes)",
    "auroc_top": "telling games that reach the top tiles from those that do not (AUROC)",
    "ece_high": "honest probabilities at the top tiles (calibration error)",
    "within1": "guessing the final tile within one bucket",
    "rmse": "error of the predicted return (RMSE)",
    "mae": "error of the predicted return (MAE)",
}


def run_title(s: HeadScore) -> str:
    """The heading of a head's own section (as the report writes it)."""
    return f"Run {head_label(s)}: {s.family}"


def plain_english(
    verdicts: list[dict],
    by_name: dict[str, HeadScore],
    ctx: Context,
    play: str | None = None,
) -> list[str]:
    """At most ten short bullets a reader new to the figures can act on, each linking the
    section that backs it: which head to co-train next and how sure, whether the best head
    offline also plays best (``play``: :func:`vh.eval.play.comparison_sentence`, when there
    are play results), what the trunk adds over the raw board, heads with no skill over the
    base rates, temperature, what to try next."""
    ci = ctx.cfg.ci
    out = [_pick(v, by_name, ci) for v in verdicts]
    out.append(_how_sure(ctx))
    out += [play] if play else []
    out += _trunk_vs_board(verdicts, by_name, ci)
    out.append(_skill_bullet(list(by_name.values()), ci))
    out += _temperature_bullets(verdicts, by_name)
    out.append(_next_step(verdicts, by_name, ctx))
    return [b for b in out if b][:10]


def _pick(v: dict, by_name: dict[str, HeadScore], ci: float) -> str:
    """Which head of a pool to co-train next, and the comparison that says so."""
    pool = targets.pool(v["pool"]).title.split(" (")[0]
    step = v.get("deciding")
    if v["winner"] and sum(len(f["ranking"]) for f in v["families"]) == 1:
        return f"{v['winner']} is the only one of the {pool}: nothing to rank it against {see(VERDICT)}."
    if v["winner"]:
        why = ""
        if step and step.get("decided") and "lo" in step:
            what = PLAIN.get(step["criterion"], label_of(step["criterion"]))
            why = (
                f": it is better at {what} by {num(abs(step['diff']))} "
                f"(range {num(step['lo'])} to {num(step['hi'])}, which excludes 0)"
            )
        return f"**Co-train {v['winner']} next** (best of the {pool}){why} {see(VERDICT)}."
    if v.get("provisional_winner"):
        return (
            f"No winner among the {pool} is declared: {_too_few_runs_sentence(v)} {see(VERDICT)}."
        )
    if not v["families"]:
        return f"No {pool[:-1]} can be ranked: their figures are not finite numbers {see(VERDICT)}."
    lead = v["families"][0]["ranking"][0]
    if step and "lo" in step:
        return (
            f"**No clear choice among the {pool}**: {step['a']} and {step['b']} differ at "
            f"{PLAIN.get(step['criterion'], label_of(step['criterion']))} by "
            f"{num(step['diff'])}, but the range "
            f"{num(step['lo'])} to {num(step['hi'])} includes 0, so either may be better; "
            f"{lead} leads on its own figure {see(VERDICT)}."
        )
    return f"{lead} is the only one of the {pool} with figures to compare {see(VERDICT)}."


def _how_sure(ctx: Context) -> str:
    """How many test runs the answers rest on, and whether that is enough."""
    runs = ctx.index.n_runs
    text = (
        f"The figures come from {ctx.index.code.size:,} test positions of {runs:,} test games; "
        f"every range is a {int(round(100 * ctx.cfg.ci))} % range over re-drawn games"
    )
    if runs < B.MIN_RUNS_FOR_INTERVALS:
        text += (
            f". {runs} games are too few for reliable ranges (at least "
            f"{B.MIN_RUNS_FOR_INTERVALS}): treat every conclusion here as provisional"
        )
    return text + f" {see(COMPARISON)}."


def _trunk_vs_board(verdicts: list[dict], by_name: dict[str, HeadScore], ci: float) -> list[str]:
    """What the trunk's features add over the raw board, from the baseline run if any."""
    baselines = [s for s in by_name.values() if s.baseline]
    if not baselines:
        return [
            "What the trunk adds over the raw board is not measured here: fit the same head "
            f"on the one-hot board cache and evaluate it alongside {see(COMPARISON)}."
        ]
    out = []
    for v in verdicts:
        leader = by_name.get(_leader(v) or "")
        for b in baselines:
            if leader is None or b.pool != v["pool"]:
                continue
            if b is leader:  # the board-only head leads: measure the best trunk head against it
                leader = _best_trunk_head(by_name, b)
                if leader is None:
                    continue
            metric = _shared_metric(leader, b)
            if metric is None:
                continue
            step = paired(leader, b, metric, ci)
            better = "lower" if step["diff"] < 0 else "higher"
            verdict = (
                "the trunk's features help"
                if step["decided"] and step["diff"] < 0
                else "the trunk's features do not clearly help"
                if not step["decided"]
                else "the raw board does better"
            )
            out.append(
                f"Against the raw board: {verdict}: {leader.name}'s {label_of(metric)} is "
                f"{num(abs(step['diff']))} {better} than the board-only {b.name} "
                f"(range {num(step['lo'])} to {num(step['hi'])}) {see(COMPARISON)}."
            )
    return out


def _shared_metric(a: HeadScore, b: HeadScore) -> str | None:
    """The first headline loss both heads have (lower is better for each)."""
    return next((m for m in ("bucket_nll", "nll", "rmse") if m in a.reps and m in b.reps), None)


def _best_trunk_head(by_name: dict[str, HeadScore], board: HeadScore) -> HeadScore | None:
    """The trunk head of ``board``'s pool with the lowest shared loss (None if there is none)."""
    rivals = [
        s
        for s in by_name.values()
        if not s.baseline and s.pool == board.pool and _shared_metric(s, board) is not None
    ]
    if not rivals:
        return None
    metric = {id(s): _shared_metric(s, board) for s in rivals}
    return min(rivals, key=lambda s: float(s.headline.get(metric[id(s)], np.inf)))


def _skill_bullet(scores: list[HeadScore], ci: float) -> str:
    """Whether every head beats always predicting the train split's base rates."""
    rated = [s for s in scores if "nll_skill" in s.headline]
    if not rated:
        return ""
    flat = no_skill_heads(rated)
    if flat:
        names = ", ".join(s.name for s in flat)
        return (
            f"**{names} {'does' if len(flat) == 1 else 'do'} no better than always predicting "
            f"the base rates** of the training games (skill range includes 0): do not co-train "
            f"{'it' if len(flat) == 1 else 'them'} as is {see(COMPARISON)}."
        )
    best = max(rated, key=lambda s: s.headline["nll_skill"])
    return (
        f"Every head beats always predicting the training games' base rates; the largest "
        f"gain is {best.name}'s, {100 * best.headline['nll_skill']:.1f} % lower NLL "
        f"{see(COMPARISON)}."
    )


def _temperature_bullets(verdicts: list[dict], by_name: dict[str, HeadScore]) -> list[str]:
    """Whether rescaling the leaders' confidence (temperature) helps."""
    out = []
    for v in verdicts:
        s = by_name.get(_leader(v) or "")
        temp = s.figures.get("temperature") if s else None
        if not temp:
            continue
        if temp.get("recommended"):
            out.append(
                f"{s.name} is {'over' if temp['T'] > 1 else 'under'}confident: divide its "
                f"logits by T = {temp['T']:.2f} (`vh export --temperature auto` does it) "
                f"{see(run_title(s))}."
            )
        else:
            out.append(
                f"Rescaling {s.name}'s confidence (temperature scaling) does not help: "
                f"use its outputs as they are {see(run_title(s))}."
            )
    return out


def _next_step(verdicts: list[dict], by_name: dict[str, HeadScore], ctx: Context) -> str:
    """One concrete next experiment, from what is weakest in this report."""
    scores = list(by_name.values())
    if scores and all(s.figures.get("no_skill") for s in scores if "nll_skill" in s.headline):
        if any("nll_skill" in s.headline for s in scores):
            return (
                "Next: no head learned more than the base rates; try a larger head (mlp), "
                f"another trunk layer, or more training games {see(COMPARISON)}."
            )
    if any(v["winner"] is None for v in verdicts):
        return (
            f"Next: evaluate on more test games (now {ctx.index.n_runs:,}) to separate the "
            f"two best heads {see(VERDICT)}."
        )
    return f"Next: co-train the winner and re-run this report on the new trunk {see(VERDICT)}."
