"""`vh eval` with play results ("Offline vs play") and the trunk-saw-the-test-runs warning.

Two probe runs are fitted on two planted caches of one dataset: ``good`` sees the runs'
skill through little noise, ``weak`` through much, so ``good`` wins offline (checked from
the report, not assumed). ``good``'s cache carries a trunk with a ``vh_trunk_train`` record
whose split differs from the runs' split, so the trunk trained on some of their test runs.
Play results are planted play.json files whose ranks agree or disagree with the offline
ones; one test plays the session's tiny run for real with `vh play`.
"""

from __future__ import annotations

import json
import re
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, invoke

from vh.cache.fingerprint import make_fingerprint
from vh.cache.writer import write_cache_from_arrays
from vh.config import EvalConfig, SplitConfig, load_config
from vh.eval import play as P
from vh.eval.formatting import num
from vh.eval.predictions import load_predictions
from vh.extract.play_search import wilson
from vh.extract.trunk_record import id_ranges, ids_sha256
from vh.heads.api import fit
from vh.heads.splits import TRAIN, split_runs

TILES = np.array([512, 1024, 2048, 4096])
PER = 8  # states per run
N_RUNS = 300
FIRST_ID = 100
SETS = [
    "fit.target.thresholds=[1024, 2048, 4096]",
    "fit.train.wd=0",
    "fit.train.lr=0.05",
    "fit.train.batch_size=1024",
    "fit.train.epochs=4",
    "fit.train.patience=4",
    "fit.split.train=0.7",
    "fit.split.val=0.1",
    "fit.split.test=0.2",
]
# the trunk's split: another seed than the runs' (0), over the first half of the dataset
TRUNK_SPLIT = SplitConfig(seed=7, train=0.8, val=0.1, test=0.1)
TRUNK_RANGE = (FIRST_ID, FIRST_ID + N_RUNS // 2 - 1)
MILESTONES = [1024, 2048, 4096]


def _trunk_record() -> dict:
    """A ``vh_trunk_train`` block as ``vh trunk train`` writes it (the rule and its check)."""
    ids = np.arange(TRUNK_RANGE[0], TRUNK_RANGE[1] + 1, dtype=np.int64)
    train = ids[split_runs(ids, TRUNK_SPLIT) == TRAIN]
    split = {k: getattr(TRUNK_SPLIT, k) for k in ("seed", "train", "val", "test", "val_run_pct")}
    return {
        "split": split,
        "dataset_runs": id_ranges(ids),
        "train_runs": {"count": int(train.size), "sha256": ids_sha256(train)},
        "seed": 0,
        "epochs": 1,
    }


def _cache(path: Path, rng, z: np.ndarray, noise: float, trunk_config: dict) -> Path:
    """A cache whose states see their run's skill ``z`` through ``noise``."""
    cls = (rng.uniform(size=(z.size, 1)) < 1 / (1 + np.exp(-(2.5 * z[:, None] - [-1, 0, 1])))).sum(
        1
    )
    run_id = np.repeat(np.arange(z.size) + FIRST_ID, PER)
    step = np.tile(np.arange(PER), z.size)
    cols = {
        "run_id": run_id,
        "step_index": step,
        "step_fraction": (step / PER).astype(np.float32),
        "max_exp": np.minimum(step + 2, 11).astype(np.uint8),
    }
    runs = {
        "id": np.arange(z.size) + FIRST_ID,
        "steps": np.full(z.size, PER),
        "highest_tile": TILES[cls],
        "final_score": np.round(np.exp(7 + 0.9 * cls)),
        "seed": np.arange(z.size),
    }
    s = np.repeat(z, PER)[:, None]
    emb = np.concatenate([s + noise * rng.normal(size=s.shape), rng.normal(size=(s.size, 3))], 1)
    fp = make_fingerprint({"kind": "init", "config": trunk_config, "weights_sha256": "ab"}, {}, {})
    return write_cache_from_arrays(
        path, emb.astype(np.float16), cols, runs, attrs={"fingerprint": fp}, chunk_rows=1024
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Run dirs ``good`` and ``weak`` (in ``base/runs``) and a report without play results."""
    base = tmp_path_factory.mktemp("eval_play")
    z = np.random.default_rng(0).normal(size=N_RUNS)
    quiet = lambda s: None  # noqa: E731
    caches = {  # the same outcomes (one rng seed per cache): one dataset, two trunks
        "good": _cache(base / "c-good", np.random.default_rng(1), z, 0.3,
                       {"d_model": 4, "vh_trunk_train": _trunk_record()}),
        "weak": _cache(base / "c-weak", np.random.default_rng(1), z, 3.0, {"d_model": 4}),
    }  # fmt: skip
    dirs = {n: base / "runs" / n for n in caches}
    for n, c in caches.items():
        fit(load_config(sets=SETS).fit, c, dirs[n], log=quiet)
    return base, dirs


@pytest.fixture(scope="module")
def offline(study, tmp_path_factory):
    """The report without play results (``play=[]``: none, not even found ones)."""
    from vh.eval.run import evaluate

    _, dirs = study
    out = tmp_path_factory.mktemp("offline") / "report"
    quiet = lambda s: None  # noqa: E731
    metrics = evaluate([dirs["good"], dirs["weak"]], out, EvalConfig(n_boot=100), quiet, play=[])
    assert "play" not in metrics and "Offline vs play" not in (out / "report.md").read_text()
    nll = {n: metrics["runs"][n]["headline"]["bucket_nll"]["value"] for n in dirs}
    assert nll["good"] < nll["weak"]  # the planted order holds offline
    return out, metrics


def _player(name: str, scores: np.ndarray, highest: np.ndarray, **extra) -> dict:
    """One player of a play.json, its figures computed from its games."""
    reach = {}
    for t in MILESTONES:
        k = int((highest >= t).sum())
        lo, hi = wilson(k, scores.size)
        reach[str(t)] = {"k": k, "rate": k / scores.size, "lo": lo, "hi": hi}
    return {"name": name, "games": int(scores.size), "mean_score": float(scores.mean()),
            "median_score": float(np.median(scores)), "reach": reach, "moves_per_s": 1000.0,
            "scores": [int(s) for s in scores], **extra}  # fmt: skip


def _play(folder: Path, heads: dict[str, tuple[float, str | None]], games: int = 40) -> Path:
    """A play.json in ``folder``: heads name -> (skill, source run dir), four baselines.

    A player's game scores are ``1000 * (skill + noise)`` on shared per-seed noise, so a
    higher skill wins almost every seed (paired)."""
    rng = np.random.default_rng(5)
    seed_noise = rng.normal(size=games)
    players = []
    for name, (skill, src) in heads.items():
        s = np.round(1000 * np.clip(skill + seed_noise + 0.1 * rng.normal(size=games), 0.2, None))
        src_block = {"run_dir": src} if src is not None else {}
        players.append(_player(name, s, (s * 2).astype(np.int64), type="head", kind="ordinal",
                               value="score", source=src_block))  # fmt: skip
    for b, skill in (("random", 0.5), ("greedy", 1.0), ("expectimax", 3.0), ("policy", 1.5)):
        s = np.round(1000 * np.clip(skill + 0.2 * rng.normal(size=games), 0.2, None))
        players.append(_player(b, s, (s * 2).astype(np.int64), type="baseline"))
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"games": games, "seed": 3, "depth": 1, "mode": "expectation", "device": "cpu"}
    rec = {"config": cfg, "milestones": MILESTONES, "players": players}
    (folder / "play.json").write_text(json.dumps(rec))
    return folder


def _section(md: str) -> str:
    """The "Offline vs play" section of report.md."""
    m = re.search(r"\n## Offline vs play\n(.*?)(?=\n## |\Z)", md, re.S)
    assert m, "no Offline vs play section"
    return m.group(1)


def _plain(md: str) -> str:
    m = re.search(r"\n## In plain English\n(.*?)(?=\n## )", md, re.S)
    assert m
    return m.group(1)


def _row(section: str, name: str) -> list[str]:
    line = next(x for x in section.splitlines() if x.startswith(f"| {name} "))
    return [c.strip() for c in line.strip("|").split("|")]


def _paired_diff(rec: dict, a: str, b: str) -> float:
    by = {p["name"]: np.array(p["scores"], float) for p in rec["players"]}
    return float((by[a] - by[b]).mean())


# --------------------------------------------------------------------------- offline vs play


@pytest.mark.parametrize("agree", [True, False])
def test_section_ranks_and_plain_sentence(study, offline, tmp_path, agree):
    base, dirs = study
    skills = (3.0, 1.0) if agree else (1.0, 3.0)
    # good is matched by its resolved path, weak by its name (its recorded path is elsewhere)
    play = _play(tmp_path / "play", {"good": (skills[0], str(dirs["good"])),
                                     "weak": (skills[1], "/somewhere/else/weak")})  # fmt: skip
    out = tmp_path / "report"
    r = invoke(["eval", dirs["good"], dirs["weak"], "--out", out, "--play", play,
                "--set", "eval.n_boot=100"])  # fmt: skip
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    sec = _section(md)
    good, weak = _row(sec, "good"), _row(sec, "weak")
    col = {h: i for i, h in enumerate(_row(sec, "player"))}  # the header's columns
    assert good[col["offline rank"]] == "1" and weak[col["offline rank"]] == "2"
    assert good[col["play rank"]] == ("1" if agree else "2")
    assert weak[col["play rank"]] == ("2" if agree else "1")
    # the offline figure shown is the report's bucket NLL of that head
    nll = offline[1]["runs"]["good"]["headline"]["bucket_nll"]["value"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["runs"]["good"]["headline"]["bucket_nll"]["value"] == pytest.approx(nll)
    assert good[col["bucket NLL"]].startswith(num(nll) + " [")
    rec = json.loads((play / "play.json").read_text())
    mean = {p["name"]: p["mean_score"] for p in rec["players"]}
    assert good[col["mean score"]] == f"{mean['good']:,.0f}"
    for b in ("random", "greedy", "expectimax", "policy"):  # baselines for reference
        row = _row(sec, f"{b} (baseline player)")
        assert row[col["mean score"]] == f"{mean[b]:,.0f}" and row[col["offline rank"]] == "–"
    # the plain-English bullet: agreement or not, with the paired difference on the seeds
    bullet = next(b for b in _plain(md).splitlines() if "best head offline" in b)
    diff = _paired_diff(rec, "good", "weak")
    if agree:
        assert "**good, the best head offline (lowest bucket NLL), also plays best**" in bullet
    else:
        assert "does not play best: weak does**" in bullet and "also plays best" not in bullet
    assert f"good scores {num(abs(diff))} {'more' if agree else 'less'} than weak" in bullet
    assert "over the same 40 seeded games" in bullet and "the play order is clear" in bullet
    assert "(see [Offline vs play](#offline-vs-play))" in bullet
    c = metrics["play"]["comparison"]
    assert c["agree"] is agree and c["paired"] and c["diff"] == pytest.approx(diff)
    assert (c["lo"] > 0) if agree else (c["hi"] < 0)

    # --rebuild reproduces the section from the report dir alone (play folder gone)
    shutil.rmtree(play)
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    r = invoke(["eval", "--rebuild", moved, "--set", "eval.n_boot=100"])
    assert r.exit_code == 0, r.output
    md2 = (moved / "report.md").read_text()
    assert _section(md2) == sec and _plain(md2) == _plain(md)


def test_play_found_beside_the_run_dirs_and_strangers_ignored(study, tmp_path):
    base, dirs = study
    play = _play(base / "play", {"good": (3.0, str(dirs["good"])), "stranger": (2.0, None)})
    try:
        out = tmp_path / "report"
        r = invoke(["eval", dirs["good"], dirs["weak"], "--out", out, "--set", "eval.n_boot=50"])
        assert r.exit_code == 0, r.output
        sec = _section((out / "report.md").read_text())
        assert "head(s) stranger match no run evaluated: ignored." in sec
        assert not any(x.startswith("| stranger") for x in sec.splitlines())
        assert "Only good was played" in sec and "for expectimax, the best baseline" in sec
        info = json.loads((out / "eval.json").read_text())
        assert info["play"][0]["matched"] == {"good": "good"}
        assert (out / "play" / "0" / "play.json").is_file()
    finally:
        shutil.rmtree(play)


def test_play_matching_no_run_is_refused_when_given(study, tmp_path):
    _, dirs = study
    play = _play(tmp_path / "play", {"stranger": (2.0, None)})
    before = (play / "play.json").read_bytes()
    out = tmp_path / "report"
    r = invoke(["eval", dirs["good"], "--out", out, "--play", play])
    assert_one_line_error(r, "none of its heads (stranger)", play / "play.json")
    assert not out.exists() and (play / "play.json").read_bytes() == before
    # a folder without play.json: one line too
    r = invoke(["eval", dirs["good"], "--out", out, "--play", tmp_path])
    assert r.exit_code != 0 and r.output.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in r.output and not out.exists()


def _score(name: str, kind: str = "ordinal", **headline) -> object:
    return types.SimpleNamespace(name=name, kind=kind, headline=headline)


def test_players_of_different_files_are_compared_by_their_intervals(tmp_path):
    files = []
    for name, skill in (("a", 3.0), ("b", 1.0)):
        rec = json.loads((_play(tmp_path / name, {name: (skill, None)}) / "play.json").read_text())
        files.append(P.PlayFile(name, rec, {name: name}))
    scores = [_score("a", bucket_nll=0.9), _score("b", bucket_nll=0.8)]  # b wins offline
    res = P.compare(scores, files, [2048, 4096], EvalConfig(n_boot=50))
    c = res["comparison"]
    assert c["offline_best"] == "b" and c["play_best"] == "a" and not c["agree"]
    assert not c["paired"] and c["milestone"] == 4096
    ra = files[0].record["players"][0]["reach"]["4096"]
    rb = files[1].record["players"][0]["reach"]["4096"]
    assert c["decided"] == (ra["lo"] > rb["hi"] or rb["lo"] > ra["hi"])
    text = P.comparison_sentence(res, 0.95)
    assert "not played on the same seeds, so compared by their intervals" in text
    assert ("do not overlap: clear" if c["decided"] else "overlap: not clear") in text
    # mixed kinds without a shared bucket NLL: ranked on the figure most of them have
    assert P.offline_figure([_score("r", "return", rmse=2.0), _score("o", bucket_nll=1.0)]) in (
        "bucket_nll",
        "rmse",
    )
    assert P.offline_figure([_score("x", nll=1.0), _score("y", nll=2.0)]) == "nll"


# --------------------------------------------------------------------------- trunk warning


def _expected_seen(ids: np.ndarray) -> int:
    """Test runs the planted trunk trained on: in its id range and in its split's train."""
    ids = np.unique(ids)
    inside = ids[(ids >= TRUNK_RANGE[0]) & (ids <= TRUNK_RANGE[1])]
    return int((split_runs(inside, TRUNK_SPLIT) == TRAIN).sum())


def test_trunk_that_saw_test_runs_is_warned_about(study, offline, tmp_path):
    _, dirs = study
    out, metrics = offline
    split = np.load(dirs["good"] / "split.npz")
    test_ids = split["run_id"][split["split"] == 2]
    want = _expected_seen(test_ids)
    scored = np.unique(load_predictions(out / "predictions" / "good.npz").rows["run_id"])
    want_scored = _expected_seen(scored)
    assert 0 < want < test_ids.size and 0 < want_scored  # the planted overlap is partial
    assert metrics["trunk_seen"] == {
        "good": {"test_runs": int(test_ids.size), "seen": want,
                 "scored_runs": int(scored.size), "scored_seen": want_scored}
    }  # fmt: skip
    md = (out / "report.md").read_text()
    text = f"good: its trunk was trained on {want:,} of its {test_ids.size:,} test runs"
    top, _, rest = md.partition("## In plain English")
    assert f"**Warning: {text}" in top  # near the top, before the plain-English page
    good_section = rest.split("## Run good")[1].split("\n## ")[0]
    assert f"**Warning: {text}" in good_section
    assert "weak: its trunk" not in md  # weak's trunk has no record
    # the console says it, on eval and on --rebuild (from the report dir alone)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    r = invoke(["eval", "--rebuild", copy, "--set", "eval.n_boot=100"])
    assert r.exit_code == 0, r.output
    assert f"warning: {text}" in r.output
    assert (copy / "report.md").read_text().count(f"**Warning: {text}") == 2


def test_real_vh_play_output_on_the_tiny_run(tiny, tmp_path):
    play = tmp_path / "play"
    r = invoke(["play", "--run", tiny["run"], "--init", tiny["trunk"], "--games", 4,
                "--max-moves", 30, "--mode", "afterstate", "--baselines", "random,greedy",
                "--out", play])  # fmt: skip
    assert r.exit_code == 0, r.output
    rec = json.loads((play / "play.json").read_text())
    out = tmp_path / "report"
    r = invoke(["eval", tiny["run"], "--out", out, "--play", play, "--set", "eval.n_boot=50"])
    assert r.exit_code == 0, r.output
    sec = _section((out / "report.md").read_text())
    by = {p["name"]: p for p in rec["players"]}
    assert _row(sec, "run")[7] == f"{by['run']['mean_score']:,.0f}"
    for b in ("random", "greedy"):
        assert _row(sec, f"{b} (baseline player)")[7] == f"{by[b]['mean_score']:,.0f}"
    best = max(("random", "greedy"), key=lambda b: by[b]["mean_score"])
    assert (
        f"Only run was played: no other head to compare it with in play; it averages a score "
        f"of {by['run']['mean_score']:,.0f} against {by[best]['mean_score']:,.0f} for {best}, "
        "the best baseline player."
    ) in sec
