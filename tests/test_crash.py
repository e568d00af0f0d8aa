"""Kill -9 during `vh synth` and `vh fit`, then rerun: the result of an uninterrupted run.

(`vh extract` has its own kill tests in tests/test_extract_kill.py: 20 kills by default, 300
under ``slow``, one and two workers.)

synth: a helper process imports vh once and forks one child per attempt, killed by a timer at
a random moment of a run (numpy only, so fork is safe); the rerun of the same command must
give the same shards byte for byte and the same metadata.db rows (only ``created_at`` in the
session table differs between any two runs).

fit: a real `python -m vh fit` process (JAX does not survive a fork) SIGKILLed at the
``VH_FAILPOINT=fit:POINT:K`` kill points of heads/train.py (vh.durable.kill_point: the K-th
epoch's training done, its best checkpoints written, its last-state checkpoint written) or by a timer, which also lands
inside checkpoint writes; the rerun (in-process) must finish with the best checkpoints of an
uninterrupted run, byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import FIT_SETS, ROOT, TINY, run_ok

SYNTH_HELPER = textwrap.dedent("""
    import json, os, random, signal, sys, threading, time
    from vh.config import load_config
    from vh.extract.synth import synth

    tiny, root, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    cfg = load_config([tiny], ["synth.games=12", "synth.values=true"]).synth
    rng = random.Random(seed)

    def attempt(out, delay):
        pid = os.fork()
        if pid == 0:
            if delay is not None:
                t = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL))
                t.daemon = True
                t.start()
            try:
                synth(cfg, out, progress=False)
                code = 0
            except BaseException as e:
                print(f"child error: {e!r}", file=sys.stderr)
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            return "killed"
        return "ok" if os.WEXITSTATUS(status) == 0 else "error"

    t0 = time.perf_counter()
    report = {"reference": attempt(os.path.join(root, "reference"), None), "scenarios": []}
    run_s = time.perf_counter() - t0
    for i in range(n):
        out = os.path.join(root, f"s{i}")
        delay = rng.uniform(0.0, run_s)
        report["scenarios"].append([delay, attempt(out, delay), attempt(out, None)])
    print(json.dumps(report))
""")


def _dataset(path: Path) -> dict:
    """Shard bytes and metadata.db rows (minus the creation time) of a dataset dir."""
    out = {p.name: p.read_bytes() for p in sorted(path.glob("*.npy"))}
    con = sqlite3.connect(path / "metadata.db")
    out["metadata.db"] = [x for x in con.iterdump() if "created_at" not in x]
    con.close()
    return out


def _synth_kills(tmp_path: Path, n: int, seed: int, timeout: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SYNTH_HELPER, TINY, str(tmp_path), str(n), str(seed)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["reference"] == "ok"
    ref = _dataset(tmp_path / "reference")
    killed = 0
    for i, (delay, first, resume) in enumerate(report["scenarios"]):
        assert first in ("killed", "ok"), (delay, first, proc.stderr[-2000:])
        killed += first == "killed"
        if first == "ok":  # the timer fired after the run: the output is there already
            continue
        assert resume == "ok", (delay, proc.stderr[-2000:])
        assert _dataset(tmp_path / f"s{i}") == ref, delay
        # no temp dir of the killed run is left behind once the rerun is done
        assert not list(tmp_path.glob(f".s{i}.tmp-*")), delay
    assert killed >= n // 2, report


def test_synth_kill_resume_identical(tmp_path):
    _synth_kills(tmp_path, n=6, seed=0, timeout=120)


@pytest.mark.slow
def test_synth_kill_resume_identical_many(tmp_path):
    _synth_kills(tmp_path, n=60, seed=1, timeout=900)


# --------------------------------------------------------------------------- fit

FIT_ARGS = ["--head", "ordinal", "--arch", "probe", "--config", TINY, *FIT_SETS,
            "--set", "fit.train.epochs=3", "--set", "fit.train.patience=9",
            "--grid", "lr=1e-3,1e-2"]  # fmt: skip
MEMBERS = ("m000", "m001")


def _fit_cmd(cache: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "vh", "fit", "--cache", str(cache), "--out", str(out), *FIT_ARGS]


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _bests(run: Path) -> dict[str, bytes]:
    return {m: (run / "members" / m / "best.safetensors").read_bytes() for m in MEMBERS}


def _killed_then_resumed(cache: Path, out: Path, kill) -> None:
    """One fit SIGKILLed at ``kill`` (a kill point "fit:POINT:K", or seconds), then a rerun."""
    if isinstance(kill, str):
        p = subprocess.run(_fit_cmd(cache, out), env=_env(VH_FAILPOINT=kill), capture_output=True,
                           text=True, timeout=300)  # fmt: skip
        assert p.returncode == -signal.SIGKILL, (kill, p.stderr[-2000:])
    else:
        p = subprocess.Popen(_fit_cmd(cache, out), env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(kill)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    run_ok(["fit", "--cache", cache, "--out", out, *FIT_ARGS])  # the rerun, in-process


def _fit_kills(tiny, tmp_path: Path, kills: list) -> None:
    ref = tmp_path / "ref"
    run_ok(["fit", "--cache", tiny["cache"], "--out", ref, *FIT_ARGS])
    run_s = 6.0  # a fresh `python -m vh fit` of this size: ~2 s of imports, ~4 s of fitting
    want = _bests(ref)
    for i, kill in enumerate(kills):
        kill = kill if isinstance(kill, str) else kill * run_s
        out = tmp_path / f"k{i}"
        _killed_then_resumed(tiny["cache"], out, kill)
        assert _bests(out) == want, kill


def test_fit_kill_resume_same_best(tiny, tmp_path):
    # the points tests/test_heads_fit.py does not kill at (it does trained:2 and best:3)
    _fit_kills(tiny, tmp_path, ["fit:best:1", "fit:last:2", "fit:trained:3"])


@pytest.mark.slow
def test_fit_kill_resume_same_best_many(tiny, tmp_path):
    rng = random.Random(0)
    hooks = [f"fit:{p}:{k}" for k in (1, 2, 3) for p in ("trained", "best", "last")]
    _fit_kills(tiny, tmp_path, hooks + [rng.uniform(0.3, 1.0) for _ in range(12)])


# --------------------------------------------------------------------------- extract, 2 workers


def _torchrun_extract(tiny, out: Path, **env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "vh", "extract", "--dataset", str(tiny["ds"]), "--init",
           str(tiny["trunk"]), "--out", str(out), "--config", TINY]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(**env))


def _cache_files(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "complete.json"
    }


def _two_worker_kills(tiny, tmp_path: Path, points: list[str]) -> None:
    """2 workers, each SIGKILLed at its k-th pass of a failpoint (torchrun then stops the
    other one), resumed by 2 workers again: the bytes of the 1-worker uninterrupted cache."""
    want = _cache_files(tiny["cache"])
    for point in points:
        out = tmp_path / point.replace(":", "_")
        p = _torchrun_extract(tiny, out, VH_FAILPOINT=point)
        assert p.returncode != 0 and not (out / "complete.json").exists(), (point, p.stderr)
        p = _torchrun_extract(tiny, out)
        assert p.returncode == 0, (point, p.stderr[-3000:])
        assert _cache_files(out) == want, point


def test_two_worker_extract_kill_resume_identical(tiny, tmp_path):
    _two_worker_kills(tiny, tmp_path, ["unit:written:2"])


@pytest.mark.slow
def test_two_worker_extract_kill_resume_identical_many(tiny, tmp_path):
    _two_worker_kills(
        tiny,
        tmp_path,
        ["init:arrays:1", "columns:written:1", "unit:before:1", "unit:written:1",
         "record:tmp:3", "record:done:4", "finish:verified:1"],
    )  # fmt: skip
