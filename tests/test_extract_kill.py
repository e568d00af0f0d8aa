"""Kill -9 during `vh extract` at many points, resume each time: the bytes of an uninterrupted run.

A helper process imports vh once and forks one child per attempt (fork is ~free, a fresh
python with torch costs ~2 s). A child dies by a real SIGKILL, either at a named failpoint
(VH_FAILPOINT=name:k, so every phase is hit: while creating the arrays, around the columns,
before/after a chunk write, between a record's temp file and its rename, before the marker)
or from a timer at a random moment (which also lands inside zarr's own writes). Each scenario
starts from an empty cache and takes 1-3 kills (a failpoint's hit number is drawn among the
passes the ledger says are still ahead, so it is always reached), then a resume without kill;
the result must equal the reference cache file for file, byte for byte.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from test_extract import make_dataset

from vh.extract.trunk import write_init_dir

FAILPOINTS = (
    "init:arrays",
    "columns:written",
    "unit:before",
    "unit:written",
    "record:tmp",
    "record:done",
    "finish:verified",
)

HELPER = textwrap.dedent("""
    import json, os, random, signal, sys, threading, time
    from vh.config import builtin_config, load_config
    from vh.extract.run import run_extract

    ds, init, root, n_units, target, seed = sys.argv[1:7]
    n_units, target = int(n_units), int(target)
    cfg = load_config([builtin_config("tiny")], ["extract.chunk_rows=256"])
    rng = random.Random(int(seed))

    def attempt(out, kill):
        pid = os.fork()
        if pid == 0:  # the child: one extract, killed as planned
            if kill and kill[0] == "timer":
                t = threading.Timer(kill[1], os.kill, (os.getpid(), signal.SIGKILL))
                t.daemon = True
                t.start()
            elif kill:
                os.environ["VH_FAILPOINT"] = f"{kill[0]}:{kill[1]}"
            code = 0
            try:
                run_extract(ds, init, out, cfg, log=None)
            except BaseException as e:
                print(f"child error: {e!r}", file=sys.stderr)
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            return "killed" if os.WTERMSIG(status) == signal.SIGKILL else "signal"
        return "ok" if os.WEXITSTATUS(status) == 0 else "error"

    def reachable(out):
        # failpoint -> how many times the next run passes it, from what the ledger holds
        if os.path.exists(os.path.join(out, "complete.json")):
            return {}
        led = os.path.join(out, "ledger")
        names = set(os.listdir(led)) if os.path.isdir(led) else set()
        left = n_units - sum(n.startswith("unit-") and n.endswith(".json") for n in names)
        init, cols = "init.json" not in names, "columns.json" not in names
        pts = {"finish:verified": 1, "record:tmp": left + init + cols + 1}
        pts["record:done"] = pts["record:tmp"]
        pts.update({"init:arrays": 1} if init else {})
        pts.update({"columns:written": 1} if cols else {})
        pts.update({"unit:before": left, "unit:written": left} if left else {})
        return pts

    t0 = time.perf_counter()
    report = {"reference": attempt(os.path.join(root, "reference"), None),
              "scenarios": []}
    run_s = time.perf_counter() - t0
    # the first kill of scenario i is at point i mod 8 (all reachable on an empty cache), so
    # every phase is hit; later kills of a scenario are random among those still ahead
    points = ["init:arrays", "columns:written", "unit:before", "unit:written", "record:tmp",
              "record:done", "finish:verified", "timer"]
    kills = 0
    while kills < target and len(report["scenarios"]) < 4 * target:
        out = os.path.join(root, f"s{len(report['scenarios'])}")
        steps = []
        for j in range(rng.randint(1, 3)):
            pts = reachable(out)
            name = points[len(report["scenarios"]) % len(points)] if j == 0 else (
                rng.choice(sorted(pts) + ["timer"]) if pts else "timer")
            if name == "timer":  # anywhere, zarr's own writes included
                kill = ["timer", rng.uniform(0.0, 1.2 * run_s)]
            else:
                kill = [name, rng.randint(1, pts[name])]
            steps.append([kill, attempt(out, kill)])
            kills += steps[-1][1] == "killed"
        steps.append([None, attempt(out, None)])  # the resume that must finish
        report["scenarios"].append(steps)
    print(json.dumps(report))
""")


def _tree(path) -> dict[str, bytes]:
    """Every file of the cache that must be identical (not the marker: it holds a time)."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), path)
            if rel != "complete.json":
                with open(os.path.join(root, f), "rb") as fh:
                    out[rel] = fh.read()
    return out


def _run(tmp_path, target: int, seed: int, timeout: int) -> None:
    ds, _exps, rows = make_dataset(tmp_path / "ds", runs=10, seed=3)
    n_units = -(-len(rows) // 256)  # 1,792 rows: 7 units
    init = write_init_dir(tmp_path / "init", "tiny", seed=1)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            HELPER,
            str(ds),
            str(init),
            str(tmp_path),
            str(n_units),
            str(target),
            str(seed),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["reference"] == "ok"
    ref = _tree(tmp_path / "reference")
    assert any(k.startswith("emb/c/") for k in ref) and any(k.startswith("columns/") for k in ref)
    killed_at = []
    for i, steps in enumerate(report["scenarios"]):
        for kill, outcome in steps[:-1]:
            if kill[0] != "timer":  # a failpoint the ledger says is ahead is always reached
                assert outcome == "killed", (steps, proc.stderr[-2000:])
            if outcome == "killed":
                killed_at.append(kill[0])
        assert steps[-1][1] == "ok", (steps, proc.stderr[-2000:])
        got = _tree(tmp_path / f"s{i}")
        assert sorted(got) == sorted(ref), (steps, set(got) ^ set(ref))
        for name, data in ref.items():
            assert got[name] == data, (steps, name)
    assert len(killed_at) >= target
    # every phase was hit: creation, columns, both sides of a chunk write, both sides of a
    # record's rename, before the marker
    assert set(killed_at) - {"timer"} == set(FAILPOINTS), killed_at


def test_kill_resume_gives_identical_bytes(tmp_path):
    _run(tmp_path, target=20, seed=0, timeout=300)


@pytest.mark.slow
def test_kill_resume_300_points(tmp_path):
    _run(tmp_path, target=300, seed=1, timeout=1800)
