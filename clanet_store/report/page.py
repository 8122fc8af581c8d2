"""HTML building blocks of the report: one self-contained page, images inlined as data URIs,
every piece of text escaped (cell line names and paths come from users' files)."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1.5em;
       color: #1d2330; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #d8dde6; padding-bottom: 0.2em;
       margin-top: 2em; }
.meta { color: #5a6475; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #d8dde6; padding: 0.3em 0.7em; text-align: right; }
th { background: #eef1f6; } td:first-child, th:first-child, .l { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #d8dde6; }
figcaption { color: #5a6475; font-size: 0.9em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 1em; }
.note { background: #fff6e0; border-left: 4px solid #e0a800; padding: 0.5em 1em; }
.banner { background: #fde8e8; border-left: 6px solid #c62828; color: #6d0f0f; font-weight: 600;
          padding: 0.6em 1em; }
.cards { display: flex; gap: 1em; flex-wrap: wrap; }
.card { background: #eef1f6; border-radius: 6px; padding: 0.6em 1.1em; }
.card b { display: block; font-size: 1.5em; }
"""


def text(value: Any) -> str:
    """Escaped text of any value; floats to 4 significant digits."""
    if isinstance(value, float):
        return escape(f"{value:.4g}")
    return escape("" if value is None else str(value))


def image(data: bytes, alt: str, caption: str, mime: str = "image/png") -> str:
    """A figure with the image inlined (the page needs no other file)."""
    encoded = base64.b64encode(data).decode("ascii")
    return (
        f'<figure><img src="data:{mime};base64,{encoded}" alt="{escape(alt)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def table(rows: Iterable[Sequence[Any]], header: Sequence[str], left: int = 1) -> str:
    """An HTML table of already-formatted or plain values; the first ``left`` columns (text)
    are aligned left, the others (numbers) right."""

    def cell(tag: str, i: int, value: str) -> str:
        aligned = 0 < i < left  # the first column is left-aligned by the style sheet
        return f'<{tag} class="l">{value}</{tag}>' if aligned else f"<{tag}>{value}</{tag}>"

    head = "".join(cell("th", i, escape(h)) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, text(v)) for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cards(items: Iterable[tuple[str, Any]]) -> str:
    """Big numbers with a label under each."""
    inner = "".join(f'<div class="card"><b>{text(v)}</b>{escape(k)}</div>' for k, v in items)
    return f'<div class="cards">{inner}</div>'


def note(message: str) -> str:
    """A highlighted remark (a missing section, a random-init encoder)."""
    return f'<p class="note">{escape(message)}</p>'


def banner(message: str) -> str:
    """A loud warning: what follows was built on embeddings that carry no information."""
    return f'<p class="banner" role="alert">{escape(message)}</p>'


def paragraph(message: str) -> str:
    """Plain escaped prose."""
    return f"<p>{escape(message)}</p>"


def section(title: str, *parts: str, anchor: str) -> str:
    """A titled section; ``parts`` are HTML from the helpers above."""
    return f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>{"".join(parts)}</section>'


def grid(*parts: str) -> str:
    """Figures side by side where the window is wide enough."""
    return f'<div class="grid">{"".join(parts)}</div>'


def document(title: str, subtitle: str, sections: Sequence[str]) -> str:
    """The whole page."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{escape(title)}</h1><p class="meta">{escape(subtitle)}</p>'
        f"{''.join(sections)}</body></html>\n"
    )
