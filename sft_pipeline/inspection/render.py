"""A :class:`~sft_pipeline.inspection.trace.RowTrace` as text: one line per stage, then the row as the model saw
it (tokenize's tokens decoded, supervised spans marked, end-of-turn markers shown) or, for a row that never
reached the token files, its messages. Every data string goes through the :class:`Painter` (made inert)."""

from __future__ import annotations

import re
from typing import Sequence

from sft_pipeline import constants
from sft_pipeline.inspection.paint import Painter
from sft_pipeline.inspection.run import Encoder
from sft_pipeline.inspection.trace import RowTrace, Tokenized
from sft_pipeline.tokenize.encode import RowProblem
from sft_pipeline.tokenize.token_files import DROP_DECONTAMINATED, DROP_NOT_SELECTED
from sft_pipeline.tokenize.verify import supervised_runs

LABEL_WIDTH = 9


def format_trace(trace: RowTrace, paint: Painter, encoder: Encoder | None = None) -> str:
    """The whole trace as text (lines end with a newline)."""
    p = paint
    head = p(trace.row_id, "head") if trace.row_id else \
        f"{p(trace.origins[0].ref() if trace.origins else trace.query, 'head')} (no id: rejected at ingest)"
    lines = [f"row {head}"]
    lines += _field(p, "from", ", ".join(_origin(p, o) for o in trace.origins)
                    + (f"; format {p(trace.format)}" if trace.format else ""))
    lines += _field(p, "ingest", _ingest(p, trace))
    if trace.row_id is not None:
        lines += _field(p, "score", *_scores(p, trace))
        lines += _field(p, "filter", *_filters(p, trace))
        lines += _field(p, "tokenize", *_tokenize(p, trace))
        lines += _field(p, "train", _train(p, trace))
    lines += [f"  {p('note', 'warn')}: {p(note)}" for note in trace.notes]
    lines += _field(p, "stages", _folders(p, trace))
    lines += ["", *_body(p, trace, encoder)]
    return "\n".join(lines) + "\n"


def _folders(p: Painter, trace: RowTrace) -> str:
    roots = {folder.parent.parent for folder in trace.dirs.values()}
    names = " ".join(f"{p(name)}/{p(folder.name)}" for name, folder in trace.dirs.items())
    return f"{names} under {p(roots.pop())}" if len(roots) == 1 else \
        " ".join(p(str(folder)) for folder in trace.dirs.values())


def _field(p: Painter, label: str, first: str, *more: str) -> list[str]:
    pad = " " * (LABEL_WIDTH + 3)
    return [f"  {p(label.ljust(LABEL_WIDTH), 'dim')} {first}", *(pad + line for line in more)]


def _origin(p: Painter, origin) -> str:
    line = f" (line {origin.line})" if origin.line is not None else ""
    return f"{p(origin.ref())}{line}"


def _ingest(p: Painter, trace: RowTrace) -> str:
    if trace.reject is not None:
        return f"{p('rejected', 'bad')}: {p(trace.reject.reason)}: {p(trace.reject.message)}"
    copies = f", {len(trace.origins)} identical copies" if len(trace.origins) > 1 else ""
    return f"{p('accepted', 'good')} ({len(trace.messages or [])} messages{copies})"


def _scores(p: Painter, trace: RowTrace) -> list[str]:
    if trace.scores is None:
        return [p("no score output in this run", "dim")]
    out = []
    for scored in trace.scores:
        fired = ", ".join(f"{p(name)} -{weight:g}" for name, weight in scored.fired) or "no signal fired"
        dup = "" if not scored.duplicate_of else " (a repeat of the copy above)" \
            if scored.duplicate_of == trace.row_id else f" (a near copy of {p(scored.duplicate_of)})"
        out.append(f"{scored.score:.2f}: {fired}{dup}")
    return out or [p("not in scores.parquet", "warn")]


def _filters(p: Painter, trace: RowTrace) -> list[str]:
    if trace.filtered is None:
        return [p("no filter output in this run", "dim")]
    method, cutoff = trace.weights_cutoff
    out = []
    for verdict in trace.filtered:
        score = verdict.score
        out.append(f"{p('kept', 'good')}" if verdict.kept else f"{p('dropped', 'bad')} by {p(verdict.dropped_by)}")
        if score is not None and isinstance(cutoff, (int, float)):
            sign = ">=" if score >= cutoff else "<"
            rule = "threshold" if method == "threshold" else f"{p(method)}'s lowest kept score"
            out[-1] += f" (score {score:.2f} {sign} {rule} {cutoff:g})"
    return out or [p("not in filtered.parquet nor dropped.parquet", "warn")]


def _tokenize(p: Painter, trace: RowTrace) -> list[str]:
    tok = trace.tokenized
    if tok is None:
        return [p("no tokenize output in this run", "dim")]
    if tok.split is not None:
        return [_placed(p, tok), *_shape(p, tok)]
    if tok.dropped is not None:
        return [_dropped(p, tok)]
    if trace.filtered is not None and not any(f.kept for f in trace.filtered):
        return [p("not tokenized (the filter dropped it)", "dim")]
    return [p("not in this tokenize output's files", "warn")]


def _placed(p: Painter, tok: Tokenized) -> str:
    if tok.split == "heldout":
        return f"{p('held out', 'warn')} (heldout.parquet: evaluated on, never trained on)"
    where = f"packed row {tok.packed[0]}, sequence {tok.packed[1] + 1}" if tok.packed else f"row {tok.train_row}"
    return f"{p('train', 'good')} (train.parquet {where})"


def _shape(p: Painter, tok: Tokenized) -> list[str]:
    """Kept whole or shortened (and how far), the stored token counts, and a stored/re-encoded mismatch."""
    ids, labels = tok.input_ids or [], tok.labels or []
    supervised = len(labels) - labels.count(constants.IGNORE_INDEX)
    enc = tok.encoded
    if enc is None or isinstance(enc, RowProblem):
        why = p(enc.message) if enc else "no tokenizer"
        return [f"{len(ids)} tokens, {supervised} supervised (not encoded again here: {why})"]
    out = [f"{_cut(enc)}, {supervised} supervised"]
    if enc.input_ids != ids or enc.labels != labels:
        out.append(p("the stored tokens differ from encoding the row again with the stage's tokenizer", "warn"))
    return out


def _cut(enc) -> str:
    """
    >>> from sft_pipeline.tokenize.masks import Encoded
    >>> _cut(Encoded([1] * 90, [1] * 90, 200, turns=3, turns_kept=2)), _cut(Encoded([1], [1], 1, 1, 1))
    ('shortened to whole turns: 2 of 3 assistant turns kept (90 of 200 tokens)', 'kept whole: 1 tokens')
    """
    if not enc.truncated:
        return f"kept whole: {len(enc.input_ids)} tokens"
    if enc.turns_kept is None:
        return f"cut at max_length ({len(enc.input_ids)} of {enc.full_length} tokens)"
    return (f"shortened to whole turns: {enc.turns_kept} of {enc.turns} assistant turns kept "
            f"({len(enc.input_ids)} of {enc.full_length} tokens)")


def _dropped(p: Painter, tok: Tokenized) -> str:
    split, reason = tok.dropped
    if reason == DROP_DECONTAMINATED:
        n = tok.config.get("decontaminate_ngram", "n")
        why = f"{p('decontaminated', 'bad')}: drawn for the held-out set, left out (it shares a {n}-word " \
              f"sequence with a train row)"
    elif reason == DROP_NOT_SELECTED:
        why = f"{p('dropped', 'bad')}: not in the tokenize.max_rows subset ({tok.config.get('max_rows')} rows)"
    else:
        why = f"{p('dropped', 'bad')} ({p(split)} side): {p(reason)}"
    whole = tok.whole
    if whole is not None and not isinstance(whole, RowProblem):
        why += f" ({whole.full_length} tokens whole, max_length {tok.config.get('max_length')})"
    return why


def _train(p: Painter, trace: RowTrace) -> str:
    tok = trace.tokenized
    if tok is None or tok.split != "train":
        return p("not trained on" + (" (held out)" if tok is not None and tok.split == "heldout" else ""), "dim")
    run = trace.train
    if run is None:
        return f"in the training set ({p('no train output in this run yet', 'dim')})"
    drawn = f"{run['steps']} steps of {run['effective_batch']} rows over {run['rows']} rows"
    if run["epochs"] is None:
        return f"{p('used', 'good')}: in the training set ({drawn})"
    if run["epochs"] >= 1:
        return f"{p('used', 'good')}: {drawn}, {run['epochs']:g} epochs: every row drawn at least once"
    return f"{p('in the training set', 'warn')}: {drawn}, {run['epochs']:g} epochs: it may not have been drawn"


def _body(p: Painter, trace: RowTrace, encoder: Encoder | None) -> list[str]:
    tok = trace.tokenized
    if tok is not None and tok.input_ids is not None and encoder is not None:
        title = f"as the model sees it ({tok.split} tokens)"
        return _tokens(p, encoder, tok.input_ids, tok.labels, title, _cut_line(tok, trace))
    if tok is not None and tok.whole is not None and not isinstance(tok.whole, RowProblem) and encoder is not None:
        title = "as tokenize encodes it whole (not in the token files)"
        return _tokens(p, encoder, tok.whole.input_ids, tok.whole.labels, title, None)
    if trace.messages is not None:
        out = [p("messages (as ingested):", "head")]
        for k, message in enumerate(trace.messages):
            out += [p(f"[{k}] {message['role']}:", "dim"), p(message["content"], lines=True)]
        return out
    if trace.reject is not None:
        return [p("the rejected record (as read, at most 500 characters):", "head"), p(trace.reject.raw, lines=True)]
    return []


def _cut_line(tok: Tokenized, trace: RowTrace) -> str | None:
    """Where a shortened row was cut: the messages left out."""
    enc = tok.encoded
    if enc is None or isinstance(enc, RowProblem) or not enc.truncated:
        return None
    left = enc.full_length - len(enc.input_ids)
    if enc.turns_kept is None:
        return f"✂ cut at max_length: {left} more tokens left out"
    answers = [k for k, m in enumerate(trace.messages or []) if m["role"] == constants.ROLE_ASSISTANT]
    after = answers[enc.turns_kept - 1] if 0 < enc.turns_kept <= len(answers) else None
    rest = f"messages {after + 1}-{len(trace.messages) - 1}" if after is not None else "the rest"
    return f"✂ cut after message {after}: {rest} ({left} tokens) left out"


def _tokens(p: Painter, encoder: Encoder, ids: Sequence[int], labels: Sequence[int], title: str,
            cut: str | None) -> list[str]:
    markers = sorted({m for m in (encoder.info.mid_marker, encoder.info.last_marker) if m}, key=len, reverse=True)
    shown = " or ".join(p(repr(m)) for m in markers) or "none"
    mark = "in colour" if p.colour else "between ⟦ and ⟧"
    out = [p(f"{title}:", "head"), p(f"supervised spans {mark}; end-of-turn marker ", "dim") + shown, ""]
    pieces, prev, supervised_text = [], 0, ""
    for a, b in [*supervised_runs(labels), (len(ids), len(ids))]:
        pieces.append(p.span(_split_markers(encoder.decode(ids[prev:a]), markers), False))
        text = encoder.decode(ids[a:b]) if b > a else ""
        supervised_text += text
        pieces.append(p.span(_split_markers(text, markers), True) if text else "")
        prev = b
    text = "".join(pieces)
    out += [text.removesuffix("\n")] + ([p(cut, "cut")] if cut else [])
    eots = sum(supervised_text.count(m) for m in markers)
    out += ["", f"{eots} end-of-turn marker(s) supervised"]
    return out


def _split_markers(text: str, markers: Sequence[str]) -> list[tuple[str, bool]]:
    """
    >>> _split_markers("a<e>b<e>", ["<e>"])
    [('a', False), ('<e>', True), ('b', False), ('<e>', True)]
    """
    if not markers:
        return [(text, False)]
    parts = re.split("(" + "|".join(map(re.escape, markers)) + ")", text)
    return [(part, part in markers) for part in parts if part]
