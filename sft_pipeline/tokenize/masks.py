"""Assistant-only label masks: render once, tokenize once, map character spans to tokens.

Each conversation is rendered with the tokenizer's own chat template and tokenized as
one string, so the ids are exactly what the tokenizer gives for the whole rendered
conversation. Each assistant turn's content is located in the rendered text
(searching forward, and requiring the template's end-of-turn marker right after it),
its character span is extended over that marker, and the fast tokenizer's offsets turn
character spans into token spans. Every assistant turn is supervised, earlier ones
included, unless ``train_on="last_assistant"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from sft_pipeline.constants import IGNORE_INDEX, ROLE_ASSISTANT
from sft_pipeline.tokenize.template import TemplateInfo, learn_template

TRAIN_ALL = "all_assistant"
TRAIN_LAST = "last_assistant"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
Span = tuple[int, int]


class SpanError(ValueError):
    """An assistant turn could not be located in the rendered conversation."""


@dataclass
class Encoded:
    """One encoded conversation; ``full_length`` is the length before truncation."""

    input_ids: list[int]
    labels: list[int]
    full_length: int

    @property
    def truncated(self) -> bool:
        return len(self.input_ids) < self.full_length

    @property
    def supervised(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)


def content_candidates(content: str) -> list[tuple[str, bool]]:
    """Forms in which a template may render ``content``; the flag marks a reasoning-stripped answer.

    >>> content_candidates(" Hi ")
    [(' Hi ', False), ('Hi', False)]
    >>> content_candidates("<think>r</think>\\n\\nAnswer")
    [('<think>r</think>\\n\\nAnswer', False), ('Answer', True)]
    """
    out = [(content, False)]
    if content.strip() != content:
        out.append((content.strip(), False))
    if THINK_CLOSE in content:
        answer = content.rsplit(THINK_CLOSE, 1)[1].strip()
        if answer:
            out.append((answer, True))
    return out


def _find_message(text: str, content: str, cursor: int) -> int:
    """End of a non-assistant message's content in ``text`` (or ``cursor`` when the template altered it)."""
    for cand, _ in content_candidates(content):
        if cand:
            pos = text.find(cand, cursor)
            if pos >= 0:
                return pos + len(cand)
    return cursor


def assistant_span(text: str, content: str, cursor: int, markers: Sequence[str]) -> Span:
    """Character span of one assistant turn: its content plus the end-of-turn marker after it.

    >>> t = "<|im_start|>user\\nSay hi<|im_end|>\\n<|im_start|>assistant\\nhi<|im_end|>\\n"
    >>> s = assistant_span(t, "hi", t.index("Say hi") + 6, ["<|im_end|>"]); t[s[0]:s[1]]
    'hi<|im_end|>'
    """
    if not content.strip():
        raise SpanError("empty assistant content")
    for cand, answer_only in content_candidates(content):
        pos = text.find(cand, cursor)
        while pos >= 0:
            end = pos + len(cand)
            for marker in markers:
                if text.startswith(marker, end):
                    think = text.rfind(THINK_OPEN, cursor, pos) if answer_only else -1
                    return (think if think >= 0 else pos), end + len(marker)
            pos = text.find(cand, pos + 1)
    raise SpanError(f"assistant content {content[:40]!r} followed by an end-of-turn marker {markers[0]!r} "
                    "not found in the rendered conversation")


def locate_spans(text: str, messages: Sequence[dict], info: TemplateInfo, train_on: str = TRAIN_ALL) -> list[Span]:
    """Character spans to supervise in ``text``, the rendering of ``messages``."""
    last_assistant = max((i for i, m in enumerate(messages) if m["role"] == ROLE_ASSISTANT), default=-1)
    if last_assistant < 0:
        raise SpanError("no assistant turn")
    spans, cursor = [], 0
    for i, msg in enumerate(messages):
        if msg["role"] != ROLE_ASSISTANT:
            cursor = _find_message(text, msg["content"], cursor)
            continue
        start, cursor = assistant_span(text, msg["content"], cursor, info.markers(i == len(messages) - 1))
        if train_on == TRAIN_ALL or i == last_assistant:
            spans.append((start, cursor))
    return spans


def _first_token(encoding, start: int, stop: int, step: int) -> int | None:
    for char in range(start, stop, step):
        token = encoding.char_to_token(char)
        if token is not None:
            return token
    return None


def token_labels(ids: list[int], encoding, spans: Sequence[Span]) -> list[int]:
    """Labels: the token id on every token overlapping a span, IGNORE_INDEX elsewhere."""
    labels = [IGNORE_INDEX] * len(ids)
    for a, b in spans:
        first, last = _first_token(encoding, a, b, 1), _first_token(encoding, b - 1, a - 1, -1)
        if first is not None and last is not None:
            labels[first : last + 1] = ids[first : last + 1]
    return labels


def render_batch(tokenizer, conversations: Sequence[Sequence[dict]]) -> list[str]:
    return tokenizer.apply_chat_template(list(conversations), tokenize=False)


def encode_rendered(
    texts: Sequence[str], spans: Sequence[Sequence[Span]], tokenizer, info: TemplateInfo, max_length: int | None
) -> list[Encoded]:
    """Tokenize many rendered conversations in one call and build their labels."""
    batch = tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False)
    out = []
    for ids, encoding, row_spans in zip(batch["input_ids"], batch.encodings, spans):
        labels = token_labels(ids, encoding, row_spans)
        if info.bos_id is not None:
            ids, labels = [info.bos_id, *ids], [IGNORE_INDEX, *labels]
        full = len(ids)
        if max_length is not None and full > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
        out.append(Encoded(ids, labels, full))
    return out


def encode_conversation(
    messages: Sequence[dict], tokenizer, *, max_length: int | None = None, train_on: str = TRAIN_ALL
) -> dict:
    """Token ids and labels of one conversation (labels: IGNORE_INDEX outside assistant turns).

    Supervised: every token of each assistant turn's content and the end-of-turn token(s)
    that close it; role headers, prompts and generation prompts are not. With
    ``train_on="last_assistant"`` only the final assistant turn is supervised.
    ``max_length`` keeps the first ``max_length`` tokens.
    """
    info = learn_template(tokenizer)
    text = render_batch(tokenizer, [messages])[0]
    enc = encode_rendered([text], [locate_spans(text, messages, info, train_on)], tokenizer, info, max_length)[0]
    return {"input_ids": enc.input_ids, "labels": enc.labels}
