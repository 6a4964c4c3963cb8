"""report.html: one self-contained page with the report's tables and the plot inlined."""

from __future__ import annotations

import base64
from html import escape

from kdc.deploy.report_cells import DASH
from kdc.deploy.report_md import Table, build_sections, header_lines

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }
h1 { margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } img { max-width: 100%; border: 1px solid #ddd; }
.PASS { color: #17702a; font-weight: 600; } .FAIL { color: #b00020; font-weight: 600; }
"""


def _table(table: Table) -> str:
    head, rows = table
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{escape(c)}">{escape(c)}</td>'
            if c in ("PASS", "FAIL")
            else f"<td>{escape(str(c))}</td>"
            for c in r
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _list(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul>" if lines else ""


def render_html(report: dict, png: bytes) -> str:
    """The page: header, the plot as a base64 data URI, then every section."""
    name = escape(str((report.get("run") or {}).get("name", DASH)))
    parts = [
        f"<h1>kdc report: {name}</h1>",
        _list(header_lines(report)),
        f'<img alt="latency vs accuracy" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode("ascii")}">',
    ]
    for s in build_sections(report):
        parts += [f"<h2>{escape(s.title)}</h2>", _list(s.lines)]
        if s.table:
            parts.append(_table(s.table))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>kdc report: {name}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(p for p in parts if p)
        + "\n</body></html>\n"
    )
