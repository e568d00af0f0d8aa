"""The BENCHMARKS.md sections of ``vh bench extract``, from :func:`vh.bench.extract.bench_extract`'s
figures (the measuring lives there; this module only lays the figures out).

Both sections share one layout (:func:`_layout`): the command and setup, a table of
measurements, the spread of the pairs, the pipeline's breakdown, the peak RSS, then whatever
the section adds (the emb codecs, with a network). Only the words differ: with a network (a) is
the bare trunk forward, with a free trunk (null, onehot) it is the raw disk write.
"""

from __future__ import annotations

import numpy as np

from vh.bench.report import Section, goal, machine, measurements, number, section, table, today


def extract_section(r: dict) -> Section:
    """The BENCHMARKS.md section for :func:`vh.bench.extract.bench_extract`'s figures:
    ``extract`` with a network, ``extract, null trunk`` / ``extract, onehot trunk`` with a
    free one."""
    if r["trunk"] != "init":
        return free_trunk_section(r)
    return _network_section(r)


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB"


def _itemsize(r: dict) -> int:
    return np.dtype(r["dtype"]).itemsize


def _pairs(r: dict) -> str:
    """The ratio of each (a, b) pair, as printed in the spread paragraph."""
    return ", ".join(map(str, r["pair_ratios"]))


def _memory(r: dict) -> str:
    """The peak-RSS paragraph: what the extract added to the process, against its bound."""
    b = r["breakdown"]
    bound = (b["writers"] + 2) * r["unit_bytes"]
    cols = 38 * r["rows"]
    return (
        f"Peak RSS during the extract (VmHWM, reset right before it): {_gib(r['rss_peak'])}, "
        f"of which {_gib(r['rss_start'])} was the benchmark process before it (dataset maps, "
        f"torch). Bound (extract/pipeline.py): {b['writers'] + 2} unit buffers × "
        f"{r['unit_bytes'] / 2**20:.0f} MiB = {_gib(bound)} in flight, plus the per-state "
        f"columns at 38 bytes/row = {_gib(cols)}, plus the dataset's pages read."
    )


def _layout(
    name: str, r: dict, setup: str, figures: list[str], spread: str, breakdown: str, *extra, closing
) -> Section:
    """The one layout of both extract sections: setup, figures, spread, breakdown, memory,
    then ``extra`` paragraphs."""
    return section(name, setup, figures, spread, breakdown, _memory(r), *extra, closing=closing)


# --------------------------------------------------------------------------- free trunk


def free_trunk_section(r: dict) -> Section:
    """``extract, <trunk> trunk``: the pipeline around a free trunk vs the raw disk write."""
    busy = " (**a busy machine: figures are noisy**)" if r["load"] > 1.0 else ""
    setup = (
        f"`vh bench extract --trunk {r['trunk']} --rows {r['rows']} --repeats {r['repeats']} "
        f"--codec-mib 0` — {r['trunk']} trunk (D = {r['d']}, costs nothing: what is measured "
        f"is decode, columns and write), {r['device']}, {r['writers']} writer threads, batch "
        f"{r['batch_size']}, chunk {r['chunk_rows']} rows, {r['dtype']}; {machine()}, load "
        f"average {r['load']:.1f} at the end{busy}; {r['repeats']} pairs of (b) then (a), "
        f"{today()}."
    )
    goal_line = goal(
        f"Goal ≥ 0.5 GB/s of embeddings written (≥ 1M rows/s at D = 256), embedding loop: "
        f"{number(r['embed_loop_gbs'], 3)} GB/s",
        r["embed_loop_gbs"] >= 0.5,
    )
    return _layout(
        f"extract, {r['trunk']} trunk",
        r,
        setup,
        _free_trunk_figures(r),
        f"{goal_line}. Ratio of each pair (full extract): {_pairs(r)}.",
        _free_trunk_breakdown(r["breakdown"], r["pipeline_s"]),
        closing=f"extract / raw disk write = {number(r['ratio'], 3)} (embedding loop "
        f"{number(r['loop_ratio'], 3)}, {number(r['embed_loop_gbs'], 3)} GB/s)",
    )


def _free_trunk_figures(r: dict) -> list[str]:
    """(a) the raw write, (b) the extract and its loop, in rows/s and GB/s; their ratios."""
    raw_rows_s = r["raw_gbs"] * 1e9 / (r["d"] * _itemsize(r))
    write = (
        "(a) raw disk write of the same bytes (chunk files, write + fdatasync, "
        f"{r['writers']} threads)"
    )
    full = "(b) full `vh extract` (validate, hash, columns, decode, embed, write, finish)"
    return measurements(
        ["rows/s", "GB/s of embeddings"],
        [
            [write, number(raw_rows_s), number(r["raw_gbs"], 3)],
            [full, number(r["pipeline_rows_s"]), number(r["pipeline_gbs"], 3)],
            [
                "(b) embedding loop only (decode, embed, write)",
                number(r["embed_loop_rows_s"]),
                number(r["embed_loop_gbs"], 3),
            ],
            [
                "**ratio (b) / (a)**, full extract, median of the pairs",
                f"**{number(r['ratio'], 3)}**",
            ],
            ["ratio (b) / (a), embedding loop only", number(r["loop_ratio"], 3)],
        ],
    )


def _free_trunk_breakdown(b: dict, pipeline_s: float) -> str:
    """Where the median run's time went, with a free trunk (no device copy to speak of)."""
    return (
        f"Breakdown of the median run ({pipeline_s:.1f} s in all): decode "
        f"{b['decode']:.2f} s, embed {b['forward']:.2f} s, write {b['write']:.2f} s summed "
        f"over {b['writers']} writer threads, waiting for input {b['starved']:.2f} s, waiting "
        f"for the writers {b['blocked']:.2f} s, embedding loop {b['wall']:.2f} s; setup and "
        f"finish (validate, hash, columns, verify) {pipeline_s - b['wall']:.2f} s."
    )


# --------------------------------------------------------------------------- with a network


def _network_section(r: dict) -> Section:
    """The ``extract`` section: bare forward vs the full extract, with a network."""
    setup = (
        f"`vh bench extract --rows {r['rows']} --preset {r['preset']} --repeats {r['repeats']}` "
        f"— {r['preset']} trunk (D = {r['d']}), {r['device']}, {r['threads']} torch threads, "
        f"batch {r['batch_size']}, chunk {r['chunk_rows']} rows, {r['dtype']}, torch "
        f"{r['torch']}; {r['repeats']} alternating pairs (a then b), {today()}."
    )
    spread = (
        f"Rows/s are medians; the ratio of each pair: {_pairs(r)}. "
        "On a shared 2-core VM the spread between pairs is the machine's load, not the pipeline. "
        f"CPU seconds of the process, (a) / (b), median of the pairs: {number(r['cpu_ratio'], 3)}."
    )
    return _layout(
        "extract",
        r,
        setup,
        _network_figures(r),
        spread,
        _network_breakdown(r["breakdown"], r["pipeline_s"]),
        *_codecs(r),
        closing=f"pipeline / bare forward = {number(r['ratio'], 3)}",
    )


def _network_figures(r: dict) -> list[str]:
    """(a) the bare forward, (b) the extract and its loop, in rows/s; their ratio."""
    full = (
        "(b) full `vh extract` into a fresh cache (validate, hash, columns, decode, "
        "forward, write, finish)"
    )
    return measurements(
        ["rows/s"],
        [
            [
                "(a) bare trunk forward, tokens pre-decoded on the device",
                number(r["bare_rows_s"]),
            ],
            [full, number(r["pipeline_rows_s"])],
            ["(b) embedding loop only", number(r["embed_loop_rows_s"])],
            ["**ratio (b) / (a)**, median of the pairs", f"**{number(r['ratio'], 3)}**"],
        ],
    )


def _network_breakdown(b: dict, pipeline_s: float) -> str:
    """Where the median run's time went, with a network: how busy the trunk was."""
    return (
        f"Breakdown of the median pipeline run ({pipeline_s:.1f} s in all; decode and write "
        "run on background threads, overlapping the forward): "
        f"decode {b['decode']:.2f} s, host-to-device copy {b['copy']:.2f} s, forward "
        f"{b['forward']:.2f} s, write {b['write']:.2f} s, trunk waiting for input "
        f"{b['starved']:.2f} s, waiting for the writers {b['blocked']:.2f} s, embedding loop "
        f"{b['wall']:.2f} s. The trunk was busy "
        f"{100 * b['forward'] / max(b['wall'], 1e-9):.1f} % of the embedding loop; setup and "
        f"finish (validate, hash, create, columns, fsyncs, verify, marker) took "
        f"{pipeline_s - b['wall']:.2f} s, a fixed cost that an extract of millions of rows "
        "amortises."
    )


def _codecs(r: dict) -> list:
    """The emb codec paragraph and table (nothing when no codec was measured)."""
    if not r["codecs"]:
        return []
    rows = [
        [c["codec"], number(c["ratio"], 3), number(c["write_gbs"], 2), number(c["read_gbs"], 2)]
        for c in r["codecs"]
    ]
    return [
        f"emb codecs on these embeddings (tiled to about {r['codec_mib']} MiB of whole chunks, "
        "whole-chunk writes, reads into a preallocated buffer, best of 3):",
        table(["codec", "ratio", "write GB/s", "read GB/s"], [False, True, True, True], rows),
    ]
