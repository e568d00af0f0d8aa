"""``vh bench scale`` at tiny sizes: every phase row and ratio, numbers that agree, cleanup.

One real run (2,000 and 6,000 states, ~35 s on 2 cores) is shared by the module: its section
is parsed back from the markdown and checked against the results JSON and against the work
folder it kept (the datasets' own state counts). Splits by run id predicates, so the handful
of runs of a tiny size always fill train, val and test; thresholds a few greedy games reach.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from conftest import invoke

from vh.bench import scale

SIZES = (2000, 6000)
SETS = (
    "fit.split.val_where=id % 3 = 1",
    "fit.split.test_where=id % 3 = 2",
    "fit.target.thresholds=[128,256]",
)
ALL = (*scale.PHASES, "all")


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def num(text: str) -> float:
    return float(text.replace(",", "").replace("*", "").rstrip("×"))


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Run the benchmark once (work folder kept, to check it against the datasets)."""
    tmp = tmp_path_factory.mktemp("scale")
    work, md, res = tmp / "work", tmp / "B.md", tmp / "results.json"
    work.mkdir()
    md.write_text("# Benchmarks\n\n## other\n\nkept as is\n")
    args = ["bench", "scale", "--sizes", ",".join(map(str, SIZES)), "--workdir", work, "--keep",
            "--md", md, "--results", res, "--note", "A test note."]  # fmt: skip
    for s in SETS:
        args += ["--set", s]
    r = invoke(args)
    assert r.exit_code == 0, r.output
    return {"output": r.output, "md": md.read_text(), "results": json.loads(res.read_text()),
            "work": work}  # fmt: skip


def phase_table(md: str) -> list[list[str]]:
    lines = [x for x in md.splitlines() if x.startswith("| ")]
    start = next(i for i, x in enumerate(lines) if x.startswith("| states | phase"))
    return [cells(x) for x in lines[start + 2 : start + 2 + len(SIZES) * len(ALL)]]


def ratio_table(md: str) -> dict[str, list[str]]:
    lines = [x for x in md.splitlines() if x.startswith("| ")]
    start = next(i for i, x in enumerate(lines) if x.startswith("| phase | µs/state"))
    return {c[0]: c for c in map(cells, lines[start + 2 : start + 2 + len(ALL)])}


def kept_states(work: Path) -> dict[int, int]:
    """Size -> states, counted from each kept dataset's runs table and its cache."""
    out = {}
    for folder in work.glob("vh-bench-scale-*/states-*"):
        con = sqlite3.connect(folder / "dataset" / "metadata.db")
        steps = con.execute("SELECT SUM(steps) FROM runs").fetchone()[0]
        con.close()
        emb = json.loads((folder / "cache" / "emb" / "zarr.json").read_text())
        assert emb["shape"][0] == steps
        out[int(folder.name.split("-")[1])] = steps
    return out


def test_every_phase_row_and_ratio(measured):
    md = measured["md"]
    assert md.startswith("# Benchmarks\n\n## other\n\nkept as is\n\n## scale\n")
    assert "A test note." in md
    rows = phase_table(md)
    states = kept_states(measured["work"])
    assert sorted(states) == list(SIZES)
    want = [(f"{states[s]:,}", p) for s in SIZES for p in ALL]
    assert [(r[0], r[1]) for r in rows] == want
    ratios = ratio_table(md)
    assert list(ratios) == list(ALL)
    closing = measured["output"].strip().splitlines()[-1]
    for p in ALL:
        assert f"{p} {ratios[p][3].strip('*')}" in closing


def test_numbers_agree(measured):
    rows = phase_table(measured["md"])
    for states, phase, wall, cpu, rate, us, rss in rows:
        n, wall = num(states), num(wall)
        assert wall > 0 and num(cpu) > 0
        # wall is printed to 0.1 s and the rate to 1 state/s: both roundings bound the error
        assert abs(num(rate) * wall - n) <= num(rate) * 0.051 + wall * 0.5 + 1
        assert abs(num(us) * n / 1e6 - wall) <= 0.051
        assert 0.01 < num(rss) < 16, (phase, rss)  # a Python process, far below the RAM
    by = {(r[0], r[1]): r for r in rows}
    for s in {r[0] for r in rows}:
        total = sum(num(by[s, p][2]) for p in scale.PHASES)
        assert abs(num(by[s, "all"][2]) - total) <= 0.25  # sum of rounded figures
        assert num(by[s, "all"][6]) == max(num(by[s, p][6]) for p in scale.PHASES)
    # the ratio is the per-state cost at the largest size over the smallest (unrounded JSON)
    res = measured["results"]["vh_bench_scale"]
    small, large = res[0], res[-1]
    ratios = ratio_table(measured["md"])
    for p in scale.PHASES:
        a = small["phases"][p]["seconds"] / small["states"]
        b = large["phases"][p]["seconds"] / large["states"]
        assert num(ratios[p][3]) == pytest.approx(b / a, abs=0.006)
        assert num(ratios[p][1]) == pytest.approx(a * 1e6, abs=0.006)
        fixed = small["phases"][p]["seconds"] - (
            (large["phases"][p]["seconds"] - small["phases"][p]["seconds"])
            / (large["states"] - small["states"]) * small["states"]
        )  # fmt: skip
        assert num(ratios[p][5]) == pytest.approx(fixed, abs=0.051)


def test_results_json_matches_table(measured):
    res = measured["results"]["vh_bench_scale"]
    assert [r["size"] for r in res] == list(SIZES)
    assert [r["games"] for r in res] == [round(s / scale.STATES_PER_GAME) for s in SIZES]
    rows = {(r[0], r[1]): r for r in phase_table(measured["md"])}
    for r in res:
        for p in scale.PHASES:
            ph = r["phases"][p]
            row = rows[f"{r['states']:,}", p]
            assert num(row[2]) == pytest.approx(ph["seconds"], abs=0.051)
            assert num(row[6]) == pytest.approx(ph["peak_bytes"] / 2**30, abs=0.006)


def test_render_only_and_bad_sizes(measured, tmp_path):
    res = tmp_path / "r.json"
    res.write_text(json.dumps(measured["results"]))
    md = tmp_path / "B.md"
    r = invoke(["bench", "scale", "--render-only", "--results", res, "--md", md, "--note", "N2"])
    assert r.exit_code == 0, r.output
    assert phase_table(md.read_text()) == phase_table(measured["md"])
    assert "N2" in md.read_text()
    for args in (["--sizes", "1e6,x"], ["--sizes", "0,5"], ["--render-only"]):
        r = invoke(["bench", "scale", *args])
        assert r.exit_code == 2 and "Traceback" not in r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), r.output


def test_work_folder_removed_and_sizes_merged(tmp_path, monkeypatch):
    """Without --keep nothing is left; --results keeps older sizes and replaces a remeasured one."""
    seen = []

    def fake(size, folder, sets, log=None):
        folder.mkdir()
        (folder / "cache").write_bytes(b"x")
        seen.append(folder)
        ph = scale.Phase(size / 1000, size / 2000, 2**20)
        return scale.SizeResult(size, 1, size, dict.fromkeys(scale.PHASES, ph))

    monkeypatch.setattr(scale, "run_size", fake)
    res = tmp_path / "r.json"
    scale.bench_scale([3000, 1000], workdir=tmp_path, results=res, log=lambda _: None)
    assert [p.parent.parent for p in seen] == [tmp_path, tmp_path]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.json"]  # work folder gone
    out = scale.bench_scale([5000, 3000], workdir=tmp_path, results=res, log=lambda _: None)
    assert [r.size for r in out] == [1000, 3000, 5000]
    assert [r.size for r in scale.load_results(res)] == [1000, 3000, 5000]
    sec = scale.scale_section(out, command="c")
    assert re.search(r"\| synth \| 1,000\.00 \| 1,000\.00 \| \*\*1\.00×\*\* \|", sec.text)
