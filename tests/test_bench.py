"""vh.bench: one way of reporting (figures, ratios, BENCHMARKS.md sections) and the small
benchmarks driven through their commands (extract and fit have theirs in test_extract.py and
test_heads_fit.py)."""

import pytest
from click.testing import CliRunner

from vh.bench import report as R
from vh.cli import main


def test_figures_ratios_and_tables_by_hand():
    assert R.number(1234567.891) == "1,234,568" and R.number(0.4219, 2) == "0.42"
    assert R.times(4.186) == "4.19×" and R.times(6910.4, 0) == "6,910×"
    assert R.goal("probe ≥ 2×", True) == "probe ≥ 2× (met)"
    assert R.goal("probe ≥ 2×", False) == "probe ≥ 2× (NOT met)"
    assert R.table(["a", "b"], [False, True], [["x", "1"]]) == [
        "| a | b |",
        "| --- | ---: |",
        "| x | 1 |",
    ]
    s = R.section("fit", "intro", ["| t |"], closing="done")
    assert s.text == "## fit\n\nintro\n\n| t |\n" and s.name == "fit" and s.closing == "done"


def test_replace_section_keeps_the_others(tmp_path):
    md = tmp_path / "B.md"
    R.replace_section(md, "fit", "## fit\n\nfirst\n")  # absent file: a title, then the section
    assert md.read_text() == "# Benchmarks\n\n## fit\n\nfirst\n"
    md.write_text("# Benchmarks\n\n## extract\n\nkept\n\n## fit\n\nold\n\n## eval\n\nalso kept\n")
    R.replace_section(md, "fit", "## fit\n\nnew\n")
    assert md.read_text() == (
        "# Benchmarks\n\n## extract\n\nkept\n\n## fit\n\nnew\n\n## eval\n\nalso kept\n"
    )
    R.replace_section(md, "synth", "## synth\n\nadded\n")  # a new section goes last
    assert md.read_text().endswith("## eval\n\nalso kept\n\n## synth\n\nadded\n")


def test_publish_prints_the_section_then_the_closing_line(tmp_path, capsys):
    md = tmp_path / "B.md"
    R.publish(R.section("eval", "figures", closing="scored"), md)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "## eval" and out[-1] == f"scored; wrote section 'eval' of {md}"
    assert md.read_text() == "# Benchmarks\n\n## eval\n\nfigures\n"
    R.publish(R.section("eval", "figures", closing="scored"), None)
    assert capsys.readouterr().out.splitlines()[-1] == "scored"


def test_bench_eval_synth_and_decode_commands(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\n## fit\n\nkeep me\n")
    args = ["--rows", "4000", "--runs", "100", "--heads", "2", "--set", "eval.n_boot=10"]
    r = CliRunner().invoke(main, ["bench", "eval", *args, "--md", str(md)])
    assert r.exit_code == 0, r.output
    assert "scored 8,000 predictions" in r.output and "winner: h0" in r.output  # h0: least noise
    text = md.read_text()
    assert "## fit\n\nkeep me" in text and "## eval" in text and "10 resamples" in text
    r = CliRunner().invoke(
        main, ["bench", "synth", "--games", "50", "--moves", "5", "--search-games", "4"]
    )
    assert r.exit_code == 0, r.output
    assert "| greedy: 250 moves of 50 games" in r.output and "random/greedy speed ratio" in r.output
    r = CliRunner().invoke(main, ["bench", "decode", "--rows", "5000", "--batch", "1000"])
    assert r.exit_code == 0, r.output
    assert "| packed |" in r.output and "decoded 5,000 rows per layout" in r.output


def test_measurements_table_by_hand():
    assert R.measurements(["rows/s", "GB/s"], [["(a)", "1", "2"]]) == [
        "| measurement | rows/s | GB/s |",
        "| --- | ---: | ---: |",
        "| (a) | 1 | 2 |",
    ]


def _extract_figures(**over) -> dict:
    """Figures as vh.bench.extract.bench_extract returns them, made up (a 2-writer run)."""
    breakdown = {"writers": 2, "decode": 1.25, "copy": 0.5, "forward": 3.0, "write": 0.75,
                 "starved": 0.25, "blocked": 0.125, "wall": 4.0}  # fmt: skip
    figures = {
        "rows": 30000, "d": 32, "trunk": "init", "preset": "tiny", "device": "cpu",
        "threads": 2, "writers": 2, "batch_size": 512, "chunk_rows": 1024,
        "dtype": "float16", "repeats": 3, "load": 0.5, "bare_rows_s": 12345.6,
        "raw_gbs": 0.8, "pipeline_rows_s": 9876.5, "pipeline_gbs": 0.0006, "ratio": 0.8,
        "pair_ratios": [0.7, 0.8, 0.9], "loop_ratio": 0.85, "cpu_ratio": 0.9,
        "embed_loop_rows_s": 11000.0, "embed_loop_gbs": 0.7, "breakdown": breakdown,
        "pipeline_s": 6.5, "rss_start": 2**30, "rss_peak": 3 * 2**30,
        "unit_bytes": 64 * 2**20, "codecs": [], "codec_mib": 2, "torch": "2.x",
    }  # fmt: skip
    return {**figures, **over}


def test_extract_sections_by_hand():
    from vh.bench.extract import extract_section  # importable from where vh bench imports it

    s = extract_section(_extract_figures())
    lines = s.text.splitlines()
    assert s.name == "extract" and lines[0] == "## extract"
    assert s.closing == "pipeline / bare forward = 0.800"
    assert "| (a) bare trunk forward, tokens pre-decoded on the device | 12,346 |" in lines
    assert "| **ratio (b) / (a)**, median of the pairs | **0.800** |" in lines
    assert "the ratio of each pair: 0.7, 0.8, 0.9." in s.text
    # the trunk busy 3.0 of 4.0 s; setup 6.5 - 4.0 s; memory bound (2 + 2) x 64 MiB units
    assert "The trunk was busy 75.0 % of the embedding loop" in s.text
    assert "took 2.50 s, a fixed cost" in s.text
    assert "Peak RSS during the extract (VmHWM, reset right before it): 3.00 GiB" in s.text
    assert "4 unit buffers × 64 MiB = 0.25 GiB in flight" in s.text
    assert "columns at 38 bytes/row = 0.00 GiB" in s.text  # 30,000 rows: 1.1 MiB
    assert "emb codecs" not in s.text
    codec = {"codec": "zstd", "ratio": 1.5, "write_gbs": 1.234, "read_gbs": 2.0}
    s = extract_section(_extract_figures(codecs=[codec]))
    lines = s.text.splitlines()
    assert "| codec | ratio | write GB/s | read GB/s |" in lines
    assert "| zstd | 1.500 | 1.23 | 2.00 |" in lines
    assert s.text.index("Peak RSS") < s.text.index("emb codecs on these embeddings")


def test_free_trunk_section_by_hand():
    from vh.bench.extract import extract_section

    s = extract_section(_extract_figures(trunk="null", load=1.5, embed_loop_gbs=0.3))
    lines = s.text.splitlines()
    assert s.name == "extract, null trunk" and lines[0] == "## extract, null trunk"
    assert "(**a busy machine: figures are noisy**)" in s.text  # load 1.5 > 1
    # 0.8 GB/s of 32 float16 values a row: 0.8e9 / 64 = 12.5M rows/s
    raw = [line for line in lines if line.startswith("| (a) raw disk write")]
    assert raw == ["| (a) raw disk write of the same bytes (chunk files, write + fdatasync, "
                   "2 threads) | 12,500,000 | 0.800 |"]  # fmt: skip
    assert "embedding loop: 0.300 GB/s (NOT met)" in s.text
    assert s.closing == "extract / raw disk write = 0.800 (embedding loop 0.850, 0.300 GB/s)"
    assert "setup and finish (validate, hash, columns, verify) 2.50 s." in s.text
    quiet = extract_section(_extract_figures(trunk="onehot", load=0.5, embed_loop_gbs=0.5))
    assert "busy machine" not in quiet.text and "0.500 GB/s (met)" in quiet.text


def test_bench_play_measures_each_search_and_writes_its_section(tmp_path):
    from vh.bench.play import SEARCHES, benchmark, play_section

    rows = benchmark(("tiny",), games=2, moves=3, log=lambda _: None)
    assert [(r["mode"], r["depth"]) for r in rows] == list(SEARCHES)
    for r in rows:  # 3 moves cannot end a game: every game plays them all
        assert r["moves"] == 6 and r["moves_per_s"] == pytest.approx(6 / r["seconds"])
    text = play_section(rows, 2, 3, "cpu").text
    assert "`vh bench play --games 2 --moves 3 --presets tiny`" in text
    assert "| tiny (D = 32) | afterstate | 2 | 6 |" in text
    # the command writes the section into the file it is given
    md = tmp_path / "B.md"
    r = CliRunner().invoke(
        main,
        ["bench", "play", "--games", "1", "--moves", "2", "--presets", "tiny", "--md", str(md)],
    )
    assert r.exit_code == 0, r.output
    assert (
        md.read_text().count("## play") == 1
        and "| tiny (D = 32) | expectation | 1 | 2 |" in md.read_text()
    )
