"""Deterministic held-out split, train subset (or weighted mix of sources) by id hash, and n-gram decontamination."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

from sft_pipeline.constants import ROLE_SYSTEM
from sft_pipeline.tokenize.mixing import Mix, SourceDraw, asked_rows, source_draws

if TYPE_CHECKING:
    from sft_pipeline.config import TokenizeConfig

HASH_BYTES = 8
HASH_SCALE = float(1 << (8 * HASH_BYTES))
SALT_HELDOUT = "heldout"
SALT_SUBSET = "subset"
WORD_RE = re.compile(r"\w+")


def unit_hash(row_id: str, seed: int, salt: str) -> float:
    """A reproducible number in [0, 1) for a row id (independent of row order and process).

    >>> unit_hash("a", 42, "heldout") == unit_hash("a", 42, "heldout")
    True
    >>> 0 <= unit_hash("a", 42, "heldout") < 1
    True
    """
    digest = hashlib.blake2b(f"{salt}\0{seed}\0{row_id}".encode(), digest_size=HASH_BYTES).digest()
    return int.from_bytes(digest, "big") / HASH_SCALE


def smallest(indices: Iterable[int], keys, count: int) -> set[int]:
    """The ``count`` indices with the smallest ``keys[index]`` (ties by index).

    >>> sorted(smallest([0, 1, 2, 3], [0.4, 0.1, 0.3, 0.2], 2))
    [1, 3]
    """
    return set(sorted(indices, key=lambda i: (keys[i], i))[:count])


@dataclass
class Split:
    """Row indices (in input order) of each part; ``decontaminated`` and ``not_selected`` are left out."""

    train: list[int]
    heldout: list[int]
    decontaminated: list[int] = field(default_factory=list)
    not_selected: list[int] = field(default_factory=list)
    draws: list[SourceDraw] | None = None  # per source, when the train rows are a weighted mix


def split_rows(ids: Sequence[str], *, seed: int, heldout_fraction: float, max_heldout: int | None,
               max_rows: int | None, mix: Mix | None = None) -> Split:
    """Held-out rows: hash < fraction, capped at ``max_heldout`` (the rest stay in train; rows sharing
    an id, i.e. exact duplicates, always fall on the same side);
    then at most ``max_rows`` train rows, chosen by a second hash (with ``mix``: each source's share of them).

    >>> s = split_rows([str(i) for i in range(100)], seed=1, heldout_fraction=0.2, max_heldout=5, max_rows=50)
    >>> len(s.heldout), len(s.train), len(s.not_selected)
    (5, 50, 45)
    """
    held_keys = [unit_hash(i, seed, SALT_HELDOUT) for i in ids]
    candidates = [i for i, key in enumerate(held_keys) if key < heldout_fraction]
    limit = len(candidates) if max_heldout is None else max_heldout
    heldout = smallest(candidates, held_keys, limit)
    train = [i for i in range(len(ids)) if i not in heldout]
    draws = None
    if mix is not None:
        keep, draws = mixed(train, ids, mix, max_rows, seed)
    elif max_rows is not None and len(train) > max_rows:
        keep = smallest(train, {i: unit_hash(ids[i], seed, SALT_SUBSET) for i in train}, max_rows)
    else:
        keep = set(train)
    return Split(train=[i for i in train if i in keep], heldout=sorted(heldout),
                 not_selected=[i for i in train if i not in keep], draws=draws)


def mixed(train: Sequence[int], ids: Sequence[str], mix: Mix, total: int | None,
          seed: int) -> tuple[set[int], list[SourceDraw]]:
    """The train rows a weighted mix selects (``sft_pipeline.tokenize.mixing``): each source's quota of ``total``,
    its rows of smallest id hash; and each source's draw.

    >>> keep, draws = mixed(range(6), "abcdef", Mix((1.0, 1.0), [0, 0, 0, 0, 1, 1]), None, seed=0)
    >>> len(keep), [(d.rows_asked, d.rows_selected) for d in draws]
    (4, [(2, 2), (2, 2)])
    >>> keep, draws = mixed(range(6), "abcdef", Mix((1.0, 1.0), [0, 0, 0, 0, 1, 1]), 6, seed=0)
    >>> len(keep), [(d.rows_asked, d.rows_selected, d.rows_short) for d in draws]
    (5, [(3, 3, 0), (3, 2, 1)])
    """
    by_source: list[list[int]] = [[] for _ in mix.weights]
    for i in train:
        by_source[mix.sources[i]].append(i)
    available = [len(rows) for rows in by_source]
    asked = asked_rows(mix.weights, available, total)
    keys = {i: unit_hash(ids[i], seed, SALT_SUBSET) for i in train}
    picked = [smallest(rows, keys, n) for rows, n in zip(by_source, asked)]
    return set().union(*picked), source_draws(mix.weights, available, asked, [len(p) for p in picked])


def split_by_id(ids: Sequence[str], cfg: TokenizeConfig, seed: int, mix: Mix | None = None) -> Split:
    """The held-out / train split of these rows under ``cfg``'s rules (the same rules for every branch of a sweep)."""
    return split_rows(ids, seed=seed, heldout_fraction=cfg.heldout_fraction, max_heldout=cfg.max_heldout_rows,
                      max_rows=cfg.max_rows, mix=mix)


def message_words(messages: Sequence[dict]) -> list[list[str]]:
    """Lower-cased words of each user/assistant message (system prompts are shared boilerplate).

    >>> message_words([{"role": "system", "content": "Be nice"}, {"role": "user", "content": "Hi, Bob!"}])
    [['hi', 'bob']]
    """
    return [WORD_RE.findall(m["content"].lower()) for m in messages if m["role"] != ROLE_SYSTEM]


def ngrams(words: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    """
    >>> list(ngrams(["a", "b", "c"], 2))
    [('a', 'b'), ('b', 'c')]
    """
    return zip(*(words[k:] for k in range(n)))


def contaminated(heldout: Sequence[Sequence[dict]], train: Iterable[Sequence[dict]], n: int) -> set[int]:
    """Positions in ``heldout`` that share a word n-gram with any ``train`` conversation.

    Held-out n-grams are few, so they go in a dict; each train message's n-grams are
    built by ``zip`` and intersected with it, both in C.

    >>> h = [[{"role": "user", "content": "the quick brown fox"}], [{"role": "user", "content": "other words"}]]
    >>> contaminated(h, [[{"role": "assistant", "content": "A quick brown fox!"}]], 3)
    {0}
    """
    owners: dict[tuple[str, ...], set[int]] = {}
    for pos, messages in enumerate(heldout):
        for words in message_words(messages):
            for gram in ngrams(words, n):
                owners.setdefault(gram, set()).add(pos)
    hit: set[int] = set()
    for messages in train:
        for words in message_words(messages):
            for gram in owners.keys() & ngrams(words, n):  # built and looked up in C
                hit |= owners[gram]
        if len(hit) == len(heldout):
            break
    return hit


def decontaminate(split: Split, conversations: Sequence[Sequence[dict]], n: int,
                  against: Sequence[int] | None = None) -> Split:
    """Move held-out rows that share an n-gram with a train row (or a row of ``against``) to ``decontaminated``."""
    train = split.train if against is None else against
    hit = contaminated([conversations[i] for i in split.heldout], (conversations[i] for i in train), n)
    removed = [idx for pos, idx in enumerate(split.heldout) if pos in hit]
    kept = [idx for pos, idx in enumerate(split.heldout) if pos not in hit]
    return Split(train=split.train, heldout=kept, decontaminated=removed, not_selected=split.not_selected,
                 draws=split.draws)
