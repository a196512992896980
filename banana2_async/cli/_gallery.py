"""``gallery.html``: a bulk job's images on one page, beside them, for a person to look at.

One self-contained file: the styles and a few lines of script are inline,
the thumbnails are the local image files by relative path, and nothing is
fetched from anywhere, so it opens from ``file://`` without a network. Each
row shows its thumbnail (or, when it has none, why), its prompt, options,
task id, credits and status. Every text a user or a server chose is
HTML-escaped; every path is URL-quoted.
"""

from __future__ import annotations

import html
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from ._manifest import counts, relative_files

__all__ = ["GALLERY_NAME", "render_gallery", "write_gallery"]

GALLERY_NAME: Final = "gallery.html"

# Only what the page itself holds may run or be drawn; no address outside the page's own directory is used.
_POLICY: Final = "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_STYLE: Final = """
:root { color-scheme: light; --bg: #f4f3ef; --card: #ffffff; --ink: #1f1f23; --muted: #66666d;
  --ok: #1a7f37; --bad: #b42318; --warn: #9a6700; --line: #e3e1da; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { padding: 20px 24px 4px; }
h1 { font-size: 20px; margin: 0 0 6px; font-weight: 650; }
.summary { margin: 0; color: var(--muted); }
.summary b { color: var(--ink); }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 16px;
  padding: 16px 24px 32px; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  overflow: hidden; display: flex; flex-direction: column; }
.thumb { display: block; background: #e8e6df; }
.thumb img { display: block; width: 100%; aspect-ratio: 1 / 1; object-fit: cover; }
.empty { aspect-ratio: 1 / 1; display: flex; align-items: center; justify-content: center; padding: 16px;
  text-align: center; color: var(--muted);
  background: repeating-linear-gradient(45deg, #efede7 0 10px, #e8e6df 10px 20px); }
figcaption { padding: 10px 12px 12px; display: flex; flex-direction: column; gap: 5px; }
.prompt { font-weight: 600; overflow-wrap: anywhere; }
.facts { margin: 0; display: grid; grid-template-columns: auto 1fr; gap: 1px 8px; font-size: 12px; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; overflow-wrap: anywhere; }
.status { font-size: 11px; font-weight: 700; letter-spacing: .05em; text-transform: uppercase; }
.status.succeeded { color: var(--ok); }
.status.failed, .status.unsubmitted { color: var(--bad); }
.status.uncertain, .status.in_progress { color: var(--warn); }
.error { margin: 2px 0 0; padding: 6px 8px; border-radius: 6px; background: #fdeceb; color: var(--bad);
  font-size: 12px; overflow-wrap: anywhere; white-space: pre-wrap; }
.more { font-size: 12px; }
figure.missing .thumb::after { content: "image file missing"; display: block; padding: 8px; color: var(--bad); }
"""

# Marks each image that did not load (a file moved or deleted), and counts them on <body> for a look from outside.
_SCRIPT: Final = """
addEventListener("load", function () {
  var images = document.querySelectorAll("figure img"), loaded = 0, missing = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
    else { missing++; images[i].closest("figure").classList.add("missing"); }
  }
  document.body.setAttribute("data-images-loaded", String(loaded));
  document.body.setAttribute("data-images-missing", String(missing));
});
"""


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _source(path: str) -> str:
    return _text(quote(path, safe="/"))


def _options(options: Mapping[str, Any]) -> str:
    parts = [f"{name.replace('_', ' ')} {value}" for name, value in options.items() if name not in ("type", "images")]
    if options.get("type") == "edit":
        references = len(options.get("images") or ())
        parts.insert(0, f"edit of {references} image{'s' if references != 1 else ''}")
    return " · ".join(parts) or "defaults"


def _card(record: Mapping[str, Any]) -> str:
    status = str(record["status"])
    files: list[str] = list(record["files"])
    prompt = str(record["prompt"])
    if files:
        picture = (
            f'<a class="thumb" href="{_source(files[0])}">'
            f'<img src="{_source(files[0])}" alt="{_text(prompt[:200])}"></a>'
        )
    else:
        why = {
            "succeeded": "no image saved",
            "failed": "no image",
            "uncertain": "not known if it was made",
            "unsubmitted": "not sent",
            "in_progress": "still being made",
        }.get(status, "no image")
        picture = f'<div class="empty">{_text(why)}</div>'
    facts = [("row", f"{record['row']}" + (f" · id {record['id']}" if record.get("id") else ""))]
    facts.append(("options", _options(record["options"])))
    facts.append(("task", record["task_id"] or "none"))
    facts.append(("credits", "not reported" if record["credits"] is None else record["credits"]))
    rows = "".join(f"<dt>{_text(name)}</dt><dd>{_text(value)}</dd>" for name, value in facts)
    extra = ""
    if len(files) > 1:
        links = " ".join(
            f'<a href="{_source(name)}">image {number}</a>' for number, name in enumerate(files[1:], start=2)
        )
        extra = f'<div class="more">{links}</div>'
    error = ""
    if record.get("error"):
        kind = record["error"].get("type")
        message = record["error"].get("message") or ""
        error = f'<p class="error">{_text(f"{kind}: {message}" if kind else message)}</p>'
    return (
        f'<figure class="row {_text(status)}" id="row-{_text(record["row"])}">{picture}'
        f'<figcaption><span class="status {_text(status)}">{_text(status.replace("_", " "))}</span>'
        f'<span class="prompt">{_text(prompt)}</span><dl class="facts">{rows}</dl>{extra}{error}'
        "</figcaption></figure>"
    )


def render_gallery(records: Sequence[Mapping[str, Any]], *, title: str) -> str:
    """The page for ``records`` (manifest records whose files are relative to where the page will be)."""
    tally = counts(records)
    credits = sum(record["credits"] or 0 for record in records)
    summary = [f"<b>{len(records)}</b> row{'s' if len(records) != 1 else ''}"]
    summary += [f"<b>{count}</b> {status.replace('_', ' ')}" for status, count in tally.items() if count]
    summary.append(f"<b>{credits}</b> credits reported")
    cards = "\n".join(_card(record) for record in records)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
        f"<title>{_text(title)}</title><style>{_STYLE}</style></head>\n"
        f'<body><header><h1>{_text(title)}</h1><p class="summary">{" · ".join(summary)}</p></header>\n'
        f"<main>\n{cards}\n</main>\n<script>{_SCRIPT}</script></body></html>\n"
    )


def write_gallery(path: Path, records: Sequence[Mapping[str, Any]], *, title: str) -> None:
    """Write the gallery at ``path`` (its images named relative to it), whole: a temporary file, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    page = render_gallery(relative_files(records, path.parent), title=title)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        temporary.write_text(page, encoding="utf-8", errors="backslashreplace")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
