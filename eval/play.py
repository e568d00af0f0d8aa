"""Play results in the report: `vh play`'s ``play.json`` beside each head's offline figures.

Which play results a report uses (decided by ``vh eval``, :func:`collect`):

- ``--play DIR`` (repeatable): ``DIR/play.json`` (or DIR may be the play.json itself). Every
  file given must have at least one head matching a run being evaluated, else eval refuses
  it with one line; its other heads are ignored with a note.
- without ``--play``, found beside the run dirs: for each distinct parent folder P of the run
  dirs, ``P/play/play.json`` and ``P/../play/play.json`` (the layout ``runs/NAME`` +
  ``play/`` of ``vh demo``). A found file none of whose heads matches is ignored with a note.

A play head matches a run when its ``source.run_dir`` resolves to the run dir (relative
paths from the current folder), else when its name (``vh play`` names a head by its run
dir's folder name) is the folder name of exactly one run dir evaluated. The first file that
plays a run wins; a later one's head for the same run is ignored with a note.

Eval copies each file into the report dir (``play/<i>/play.json``) and records in
``eval.json`` under ``play`` where it came from and which player is which run, so
``vh eval --rebuild`` needs neither the play folders nor the run dirs (:func:`load_play`).

The comparison (:func:`compare`): every matched head's offline figure (bucket NLL when every
played head has one, else RMSE, else its own NLL when all are of one kind) ranks the heads
offline; its mean score ranks them in play. Whether the best head offline is also the best
player, and how sure: two players of one file played the same seeded games, so their mean
scores are compared by a paired bootstrap over the games (seeds) and the games each won;
players of different files (or without per-game scores) by the overlap of their Wilson
intervals of reaching the top milestone shown.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vh import durable
from vh.errors import VhError, require_regular_file
from vh.eval.formatting import label_of, num, see, with_ci

PLAY_JSON = "play.json"
PLAY_DIR = "play"  # in the report dir: play/<i>/play.json, the copies
TITLE = "Offline vs play"
OFFLINE_FIGURES = ("bucket_nll", "rmse")  # lower is better; shared across heads of a pool
BASELINE_ORDER = ("random", "greedy", "expectimax", "policy")


@dataclass
class PlayFile:
    """One play.json as the report uses it."""

    source: str  # where it was read from (resolved)
    record: dict
    matched: dict[str, str]  # run name (the report's) -> player name (the play file's)
    notes: list[str] = field(default_factory=list)
    file: str = ""  # its copy, relative to the report dir


# --------------------------------------------------------------------------- reading


def read_play_json(path: Path, what: str = "--play") -> dict:
    """A play.json, checked for what the report reads (one VhError naming file and field)."""
    require_regular_file(path, field=what)
    rec = durable.read_json(path, "play.json")
    players, milestones = rec.get("players"), rec.get("milestones")
    if not isinstance(players, list) or not players:
        raise VhError("no players (not written by vh play?)", path=path, field="players")
    if not isinstance(milestones, list) or not all(isinstance(t, int) for t in milestones):
        raise VhError("missing or not a list of integers", path=path, field="milestones")
    for i, p in enumerate(players):
        if not isinstance(p, dict):
            raise VhError("not an object", path=path, field=f"players[{i}]")
        for key, kind in (("name", str), ("games", int), ("mean_score", (int, float))):
            if not isinstance(p.get(key), kind):
                raise VhError(
                    "missing or of the wrong type", path=path, field=f"players[{i}].{key}"
                )
        reach = p.get("reach")
        if not isinstance(reach, dict) or any(str(t) not in reach for t in milestones):
            raise VhError("missing a milestone", path=path, field=f"players[{i}].reach")
        scores = p.get("scores")
        if scores is not None and (not isinstance(scores, list) or len(scores) != p["games"]):
            raise VhError("not one score per game", path=path, field=f"players[{i}].scores")
    return rec


def _play_file(path: str | os.PathLike) -> Path:
    """``DIR/play.json`` of a ``--play DIR`` (or the file itself)."""
    p = Path(path)
    return p / PLAY_JSON if p.is_dir() else p


def discover(run_dirs: list[Path]) -> list[Path]:
    """play.json files beside the run dirs (see the module docstring), in a stable order."""
    found: list[Path] = []
    for parent in dict.fromkeys(Path(d).resolve().parent for d in run_dirs):
        for folder in (parent / PLAY_DIR, parent.parent / PLAY_DIR):
            f = folder / PLAY_JSON
            if f.is_file() and f.resolve() not in found:
                found.append(f.resolve())
    return found


def match_heads(rec: dict, run_dirs: list[Path], names: list[str]) -> dict[str, str]:
    """Run name -> player name of the play file's heads that are runs evaluated."""
    resolved = {Path(d).resolve(): n for d, n in zip(run_dirs, names, strict=True)}
    basenames: dict[str, list[str]] = {}
    for d, n in zip(run_dirs, names, strict=True):
        basenames.setdefault(Path(d).resolve().name, []).append(n)
    out: dict[str, str] = {}
    for p in rec["players"]:
        if p.get("type") != "head":
            continue
        src = (p.get("source") or {}).get("run_dir")
        run = resolved.get(Path(src).resolve()) if isinstance(src, str) and src else None
        if run is None and len(basenames.get(p["name"], [])) == 1:
            run = basenames[p["name"]][0]
        if run is not None and run not in out:
            out[run] = p["name"]
    return out


def collect(
    run_dirs: list[Path], names: list[str], explicit: list[str | os.PathLike] | None
) -> list[PlayFile]:
    """The play results a report uses: ``explicit`` (``--play``; empty: none) or, when None,
    those found beside the run dirs; heads matched to runs. Refuses an explicit file that
    matches no run."""
    paths = discover(run_dirs) if explicit is None else [_play_file(p) for p in explicit]
    out: list[PlayFile] = []
    taken: dict[str, str] = {}  # run -> the source that plays it
    for path in paths:
        rec = read_play_json(path, "play.json" if explicit is None else "--play")
        matched = match_heads(rec, run_dirs, names)
        heads = [p["name"] for p in rec["players"] if p.get("type") == "head"]
        if not matched:
            if explicit is not None:
                raise VhError(
                    f"none of its heads ({', '.join(heads) or 'none'}) is one of the runs "
                    f"evaluated ({', '.join(names)})",
                    path=path,
                    field="players",
                )
            continue  # found, not asked for: says nothing about these runs
        pf = PlayFile(str(Path(path).resolve()), rec, {})
        for run, player in matched.items():
            if run in taken:
                pf.notes.append(f"{run} is also played in {taken[run]}; the earlier file is used.")
            else:
                pf.matched[run], taken[run] = player, pf.source
        ignored = [h for h in heads if h not in pf.matched.values()]
        if ignored:
            pf.notes.append(
                f"{pf.source}: head(s) {', '.join(ignored)} match no run evaluated: ignored."
            )
        out.append(pf)
    return out


def copy_into(report_dir: Path, files: list[PlayFile]) -> list[dict]:
    """Copy the play files into ``REPORT_DIR/play/<i>/`` (replacing an earlier evaluation's);
    their ``eval.json`` entries."""
    shutil.rmtree(report_dir / PLAY_DIR, ignore_errors=True)  # read already: safe to drop
    entries = []
    for i, pf in enumerate(files):
        pf.file = f"{PLAY_DIR}/{i}/{PLAY_JSON}"
        (report_dir / PLAY_DIR / str(i)).mkdir(parents=True, exist_ok=True)
        durable.atomic_write_json(report_dir / pf.file, pf.record)
        entries.append(
            {"source": pf.source, "file": pf.file, "matched": pf.matched, "notes": pf.notes}
        )
    return entries


def load_play(report_dir: Path, info: dict) -> list[PlayFile]:
    """The play files ``eval.json`` lists, read from their copies in the report dir."""
    out = []
    for i, e in enumerate(info.get("play") or []):
        if not isinstance(e, dict) or not isinstance(e.get("file"), str):
            raise VhError("not an object with a file", path=report_dir / "eval.json",
                          field=f"play[{i}]")  # fmt: skip
        rec = read_play_json(report_dir / e["file"], "play.json")
        out.append(PlayFile(e.get("source", ""), rec, dict(e.get("matched") or {}),
                            list(e.get("notes") or []), e["file"]))  # fmt: skip
    return out


# --------------------------------------------------------------------------- comparing


def _player(pf: PlayFile, name: str) -> dict:
    return next(p for p in pf.record["players"] if p["name"] == name)


def offline_figure(scores: list) -> str | None:
    """The figure that ranks the played heads offline (lower is better)."""
    for f in OFFLINE_FIGURES:
        if scores and all(np.isfinite(s.headline.get(f, np.nan)) for s in scores):
            return f
    if len({s.kind for s in scores}) == 1 and all("nll" in s.headline for s in scores):
        return "nll"  # one kind: its own loss is on one scale
    covered = [(sum(f in s.headline for s in scores), f) for f in OFFLINE_FIGURES]
    best = max(covered)
    return best[1] if best[0] else None


def _ranks(values: dict[str, float], lower_better: bool) -> dict[str, int]:
    """1 = best; heads without a finite value get no rank."""
    ok = [(v if lower_better else -v, k) for k, v in values.items() if np.isfinite(v)]
    return {k: i + 1 for i, (_, k) in enumerate(sorted(ok))}


def shown_milestones(files: list[PlayFile], top: list[int]) -> list[int]:
    """The report's top thresholds that every file played, else the two highest milestones."""
    common = set.intersection(*(set(pf.record["milestones"]) for pf in files))
    shown = [t for t in top if t in common]
    return shown or sorted(common)[-2:]


def paired(a: dict, b: dict, ci: float, n_boot: int, seed: int) -> dict:
    """Mean score difference ``a - b`` over the same seeded games: a paired bootstrap over
    games (percentile interval) and the games each won."""
    d = np.asarray(a["scores"], np.float64) - np.asarray(b["scores"], np.float64)
    rng = np.random.default_rng([seed, d.size])
    reps = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    lo, hi = np.quantile(reps, [(1 - ci) / 2, (1 + ci) / 2])
    return {
        "paired": True,
        "diff": float(d.mean()),
        "lo": float(lo),
        "hi": float(hi),
        "wins": int((d > 0).sum()),
        "losses": int((d < 0).sum()),
        "ties": int((d == 0).sum()),
        "games": int(d.size),
        "decided": bool(lo > 0 or hi < 0),
    }


def by_intervals(a: dict, b: dict, milestones: list[int]) -> dict:
    """Two players not on the same seeds: their Wilson intervals of reaching the highest
    shown milestone either reached (the lowest when neither reached any)."""
    reached = [t for t in milestones if a["reach"][str(t)]["k"] + b["reach"][str(t)]["k"] > 0]
    t = (reached or milestones)[-1 if reached else 0]
    ra, rb = a["reach"][str(t)], b["reach"][str(t)]
    return {
        "paired": False,
        "diff": float(a["mean_score"] - b["mean_score"]),
        "milestone": t,
        "a_reach": ra,
        "b_reach": rb,
        "decided": bool(ra["lo"] > rb["hi"] or rb["lo"] > ra["hi"]),
    }


def compare(scores: list, files: list[PlayFile], top: list[int], cfg) -> dict | None:
    """Offline against play figures of the matched heads, ranks, the deciding comparison.

    Args:
        scores: every head's :class:`~vh.eval.scoring.HeadScore` (report order).
        files: the play files (:func:`load_play`).
        top: the report's top thresholds. cfg: the eval config (ci, n_boot, seed).

    Returns:
        The figures for ``metrics.json`` and the section, or None without a matched head.
    """
    where = {run: (i, pf) for i, pf in enumerate(files) for run in pf.matched}
    played = [s for s in scores if s.name in where]
    if not played:
        return None
    fig = offline_figure(played)
    offline = {s.name: float(s.headline.get(fig, np.nan)) if fig else np.nan for s in played}
    heads = {s.name: _player(where[s.name][1], where[s.name][1].matched[s.name]) for s in played}
    off_rank = _ranks(offline, lower_better=True)
    play_rank = _ranks({n: float(p["mean_score"]) for n, p in heads.items()}, lower_better=False)
    out = {
        "figure": fig,
        "milestones": shown_milestones(files, top),
        "heads": [
            {
                "run": s.name,
                "file": where[s.name][0],
                "player": heads[s.name]["name"],
                "offline": offline[s.name],
                "offline_rank": off_rank.get(s.name),
                "mean_score": float(heads[s.name]["mean_score"]),
                "play_rank": play_rank[s.name],
            }
            for s in played
        ],
        "baselines": [
            {"file": i, "name": p["name"], "games": p["games"], "mean_score": p["mean_score"]}
            for i, pf in enumerate(files)
            for p in pf.record["players"]
            if p.get("type") != "head"
        ],
        "comparison": None,
    }
    ranked = [n for n in off_rank if n in play_rank]
    if len(ranked) >= 2:
        best_off = min(ranked, key=off_rank.get)
        best_play = min(ranked, key=play_rank.get)
        other = best_play if best_play != best_off else min(
            (n for n in ranked if n != best_off), key=play_rank.get
        )  # fmt: skip
        fa, fb = where[best_off][0], where[other][0]
        a, b = heads[best_off], heads[other]
        same_seeds = fa == fb and a.get("scores") is not None and b.get("scores") is not None
        cmp = (
            paired(a, b, cfg.ci, cfg.n_boot, cfg.seed)
            if same_seeds
            else by_intervals(a, b, out["milestones"])
        )
        out["comparison"] = {
            "offline_best": best_off,
            "play_best": best_play,
            "other": other,
            "agree": best_off == best_play,
            "ranks_agree": all(off_rank[n] == play_rank[n] for n in ranked)
            and len(ranked) == len(played),
            **cmp,
        }
    return out


# --------------------------------------------------------------------------- the page


def _reach_cell(r: dict) -> str:
    return f"{r['rate']:.1%} [{r['lo']:.1%}, {r['hi']:.1%}]"


def table(result: dict, scores: list, files: list[PlayFile], top: list[int], ci: float):
    """Header and rows: each played head's offline figures and ranks, its play figures;
    then the baselines' play figures (offline cells empty)."""
    ms, multi = result["milestones"], len(files) > 1
    auroc = "AUROC top (" + ", ".join(f">= {t}" for t in top) + ")" if top else "AUROC top"
    header = ["player", "bucket NLL", "own loss (NLL)", auroc, "NLL skill", "offline rank",
              "games", "mean score", "median score"]  # fmt: skip
    header += [f"reach {t}" for t in ms] + ["play rank"]
    by_name = {s.name: s for s in scores}
    rows = []
    for h in result["heads"]:
        s, p = by_name[h["run"]], _player(files[h["file"]], h["player"])
        rows.append(
            [s.name + (f" (file {h['file'] + 1})" if multi else "")]
            + [with_ci(s, k, ci) for k in ("bucket_nll", "nll", "auroc_top", "nll_skill")]
            + [str(h["offline_rank"] or "–")]
            + _play_cells(p, ms)
            + [str(h["play_rank"])]
        )
    for i, pf in enumerate(files):
        base = [p for p in pf.record["players"] if p.get("type") != "head"]
        base.sort(key=lambda p: (BASELINE_ORDER + (p["name"],)).index(p["name"])
                  if p["name"] in BASELINE_ORDER else len(BASELINE_ORDER))  # fmt: skip
        for p in base:
            label = f"{p['name']} (baseline player" + (f", file {i + 1})" if multi else ")")
            rows.append([label] + ["–"] * 5 + _play_cells(p, ms) + ["–"])
    return header, rows


def _play_cells(p: dict, ms: list[int]) -> list[str]:
    return [f"{p['games']:,}", f"{p['mean_score']:,.0f}", f"{p.get('median_score', 0):,.0f}"] + [
        _reach_cell(p["reach"][str(t)]) for t in ms
    ]


def describe_files(files: list[PlayFile]) -> list[str]:
    """One sentence per play file: games, seed, search; then its notes."""
    out = []
    for i, pf in enumerate(files):
        c = pf.record.get("config") or {}
        first = next(iter(pf.record["players"]))
        which = f"File {i + 1} ({pf.source})" if len(files) > 1 else f"From {pf.source}"
        out.append(
            f"{which}: {first['games']:,} games per player, seed {c.get('seed', '?')}, search "
            f"depth {c.get('depth', '?')} ({c.get('mode', '?')}); every player of a file "
            "plays the same seeded games. Reach: share of games whose highest tile reached T, "
            "with its Wilson 95 % interval."
        )
        out += [f"Note: {n}" for n in pf.notes]
    return out


def comparison_sentence(result: dict, ci: float, link: bool = False) -> str:
    """Whether the best head offline also plays best, and how sure (the plain-English
    bullet with ``link``; the section's paragraph without)."""
    fig = label_of(result["figure"]) if result["figure"] else "offline figure"
    c = result["comparison"]
    where = f" {see(TITLE)}" if link else ""
    if c is None:
        names = ", ".join(h["run"] for h in result["heads"])
        if len(result["heads"]) == 1:
            return (
                f"Only {names} was played: no other head to compare it with in play"
                f"{_against_baselines(result)}{where}."
            )
        return f"{names} were played, but fewer than two have a rank offline{where}."
    if c["agree"]:
        head = f"**{c['offline_best']}, the best head offline (lowest {fig}), also plays best**"
    else:
        head = (
            f"**{c['offline_best']}, the best head offline (lowest {fig}), does not play "
            f"best: {c['play_best']} does**"
        )
    a, b = c["offline_best"], c["other"]
    level = int(round(100 * ci))
    if c["paired"]:
        sure = (
            "excludes 0, so the play order is clear"
            if c["decided"]
            else "includes 0, so the play order is not clear"
        )
        more = "more" if c["diff"] >= 0 else "less"
        how = (
            f"{a} scores {num(abs(c['diff']))} {more} than {b} on average over the same "
            f"{c['games']:,} "
            f"seeded games ({level} % range {num(c['lo'])} to {num(c['hi'])}, which {sure}; "
            f"{a} won {c['wins']}, lost {c['losses']}, tied {c['ties']})"
        )
    else:
        t = c["milestone"]
        verdict = "do not overlap: clear" if c["decided"] else "overlap: not clear"
        how = (
            f"not played on the same seeds, so compared by their intervals: reach {t} "
            f"{_reach_cell(c['a_reach'])} for {a} vs {_reach_cell(c['b_reach'])} for {b}, "
            f"which {verdict}"
        )
    tail = ""
    if len(result["heads"]) > 2:
        tail = (
            "; the offline and play rankings agree for every head"
            if c["ranks_agree"]
            else "; the offline and play rankings differ"
        )
    return f"{head}: {how}{tail}{where}."


def _against_baselines(result: dict) -> str:
    """``; it averages X against Y of the best baseline player, B`` (empty without any)."""
    h = result["heads"][0]
    base = [b for b in result["baselines"] if b["file"] == h["file"]]
    if not base:
        return ""
    best = max(base, key=lambda b: b["mean_score"])
    return (
        f"; it averages a score of {h['mean_score']:,.0f} against "
        f"{best['mean_score']:,.0f} for {best['name']}, the best baseline player"
    )


def section(doc, result: dict, scores: list, files: list[PlayFile], top: list[int], ci: float):
    """The "Offline vs play" section of the page."""
    doc.h(2, TITLE)
    fig = label_of(result["figure"]) if result["figure"] else "none shared"
    doc.p(
        f"Each played head's offline figures (test set, {int(round(100 * ci))} % intervals "
        f"over runs) next to how it plays. Offline rank: by {fig} (lower is better); play "
        "rank: by mean score (higher is better). Baseline players are for reference."
    )
    for para in describe_files(files):
        doc.p(para)
    doc.table(*table(result, scores, files, top, ci))
    doc.p(comparison_sentence(result, ci))
