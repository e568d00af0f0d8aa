"""vh.bench: one way of reporting (figures, ratios, BENCHMARKS.md sections) and the small
benchmarks driven through their commands (extract and fit have theirs in test_extract.py and
test_heads_fit.py)."""

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
