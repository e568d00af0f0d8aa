"""``vh bench gpu`` at tiny sizes: on a machine without a GPU it falls back to the CPU, runs
every part and writes a complete ``gpu`` section (figures, ratios, goals) into the markdown."""

from __future__ import annotations

import re

import torch
from click.testing import CliRunner

from vh.cli import main


def _cell(text: str, label: str) -> list[str]:
    """The cells after ``label`` in the markdown table row that starts with it."""
    line = next(x for x in text.splitlines() if x.startswith(f"| {label}"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_bench_gpu_tiny_on_the_cpu_fallback(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\n## extract\n\nkept\n\n## fit\n\nalso kept\n")
    args = ["bench", "gpu", "--device", "auto", "--extract-rows", "3000", "--preset", "tiny",
            "--batch-size", "512", "--probe-rows", "20000", "--dim", "32", "--mlp-rows",
            "4096", "--rounds", "1", "--workdir", str(tmp_path / "w"), "--md", str(md),
            "--set", "extract.chunk_rows=1024"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, (r.output, r.exception)
    text = md.read_text()
    # the other sections are kept, the gpu one appended once
    assert "## extract\n\nkept" in text and "## fit\n\nalso kept" in text
    assert text.count("## gpu") == 1
    gpu = text[text.index("## gpu") :]
    for label in (
        "extract: bare trunk forward",
        "extract: embedding loop",
        "extract: full `vh extract`",
        "probe, one epoch of 20,000 rows",
        "8-head probe grid",
        "MLP head, one epoch of 4,096 rows",
    ):
        assert float(_cell(gpu, label)[0].replace(",", "")) > 0, label
    # rows/s and seconds of a row agree (the table is the figures, not decoration)
    rate, seconds = (float(c.replace(",", "")) for c in _cell(gpu, "probe, one epoch"))
    assert abs(rate * seconds - 20_000) <= 20_000 * 0.05 + rate * 0.0005
    for ratio in (
        "extract embedding loop / bare forward",
        "full extract / bare forward",
        "8-head grid epoch",
        "probe epoch scaled to 50M rows",
    ):
        assert re.search(re.escape(ratio) + r" [0-9.]+", gpu), ratio
    assert gpu.count("(met)") + gpu.count("(NOT met)") == 4
    if not torch.cuda.is_available():
        assert "Not yet run on a GPU" in gpu and "CPU fallback" in gpu
    assert "wrote section 'gpu'" in r.output and "extract loop / bare forward" in r.output
