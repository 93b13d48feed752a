"""The pieces every report page shares: the style sheet, the head (with plotly.js), a reading
paragraph and a figure (PNG embedded as a data URI, also named by its file)."""

from __future__ import annotations

import base64
import html
import os

from mivar_jax.report import interactive

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
.table-box{max-width:100%;overflow-x:auto;margin:.6em 0}
table{border-collapse:collapse;font-size:.8em}td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f4f4f4;font-weight:600;vertical-align:bottom;min-width:3.5em}td.num{white-space:nowrap}
td:first-child,th:first-child,td.text,th.text{text-align:left}
.verdict{font-size:1.05em;padding:.7em 1em;border-radius:6px;background:#f6f6f6;border-left:5px solid #888}
.stable{border-color:#2a9d4b}.unstable{border-color:#c0392b}.mixed{border-color:#e0a020}
.reading{background:#f4f8fd;border-left:3px solid #4a7bd0;padding:.5em .8em;margin:.6em 0}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
details.static>summary,details.glossary>summary{cursor:pointer;font-size:.85em;color:#555}
.view{border:1px solid #eee;margin:.6em 0;max-width:100%;overflow:hidden}
pre{background:#f7f7f7;padding:.6em;font-size:.8em;overflow-x:auto}
.glossary{font-size:.8em;color:#444}.glossary dt{font-weight:600;float:left;clear:left;margin-right:.5em}
.glossary dt::after{content:":"}.glossary dd{margin:0 0 .2em 0}
"""


def head(title: str) -> str:
    """From ``<!doctype html>`` to ``<body>``: the style sheet and plotly.js, nothing loaded from elsewhere."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style>{interactive.plotly_js()}</head><body>"
    )


def reading(text: str) -> str:
    """A section's generated reading (``readings``) as a paragraph; nothing without text."""
    return f"<p class='reading'><b>Reading.</b> {html.escape(text)}</p>" if text else ""


def figure(fig_dir: str, name: str, caption: str) -> str:
    with open(os.path.join(fig_dir, f"{name}.png"), "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return (
        f'<figure id="{name}"><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}" '
        f'data-file="figures/{name}.png"><figcaption>{html.escape(caption)} (<code>figures/{name}.png</code>)'
        "</figcaption></figure>"
    )


def static(fig_dir: str, name: str, caption: str) -> str:
    """The PNG of a section that has an interactive view, folded away (for papers)."""
    return f"<details class='static'><summary>Static figure (PNG, for papers)</summary>{figure(fig_dir, name, caption)}</details>"
