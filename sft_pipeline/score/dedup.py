"""Exact and near-duplicate detection (MinHash + LSH banding), one representative per cluster.

* Exact duplicates: identical (role, stripped content) sequences, keyed by an 8-byte BLAKE2b.
* Both hash text in Unicode NFC (:func:`nfc`), so composed and decomposed spellings of one
  conversation are duplicates; the stored text is left as it was written.
* Near duplicates: word n-gram shingles over all messages, MinHash signatures from ``rensa``
  (Rust; 10-20x faster than ``datasketch`` on the same token hashes, see bench/bench_score.py),
  LSH bands/rows chosen by ``datasketch.MinHashLSH`` for the Jaccard threshold. Rows sharing a
  band are candidates; a candidate counts only if its estimated Jaccard with the band's first
  row reaches the threshold. Clusters are the connected components of those links.
* The representative of a cluster is its row with the smallest ``id`` (then input order),
  so the choice does not depend on how sources were ordered.

Band buckets are found by sorting band hashes in numpy (8 bytes per row and band) rather than
with an in-memory ``MinHashLSH`` index, measured here at ~1.1 KB and ~16 us per inserted row
(~1.1 GB and ~16 s at a million rows, on top of the signatures).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import rensa
from datasketch import MinHashLSH
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from sft_pipeline.score.turns import Turns

MINHASH_SEED = 1  # fixed: signatures (and so clusters) repeat run to run
_FIELD_SEP, _MESSAGE_SEP = "\x1f", "\x1e"
_KEY_BYTES = 8
_VERIFY_CHUNK = 65_536  # candidate pairs compared at once (bounds memory)
_BAND_MULT = np.uint64(0x100000001B3)


def nfc(content: pa.Array) -> pa.Array:
    """Strings in Unicode normal form C: "e" + U+0301 and "\u00e9" hash alike.

    >>> nfc(pa.array(["cafe\u0301", "caf\u00e9", "ok"])).to_pylist() == ["caf\u00e9"] * 2 + ["ok"]
    True
    """
    return pc.utf8_normalize(content, form="NFC")


def word_hashes(content: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Stable 64-bit hash of every whitespace-separated word, and the index of its string.

    >>> h, owner = word_hashes(pa.array([" a b  a", "", "b\\n"]))
    >>> owner.tolist(), bool(h[0] == h[2]), bool(h[1] == h[3]), bool(h[0] == h[1])
    ([0, 0, 0, 2], True, True, False)
    """
    words = pc.ascii_split_whitespace(nfc(content))
    flat = words.flatten()
    real = pc.greater(pc.binary_length(flat), 0)  # Arrow yields "" at leading/trailing spaces
    owner = pc.list_parent_indices(words).filter(real).to_numpy().astype(np.int64)
    encoded = pc.dictionary_encode(flat.filter(real))
    vocab = rensa.RMinHash.hash_token_sets([encoded.dictionary.to_pylist()])[0]
    vocab_hashes = np.array(vocab, dtype=np.uint64)
    return vocab_hashes[encoded.indices.to_numpy()], owner


def exact_keys(turns: Turns) -> np.ndarray:
    """One uint64 per conversation; equal keys mean equal role/stripped-content sequences (in NFC).

    >>> from sft_pipeline.score.turns import flatten
    >>> m = lambda c: [{"role": "user", "content": "q"}, {"role": "assistant", "content": c}]
    >>> k = exact_keys(flatten(pa.array([m("yes"), m(" yes\\n"), m("no"), m("caf\u00e9"), m("cafe\u0301")])))
    >>> bool(k[0] == k[1]), bool(k[0] == k[2]), bool(k[3] == k[4])
    (True, False, True)
    """
    roles = pa.array(turns.role.astype(np.int8).astype(str))
    fields = pc.binary_join_element_wise(roles, pc.utf8_trim_whitespace(nfc(turns.content)), _FIELD_SEP)
    offsets = np.concatenate([[0], np.cumsum(turns.n_messages)]).astype(np.int32)
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), fields), _MESSAGE_SEP)
    blobs = joined.cast(pa.binary()).to_pylist()
    return np.array(
        [int.from_bytes(hashlib.blake2b(b, digest_size=_KEY_BYTES).digest(), "little") for b in blobs],
        dtype=np.uint64,
    )


def signatures(shingles: np.ndarray, groups: np.ndarray, n_convs: int, num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signature per conversation (uint32, n_convs x num_perm) and which have shingles."""
    counts = np.bincount(groups, minlength=n_convs)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.uint64)
    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(shingles, offsets, num_perm, MINHASH_SEED)
    return np.array(matrix.to_rows(), dtype=np.uint32).reshape(n_convs, num_perm), counts > 0


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch picks for this threshold and signature size.

    >>> lsh_params(0.85, 64)
    (4, 15)
    """
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def group_heads(keys: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each element, the element with the smallest rank among those with an equal key.

    >>> group_heads(np.array([5, 3, 5, 5], np.uint64), np.array([2, 0, 1, 3])).tolist()
    [2, 1, 2, 2]
    """
    order = np.lexsort((rank, keys))
    sorted_keys = keys[order]
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = sorted_keys[1:] != sorted_keys[:-1]
    heads = order[np.flatnonzero(new_group)[np.cumsum(new_group) - 1]]
    out = np.empty_like(order)
    out[order] = heads
    return out


def near_duplicate_heads(sigs: np.ndarray, rows: np.ndarray, rank: np.ndarray, threshold: float) -> np.ndarray:
    """Cluster representative (smallest rank) of each of ``rows``, from LSH-banded signatures.

    Works on row indices into ``sigs`` (no copy of the matrix); returns positions into ``rows``.
    """
    n = len(rows)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    bands, width = lsh_params(threshold, sigs.shape[1])
    links = []
    for b in range(bands):
        band_hash = np.zeros(n, dtype=np.uint64)
        for col in range(b * width, (b + 1) * width):
            band_hash = band_hash * _BAND_MULT + sigs[rows, col]
        heads = group_heads(band_hash, rank)
        member = np.flatnonzero(heads != np.arange(n))
        links.append(np.stack([member, heads[member]]))
    pairs = np.concatenate(links, axis=1)
    pairs = pairs[:, _similar(sigs, rows, pairs, threshold)]
    graph = coo_matrix((np.ones(pairs.shape[1], dtype=np.int8), (pairs[0], pairs[1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return group_heads(labels.astype(np.uint64), rank)


def _similar(sigs: np.ndarray, rows: np.ndarray, pairs: np.ndarray, threshold: float) -> np.ndarray:
    """Estimated Jaccard (share of equal signature slots) >= threshold, in bounded slices."""
    keep = np.zeros(pairs.shape[1], dtype=bool)
    for start in range(0, pairs.shape[1], _VERIFY_CHUNK):
        a, b = rows[pairs[:, start: start + _VERIFY_CHUNK]]
        keep[start: start + len(a)] = (sigs[a] == sigs[b]).mean(axis=1) >= threshold
    return keep


def resolve(rank: np.ndarray, keys: np.ndarray | None, sigs: np.ndarray | None, has_sig: np.ndarray | None,
            threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(exact_duplicate, near_duplicate, representative row) for every row.

    A row that is neither has itself as representative. Exact duplicates point at the final
    representative of their group (which may itself sit in a near-duplicate cluster).
    """
    n = len(rank)
    rep = np.arange(n)
    exact = np.zeros(n, dtype=bool)
    if keys is not None:
        rep = group_heads(keys, rank)
        exact = rep != np.arange(n)
    near = np.zeros(n, dtype=bool)
    if sigs is not None:
        idx = np.flatnonzero(has_sig & ~exact)
        heads = idx[near_duplicate_heads(sigs, idx, rank[idx], threshold)]
        near[idx] = heads != idx
        final = np.arange(n)
        final[idx] = heads
        rep = final[rep]
    return exact, near, rep
