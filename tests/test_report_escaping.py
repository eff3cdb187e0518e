"""Escaping (#17, #25): data-derived and config strings never become HTML, script, a non-http(s) link or a terminal
control sequence; fences hold; long strings wrap."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

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


REPO = Path(__file__).resolve().parents[1]
TITLE_AND_COLOUR = "x\x1b]0;PWNED\x07\x1b[31mred\x9b2J\u202e"  # OSC window title, SGR colour, C1 CSI, bidi override


def test_the_cli_prints_file_names_with_their_control_sequences_escaped(tmp_path):
    # `ingest` printed a source's name raw: the name set the terminal's window title and colours.
    good = tmp_path / f"{TITLE_AND_COLOUR}.jsonl"
    good.write_text('{"instruction": "q", "output": "a"}\n')
    zipped = tmp_path / f"zip{TITLE_AND_COLOUR}.jsonl"  # its warning line names it too
    zipped.write_bytes(b"PK\x03\x04garbage")
    missing = tmp_path / f"gone{TITLE_AND_COLOUR}.jsonl"  # an error line
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [subprocess.run([sys.executable, "-m", "flows.cli", "ingest", *map(str, files), "--out",
                            str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, timeout=300)
            for files in ([good, zipped], [missing])]
    assert [run.returncode for run in runs] == [0, 2], runs[1].stderr
    for run in runs:
        printed = (run.stdout + run.stderr).decode()
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", printed), printed
    assert "x\\x1b]0;PWNED\\x07\\x1b[31mred\\x9b2J\\u202e.jsonl: 1 read, 1 accepted" in runs[0].stdout.decode()
    assert "zipx\\x1b]0;PWNED" in runs[0].stderr.decode()
    assert runs[1].stderr.decode().startswith("error: ") and "gonex\\x1b]0;PWNED" in runs[1].stderr.decode()


def test_the_run_summary_artifact_escapes_config_values():
    # An output_dir with a backtick closed the code span and left raw <img onerror> in the artifact; a | split the
    # table.
    from flows.publish import summary_markdown
    from sft_pipeline.stages import StageResult

    hostile = f"/runs/a`b {IMG} c|d"
    results = {"ingest": StageResult(stage="ingest", key="0" * 64, out_dir=hostile, counts={"rows": 3}),
               "filter": StageResult(stage="filter", key="1" * 64, out_dir="/runs/f", url=f"s3://b/`{SCRIPT}`",
                                     details={"method": "threshold|x"})}
    html = markdown.markdown(summary_markdown(results), extensions=["tables"])
    assert "<img" not in html and "<script" not in html and not re.search(r"<[^>]+\son\w+=", html)
    rows = re.findall(r"<tr>(.*?)</tr>", html, flags=re.S)
    assert [len(re.findall(r"<t[hd]>", row)) for row in rows] == [4, 4, 4]
    assert '<td>/runs/a`b &lt;img src=x onerror="alert(2)"&gt; c|d</td>' in html, "shown as the text it is"


def test_long_unbroken_strings_wrap_in_the_report_page():
    # A 6,000-character string without a space overflowed the layout: only <pre> wrapped.
    long = "x" * 6000
    page = markdown_to_html(f"| a | b |\n|---|---|\n| {long} | y |\n\n{long}\n\n- {long}\n\n`{long}`")
    css = page.split("<style>", 1)[1].split("</style>", 1)[0]
    rules = {sel.strip(): body for sels, body in re.findall(r"([^{}]+)\{([^}]*)\}", css) for sel in sels.split(",")}
    assert "overflow-wrap: anywhere" in rules["body"], "inherited by every cell, paragraph, list item and code span"
    assert set(re.findall(r"overflow-wrap:\s*([\w-]+)", css)) == {"anywhere"}, "nothing switches it off"
    assert set(re.findall(r"white-space:\s*([\w-]+)", css)) <= {"normal", "pre-wrap"}
    assert "max-width: 100%" in rules["table"] and "minmax(0, 1fr)" in rules[".pair"]
    assert page.count(long) == 4


def test_a_run_prints_and_logs_config_values_and_file_names_escaped(tmp_path):
    # The stage lines Prefect logs and the result lines name run.output_dir and the sources as they are.
    source = tmp_path / f"{TITLE_AND_COLOUR}.jsonl"
    source.write_text('{"instruction": "q", "output": "a"}\n')
    config = tmp_path / "hostile.yaml"
    config.write_text(json.dumps({"run": {"output_dir": str(tmp_path / f"out{TITLE_AND_COLOUR}")},
                                  "model": {"name_or_path": "testing:tiny"},
                                  "ingest": {"sources": [{"path": str(source)}]}}))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect")}
    run = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--until", "ingest"],
                         cwd=REPO, env=env, capture_output=True, timeout=600)
    printed = (run.stdout + run.stderr).decode()
    assert run.returncode == 0, printed[-3000:]
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", printed), printed
    assert printed.count("outx\\x1b]0;PWNED\\x07") >= 2, printed[-3000:]  # Prefect's log line and the result line
