"""``vh inspect DIR``: what a dataset dir holds, after checking every row."""

from __future__ import annotations

import json

import click

from vh.shell import done, main


@main.command()
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option(
    "--vocab",
    type=click.IntRange(min=1),
    default=None,
    help="Also check that every tile exponent fits a trunk vocab of this size "
    "(16, or 17 for 65536 tiles).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the summary as JSON on stdout (the closing line goes to stderr).",
)
def inspect(dataset: str, vocab: int | None, as_json: bool) -> None:
    """Validate the dataset dir DATASET and summarise it: layout, shards, runs, tiles, scores."""
    from vh.extract.dataset import open_dataset

    summary = open_dataset(dataset, vocab=vocab).summary(progress=True)
    closing = (
        f"inspected {summary['rows']:,} rows in {summary['runs']:,} runs of {dataset}: "
        "all checks passed"
    )
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        click.echo(closing, err=True)
        return
    click.echo(format_summary(summary))
    done(closing)


def _stats(d: dict, fmt: str = "{:,.0f}") -> str:
    return ", ".join(f"{k} {'-' if v is None else fmt.format(v)}" for k, v in d.items())


def _files(names: list[str]) -> str:
    if len(names) <= 2:
        return ", ".join(names) or "none"
    return f"{len(names)} shards ({names[0]} ... {names[-1]})"


def _short(value, width: int = 48) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def format_summary(s: dict) -> str:
    """A readable rendering of :meth:`vh.extract.dataset.Dataset.summary`."""
    fields = ", ".join(f"{k}={v}" for k, v in s["fields"].items())
    shards = s["shards"]
    itemsizes = sorted({sh["itemsize"] for sh in shards})
    tiles = ", ".join(f"{int(t):,}: {n}" for t, n in s["highest_tile"].items()) or "-"
    cols = ", ".join(f"{k}={v or '(none)'}" for k, v in s["columns_used"].items())
    e = s["max_exponent"]
    lines = [
        f"dataset        {s['path']}",
        f"layout         {s['layout']} ({fields})",
        f"shards         {len(shards)} ({', '.join(map(str, itemsizes))} bytes per row)",
        *(f"  {sh['name']:<22} {sh['rows']:>14,} rows" for sh in shards[:8]),
        *([f"  ... {len(shards) - 8} more"] if len(shards) > 8 else []),
        f"rows           {s['rows']:,}",
        f"runs           {s['runs']:,}",
        f"steps per run  {_stats(s['steps_per_run'])}",
        f"highest tile   {tiles} (tile: runs)",
        f"final score    {_stats(s['final_score'])}",
        f"max exponent   {e} (tile {1 << e if e > 0 else 0:,}; needs vocab {s['vocab_needed']})",
        f"metadata.db    {cols}",
        f"session        {', '.join(f'{k}={_short(v)}' for k, v in s['session'].items()) or '-'}",
        f"values sidecar {_files(s['values_sidecar'])}",
    ]
    return "\n".join(lines)
