"""Escaping (#17): data-derived strings never become HTML, script or a non-http(s) link; fences hold."""

import re

import markdown
import pytest

from sft_pipeline import constants
from sft_pipeline.escape import code, fence, md_text
from sft_pipeline.report.html import markdown_to_html
from sft_pipeline.report.answers import examples_section

SCRIPT = "<script>alert(1)</script>"
IMG = '<img src=x onerror="alert(2)">'
JS_LINK = "[click me](javascript:alert(3))"
JS_AUTOLINK = "<javascript:alert(4)>"
BREAKOUT = "````\n</div>\n" + SCRIPT + "\n````"


def hostile_generation() -> dict:
    reply = {"new_tokens": 5, "stopped": True}
    return {"id": SCRIPT, "category": IMG, "prompt": f"Say hi. {JS_LINK} {JS_AUTOLINK}\n# {SCRIPT}",
            "base": {**reply, "text": f"{JS_LINK} and {JS_AUTOLINK} and [ok](https://example.org)"},
            "tuned": {**reply, "text": BREAKOUT}}


def body_of(html: str) -> str:
    return html.split("<body>", 1)[1]


def assert_inert(html: str) -> None:
    body = body_of(html)
    assert "<script" not in body.lower()
    for img in re.findall(r"<img[^>]*>", body):  # only embedded PNGs, no handlers
        assert re.fullmatch(r'<img( alt="[^"]*")?( src="data:image/png;base64,[^"]+")?>', img), img
    assert not re.search(r"<[^>]+\son\w+=", body)
    hrefs = re.findall(r'href="([^"]*)"', body)
    assert all(h.startswith(("http://", "https://")) for h in hrefs), hrefs


def test_report_html_escapes_question_ids_prompts_and_answers():
    md = examples_section({"generations": [hostile_generation()]})
    html = markdown_to_html(md)
    assert_inert(html)
    body = body_of(html)
    # The data is still shown, as text.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "javascript:alert(3)" in body and 'href="javascript' not in body
    # The fenced answer stays inside its code block: exactly two <pre> blocks, the pair grid intact.
    assert body.count("<pre>") == 2 and '<div class="pair">' in body


def test_markdown_itself_is_inert_for_any_renderer():
    """report.md is also rendered by Prefect's UI: the Markdown must carry no raw HTML or link from data."""
    md = examples_section({"generations": [hostile_generation()]})
    outside_fences = re.sub(r"(`{3,})text\n.*?\n\1", "", md, flags=re.S)
    assert SCRIPT not in outside_fences and IMG not in outside_fences
    assert not re.search(r"(?<!\\)\]\(javascript:", outside_fences) and JS_AUTOLINK not in outside_fences
    # Python-Markdown without our sanitiser: still no live element from data.
    raw = markdown.markdown(md, extensions=["tables", "fenced_code", "md_in_html"])
    assert "<script" not in raw and 'href="javascript' not in raw and "<img" not in raw


def test_sanitiser_drops_what_markdown_would_let_through():
    html = markdown_to_html('<a href="javascript:alert(1)">x</a> <img src="x.png" onerror="y()"> '
                            "[ok](https://example.org) [bad](javascript:alert(2)) <iframe src=z></iframe>")
    assert_inert(html)
    assert 'href="https://example.org"' in html and "<iframe" not in html and "onerror" not in html


@pytest.mark.parametrize("text", ["plain", "a ``` b", "````\n````` x", "`", "ends with `"])
def test_fence_and_code_span_hold_any_backtick_run(text):
    block = markdown.markdown(fence(text), extensions=["fenced_code"])
    assert block.count("<pre>") == 1 and block.endswith("</code></pre>")
    span = markdown.markdown(code(text.replace("\n", " ")))
    assert span.count("<code>") == 1


def test_md_text_renders_back_to_the_same_text():
    text = "1. *not* a list [x](y) | <b> #tag\n# no heading\n- no bullet"
    rendered = markdown.markdown(md_text(text))
    assert "<em>" not in rendered and "<a" not in rendered and "<h1>" not in rendered and "<li>" not in rendered
    assert "&lt;b&gt;" in rendered and "[x](y)" in rendered


def test_mask_preview_fence_is_longer_than_any_backtick_run(tiny_tokenizer):
    from sft_pipeline.tokenize.preview import mask_preview

    hostile = "\n````\n" + SCRIPT + "\n````\n"  # the fixed fence was four backticks
    ids = tiny_tokenizer(f"user says {hostile}", add_special_tokens=False)["input_ids"]
    labels = [constants.IGNORE_INDEX] * 3 + ids[3:]
    preview = mask_preview([("row`1", ids, labels)], tiny_tokenizer, ("<|im_end|>", "<|im_end|>"))
    rendered = markdown.markdown(preview, extensions=["tables", "fenced_code"])
    assert "<script" not in rendered  # the conversation stayed inside its code block
    assert rendered.count("<pre>") == 1 and "&lt;script&gt;" in rendered
    assert "<h2><code>row`1</code></h2>" in rendered
