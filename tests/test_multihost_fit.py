"""`vh fit` under jax.distributed: two processes on this machine (local coordinator, one CPU
device each) write the same best checkpoints as one process with two devices, byte for byte,
and only process 0 touches the run dir (process 1 is given another --out, as a host without
a shared filesystem would be, and must leave it absent). Against one process with one device
the weights differ by float32 rounding only (the batch gradient is summed in two halves)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vh.heads.checkpoint import load_tensors

ROOT = Path(__file__).resolve().parents[1]
VH = [sys.executable, "-m", "vh"]
FIT = ["fit", "--head", "ordinal", "--arch", "probe", "--grid", "lr=1e-3,3e-3",
       "--set", "fit.target.thresholds=[1024, 2048, 4096]", "--set", "fit.train.epochs=3",
       "--set", "fit.train.batch_size=1024"]  # fmt: skip

pytestmark = pytest.mark.slow  # three fits in subprocesses: about 1–2 minutes here


def _cache(path: Path) -> Path:
    from vh.cache.writer import write_cache_from_arrays

    rng = np.random.default_rng(0)
    n, d, spr = 20_000, 16, 20
    x = rng.normal(size=(n, d)).astype(np.float16)
    r = n // spr
    z = (x.astype(np.float64) @ rng.normal(size=d)).reshape(r, spr).mean(1) * 3
    cls = (rng.random(r)[:, None] < 1 / (1 + np.exp(-z[:, None] - [1.5, 0, -1.5]))).sum(1)
    step = np.arange(n) % spr
    cols = {"run_id": np.arange(n) // spr, "step_index": step,
            "step_fraction": (step / (spr - 1)).astype(np.float32)}  # fmt: skip
    runs = {"id": np.arange(r), "steps": np.full(r, spr),
            "highest_tile": np.array([512, 1024, 2048, 4096])[cls],
            "final_score": rng.integers(1000, 9000, r), "seed": np.arange(r)}  # fmt: skip
    return write_cache_from_arrays(path, x, cols, runs, chunk_rows=2048)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VH_", "XLA_"))}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fit(cache, out, env, mode) -> subprocess.Popen:
    args = [*VH, *FIT, "--cache", cache, "--out", out, "--set", f"fit.train.data_on_device={mode}"]
    return subprocess.Popen([str(a) for a in args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _ok(p: subprocess.Popen) -> str:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    return out


def _best(run: Path) -> dict:
    return {m: (run / "members" / m / "best.safetensors").read_bytes() for m in ("m000", "m001")}


@pytest.mark.parametrize("mode", ["always", "never"])  # data on the device / streamed
def test_two_processes_equal_one_process(tmp_path, mode):
    cache = _cache(tmp_path / "cache")
    port = _port()
    procs = [
        _fit(cache, tmp_path / ("run" if i == 0 else "elsewhere"), _env(
            VH_COORDINATOR=f"127.0.0.1:{port}", VH_NUM_PROCESSES="2", VH_PROCESS_ID=str(i)), mode)
        for i in range(2)
    ]  # fmt: skip
    logs = [_ok(p) for p in procs]
    assert "(2 device(s))" in logs[0] and "wrote 2 head(s)" in logs[1]
    assert not (tmp_path / "elsewhere").exists()  # process 1 wrote nothing
    two_dev = "--xla_force_host_platform_device_count=2"
    _ok(_fit(cache, tmp_path / "one2", _env(XLA_FLAGS=two_dev), mode))
    _ok(_fit(cache, tmp_path / "one1", _env(), mode))
    assert _best(tmp_path / "run") == _best(tmp_path / "one2")  # byte-identical
    for m in ("m000", "m001"):  # one device: the same up to float32 rounding
        a = load_tensors(tmp_path / "run" / "members" / m / "best.safetensors")[0]
        b = load_tensors(tmp_path / "one1" / "members" / m / "best.safetensors")[0]
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert "summary.json" in files and "config.json" in files
