"""Markdown report -> one self-contained HTML file (Python-Markdown; PNGs inlined as base64)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

MARKDOWN_EXTENSIONS = ("tables", "fenced_code", "md_in_html")
_IMG_SRC = re.compile(r'(<img[^>]*\bsrc=")([^"]+\.png)(")')
TITLE = "SFT evaluation report"
CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; }
pre { background: #f7f7f7; padding: 0.6em; white-space: pre-wrap; word-wrap: break-word; font-size: 0.88em; }
blockquote { border-left: 4px solid #ddd; margin: 0.5em 0; padding: 0 1em; color: #444; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
"""


def data_uri(path: Path) -> str:
    """A ``data:`` URI holding a PNG file's bytes."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def inline_images(body: str, base_dir: Path) -> str:
    """Replace ``src="x.png"`` (files in ``base_dir``) by data URIs; leave others as they are."""

    def swap(match: re.Match) -> str:
        path = base_dir / match.group(2)
        src = data_uri(path) if path.is_file() else match.group(2)
        return match.group(1) + src + match.group(3)

    return _IMG_SRC.sub(swap, body)


def markdown_to_html(text: str, base_dir: Path) -> str:
    """A complete HTML page for the Markdown report; raw HTML inside ``text`` is kept."""
    import markdown

    body = markdown.markdown(text, extensions=list(MARKDOWN_EXTENSIONS))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(TITLE)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n{inline_images(body, base_dir)}\n</body>\n</html>\n"
    )
