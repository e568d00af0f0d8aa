"""A report as a list of blocks, rendered both to Markdown and to self-contained HTML.

The HTML embeds every image as a data URI and has no scripts, so ``index.html`` can be mailed or
opened from anywhere. The only inline markup is ``**bold**`` and links to the page's own headings
(``[text](#anchor)``), in paragraphs and bullets.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vh.eval.formatting import anchor


@dataclass
class Doc:
    """A report as blocks, rendered both to Markdown and to self-contained HTML."""

    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        """A bulleted list (inline markup as in paragraphs)."""
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]], numeric: bool = True) -> None:
        """A table; ``numeric`` right-aligns its columns after the first in HTML."""
        self.blocks.append(("table", header, rows, numeric))

    def img(self, path: str, caption: str) -> None:
        self.blocks.append(("img", path, caption))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self, base: Path) -> str:
        """Markdown text; images are linked relative to ``base`` (the report dir)."""
        return "\n\n".join(_markdown_block(b, base) for b in self.blocks) + "\n"

    def html(self, title: str) -> str:
        """A self-contained HTML page: images embedded, styles inline, no scripts."""
        body = "\n".join(_html_block(b) for b in self.blocks)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + body + "\n</body></html>\n"
        )


def _markdown_block(b: tuple, base: Path) -> str:
    """One block as Markdown."""
    if b[0] == "h":
        return "#" * b[1] + " " + b[2]
    if b[0] == "p":
        return b[1]
    if b[0] == "ul":
        return "\n".join(f"- {item}" for item in b[1])
    if b[0] == "table":
        return "\n".join(
            ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
            + ["| " + " | ".join(r) + " |" for r in b[2]]
        )
    if b[0] == "img":
        return f"![{b[2]}]({os.path.relpath(b[1], base)})"
    return "```\n" + b[1] + "\n```"


def _html_block(b: tuple) -> str:
    """One block as HTML (text escaped; an image read and embedded as a data URI)."""
    if b[0] == "h":
        return f'<h{b[1]} id="{anchor(b[2])}">{html.escape(b[2])}</h{b[1]}>'
    if b[0] == "p":
        return f"<p>{_inline(b[1])}</p>"
    if b[0] == "ul":
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in b[1]) + "</ul>"
    if b[0] == "table":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in b[1])
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in b[2]
        )
        cls = ' class="num"' if b[3] else ""
        return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    if b[0] == "img":
        data = base64.b64encode(Path(b[1]).read_bytes()).decode("ascii")
        return (
            f'<figure><img alt="{html.escape(b[2])}" '
            f'src="data:image/png;base64,{data}"><figcaption>'
            f"{html.escape(b[2])}</figcaption></figure>"
        )
    return f"<pre>{html.escape(b[1])}</pre>"


_LINK = re.compile(r"\[([^\]]+)\]\((#[A-Za-z0-9_-]*)\)")


def _inline(text: str) -> str:
    """Escaped text with the two inline markups used: ``**bold**`` and ``[text](#anchor)``
    (links inside the page only)."""
    parts = html.escape(text).split("**")
    out = "".join(f"<strong>{t}</strong>" if i % 2 else t for i, t in enumerate(parts))
    return _LINK.sub(r'<a href="\2">\1</a>', out)


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
    "color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0;"
    "font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}"
    ".num td,.num th{text-align:right}"
    "th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%}figure{margin:1em 0}figcaption{font-size:12px;color:#555}"
    "pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px}"
)
