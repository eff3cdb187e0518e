"""Learn what a chat template writes around assistant turns, from a few probe renders.

No per-template tables: the end-of-turn marker is read off the rendered text of a
probe conversation (the text that follows an assistant message, up to the next
turn's header), so the same code serves ChatML, Llama 3, Gemma, Phi-3, GPT-OSS,
DeepSeek, Cohere and any new template. Results are cached per template text and
special tokens.

A template that writes nothing after the final assistant turn (e.g. TRL's ``glm4moe``)
would never teach the model to stop; for it we append, after a final assistant turn,
the marker the template writes after earlier assistant turns (``TemplateInfo.appended``),
so the model's own stop token is supervised there too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sft_pipeline.constants import ROLE_ASSISTANT, ROLE_SYSTEM, ROLE_USER
from sft_pipeline.errors import ConfigError

PROBE_SYSTEM = "Probe system note kappa."
PROBE_USERS = ("Probe question alpha?", "Probe question beta?")
PROBE_ANSWERS = ("Probe answer gamma.", "Probe answer delta.")
MIN_HEADER_MATCH = 2  # characters a next-turn header must share with the assistant header


@dataclass(frozen=True)
class TemplateInfo:
    """End-of-turn markers of one chat template and how its BOS is handled."""

    mid_marker: str  # closes an assistant turn that more messages follow
    last_marker: str  # closes the conversation's final assistant turn
    bos_id: int | None  # BOS id to prepend to the token ids (the template does not write it), else None
    appended: str = ""  # written by us after a final assistant turn (the template writes nothing there)

    def finish(self, text: str, messages) -> str:
        """The rendered ``text`` of ``messages`` with ``appended`` after a final assistant turn.

        >>> info = TemplateInfo(mid_marker="<|user|>", last_marker="<|user|>", bos_id=None, appended="<|user|>")
        >>> info.finish("<|assistant|>\\nHi\\n", [{"role": "assistant", "content": "Hi"}])
        '<|assistant|>\\nHi<|user|>'
        """
        if not self.appended or not messages or messages[-1]["role"] != ROLE_ASSISTANT:
            return text
        return text.rstrip() + self.appended

    def markers(self, is_last: bool) -> tuple[str, ...]:
        """Markers to try after an assistant turn, the likelier first."""
        first, second = (self.last_marker, self.mid_marker) if is_last else (self.mid_marker, self.last_marker)
        return (first,) if first == second else (first, second)


def common_prefix(a: str, b: str) -> str:
    """
    >>> common_prefix("<|end|><|start|>user", "<|end|><|start|>assistant")
    '<|end|><|start|>'
    """
    return os.path.commonprefix([a, b])


def common_suffix(a: str, b: str) -> str:
    """
    >>> common_suffix("<|end|>\\n<|user|>\\n", "<|user|>\\n")
    '<|user|>\\n'
    """
    return common_prefix(a[::-1], b[::-1])[::-1]


def header_start(between: str, header: str) -> int:
    """Where the next turn's header begins in ``between``: the position (after 0) whose text
    shares the longest prefix with the assistant header; 0 when none shares MIN_HEADER_MATCH.

    >>> header_start("<|end|><|start|>user<|message|>", "<|start|>assistant")
    7
    >>> header_start("<|user|>\\n", "<|assistant|>")
    0
    """
    best, best_len = 0, MIN_HEADER_MATCH - 1
    for k in range(1, len(between)):
        n = len(common_prefix(between[k:], header))
        if n > best_len:
            best, best_len = k, n
    return best


def turn_end(between: str, last_marker: str, user_prefix: str, gen_prompt: str) -> str:
    """The marker that closes a non-final assistant turn.

    ``between`` is the text from the end of the assistant content to the next user
    content: marker + next header. The marker is the final-turn marker when that
    fits; else ``between`` minus the user header (learnt from the first user turn,
    or found by likeness to the assistant header), trailing whitespace excluded.

    >>> turn_end("<|im_end|>\\n<|im_start|>user\\n", "<|im_end|>", "<|im_start|>user\\n", "<|im_start|>assistant\\n")
    '<|im_end|>'
    >>> turn_end("<|end|>\\n<|user|>\\n", "<|end|>\\n</s>", "<|user|>\\n", "assistant|>\\n")
    '<|end|>'
    >>> turn_end("<|end|><|start|>user<|message|>", "<|return|>", "x<|end|><|start|>user<|message|>",
    ...          "<|start|>assistant")
    '<|end|>'
    """
    if last_marker and between.startswith(last_marker):
        return last_marker
    header = common_suffix(between, user_prefix)
    if 0 < len(header) < len(between):
        return between[: len(between) - len(header)].rstrip()
    k = header_start(between, gen_prompt)
    if k:
        return between[:k].rstrip()
    parts = between.split(maxsplit=1)
    return parts[0] if parts else ""


def render(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def probe_messages(with_system: bool) -> list[dict]:
    msgs = [{"role": ROLE_SYSTEM, "content": PROBE_SYSTEM}] if with_system else []
    for user, answer in zip(PROBE_USERS, PROBE_ANSWERS):
        msgs += [{"role": ROLE_USER, "content": user}, {"role": ROLE_ASSISTANT, "content": answer}]
    return msgs


def _render_probe(tokenizer, name: str) -> str:
    try:
        return render(tokenizer, probe_messages(with_system=True))
    except Exception:  # noqa: BLE001 - templates raise anything (e.g. "System role not supported")
        pass
    try:
        return render(tokenizer, probe_messages(with_system=False))
    except Exception as exc:  # noqa: BLE001
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"chat template of {name}: cannot render a user/assistant conversation: {reason}") from None


def _find(text: str, needle: str, start: int, name: str) -> int:
    pos = text.find(needle, start)
    if pos < 0:
        raise ConfigError(f"chat template of {name}: message content {needle!r} does not appear in its rendering "
                          "(a template for list-of-parts content, e.g. a vision template?)")
    return pos


def _gen_prompt(tokenizer, user_msg: list[dict]) -> str:
    """Text the template adds for ``add_generation_prompt`` (the assistant header)."""
    try:
        with_gen = render(tokenizer, user_msg, add_generation_prompt=True)
        without = render(tokenizer, user_msg)
    except Exception:  # noqa: BLE001 - some templates refuse a conversation ending with a user turn
        return ""
    return with_gen[len(common_prefix(with_gen, without)):]


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether plain tokenization (``add_special_tokens=True``) starts with the BOS token."""
    if tokenizer.bos_token_id is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(with_special) > len(plain) and with_special[0] == tokenizer.bos_token_id


_CACHE: dict[tuple, TemplateInfo] = {}


def learn_template(tokenizer) -> TemplateInfo:
    """Probe ``tokenizer``'s chat template once (cached by template text and special tokens)."""
    adds_bos = tokenizer_adds_bos(tokenizer)
    key = (tokenizer.chat_template, repr(sorted(tokenizer.special_tokens_map.items())), tokenizer.bos_token_id,
           adds_bos)
    if key not in _CACHE:
        _CACHE[key] = _probe(tokenizer, adds_bos)
    return _CACHE[key]


def _check_markers(name: str, *markers: str) -> None:
    """ConfigError when what follows an assistant turn holds message content (a template repeating an answer).

    >>> _check_markers("t", "<|im_end|>", "<|im_end|>")
    >>> _check_markers("t", "<|im_end|>", "Probe answer delta.<|im_end|>")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sft_pipeline.errors.ConfigError: chat template of t: writes message content again after an assistant turn ...
    """
    for marker in markers:
        if any(probe in marker for probe in (PROBE_SYSTEM, *PROBE_USERS, *PROBE_ANSWERS)):
            raise ConfigError(f"chat template of {name}: writes message content again after an assistant turn "
                              f"({marker!r} follows it); a template that repeats or rewrites content is not supported")


def _probe(tokenizer, adds_bos: bool) -> TemplateInfo:
    name = getattr(tokenizer, "name_or_path", "") or "tokenizer"
    if not tokenizer.chat_template:
        raise ConfigError(f"{name}: tokenizer has no chat template; set model.chat_template")
    text = _render_probe(tokenizer, name)
    u1 = _find(text, PROBE_USERS[0], 0, name)
    a1 = _find(text, PROBE_ANSWERS[0], u1 + len(PROBE_USERS[0]), name) + len(PROBE_ANSWERS[0])
    u2 = _find(text, PROBE_USERS[1], a1, name)
    a2 = _find(text, PROBE_ANSWERS[1], u2 + len(PROBE_USERS[1]), name) + len(PROBE_ANSWERS[1])
    last_marker = text[a2:].rstrip()
    user_only = [{"role": ROLE_USER, "content": PROBE_USERS[0]}]
    try:
        plain = render(tokenizer, user_only + [{"role": ROLE_ASSISTANT, "content": PROBE_ANSWERS[0]}])
        user_prefix = plain[: plain.index(PROBE_USERS[0])]
    except Exception:  # noqa: BLE001 - the header is then found by likeness to the assistant header
        user_prefix = ""
    mid_marker = turn_end(text[a1:u2], last_marker, user_prefix, _gen_prompt(tokenizer, user_only))
    if not mid_marker:
        raise ConfigError(f"chat template of {name}: no end-of-turn marker after non-final assistant turns")
    _check_markers(name, mid_marker, last_marker)
    # Nothing after the final turn: the marker it writes after earlier turns is appended there by us.
    appended = "" if last_marker else mid_marker
    # The tokenizer's BOS is prepended unless the template already writes it.
    writes_bos = tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token)
    bos_id = tokenizer.bos_token_id if adds_bos and not writes_bos else None
    return TemplateInfo(mid_marker=mid_marker, last_marker=last_marker or appended, bos_id=bos_id, appended=appended)
