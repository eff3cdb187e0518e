"""Markdown report -> one self-contained HTML file (Python-Markdown, then sanitised with nh3).

The Markdown already escapes every data-derived string; the HTML body is sanitised as well
(defence in depth): only the tags and attributes the report uses survive, links must be
http(s), and images must be embedded PNG ``data:`` URIs.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

MARKDOWN_EXTENSIONS = ("tables", "fenced_code", "md_in_html")
TITLE = "SFT evaluation report"
PNG_DATA_PREFIX = "data:image/png;base64,"
LINK_SCHEMES = ("http://", "https://")
ALLOWED_TAGS = {"h1", "h2", "h3", "h4", "p", "br", "hr", "strong", "em", "code", "pre", "blockquote", "ul", "ol",
                "li", "table", "thead", "tbody", "tr", "th", "td", "div", "img", "a"}
ALLOWED_ATTRIBUTES = {"div": {"class"}, "img": {"src", "alt", "title"}, "a": {"href", "title"},
                      "code": {"class"}, "th": {"align"}, "td": {"align"}}
# Data can hold a string of thousands of characters without a space: everything wraps anywhere (inherited,
# and counted in a table's minimum widths), tables stay within the page, grid columns may shrink below
# their content.
CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; overflow-wrap: anywhere; word-break: break-word; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; }
pre { background: #f7f7f7; padding: 0.6em; white-space: pre-wrap; font-size: 0.88em; max-width: 100%; }
blockquote { border-left: 4px solid #ddd; margin: 0.5em 0; padding: 0 1em; color: #444; }
.pair { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 1em; }
"""


def data_uri(path: Path) -> str:
    """A ``data:`` URI holding a PNG file's bytes."""
    return PNG_DATA_PREFIX + base64.b64encode(path.read_bytes()).decode("ascii")


def allowed_url(element: str, attribute: str, value: str) -> str | None:
    """nh3 attribute filter: links only to http(s), images only embedded PNGs; other attributes kept.

    >>> allowed_url("a", "href", "javascript:alert(1)"), allowed_url("a", "href", "https://x.org")
    (None, 'https://x.org')
    >>> allowed_url("img", "src", "data:image/png;base64,AAAA"), allowed_url("img", "src", "x.png")
    ('data:image/png;base64,AAAA', None)
    """
    if element == "a" and attribute == "href":
        return value if value.lower().startswith(LINK_SCHEMES) else None
    if element == "img" and attribute == "src":
        return value if value.startswith(PNG_DATA_PREFIX) else None
    return value


def sanitize(body: str) -> str:
    """The HTML body with everything outside the report's own vocabulary removed.

    >>> sanitize('<p onclick="x()">a<script>b()</script><a href="javascript:c()">d</a></p>')
    '<p>a<a rel="noopener noreferrer">d</a></p>'
    """
    import nh3

    return nh3.clean(body, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes={"http", "https", "data"},
                     attribute_filter=allowed_url, link_rel="noopener noreferrer")


def markdown_to_html(text: str) -> str:
    """A complete, sanitised HTML page for the Markdown report."""
    import markdown

    body = markdown.markdown(text, extensions=list(MARKDOWN_EXTENSIONS))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(TITLE)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n{sanitize(body)}\n</body>\n</html>\n"
    )
