"""Scoring throughput and peak memory: the seed's per-row heuristic vs our vectorised scorer.

On the same generated conversations.parquet (single-turn, Alpaca-like lengths, with planted
short/sycophantic/hedged/refusal/disclaimer/repetitive rows, exact and near duplicates):

* (a) ``seed``: the tutorial's ``score_sft_example`` (sft_pipeline.score.reference, verbatim) applied row by row
  to the Parquet batches converted to Python dicts - what calling it on this data takes;
* (b) ``ours-seed4``: ``score_conversations`` restricted to the same four signals;
* (c) ``ours-all``: ``score_conversations`` with every signal (dedup included);
* for reference, decoding the Parquet columns alone: a floor that every method pays.

(b) and (c) are the whole stage: both passes, and writing scores.parquet; (a) writes nothing.
Each runs in a fresh process, best of ``--repeat`` runs: CPU seconds (all threads) give
rows/s/core, ru_maxrss the peak RSS. (b)'s scores are checked equal to (a)'s. A second table times MinHash signatures on the
same shingle hashes: ``datasketch`` (MinHash.update_batch per row) vs ``rensa`` (flat matrix).

    python bench/bench_score.py                  # 100k rows (~30 s here)
    python bench/bench_score.py --rows 1000000   # scale mode: peak RSS at a million rows (~2 min)
    python bench/bench_score.py --input runs/ingest/<key>/conversations.parquet  # (c) on real data
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sft_pipeline import constants
from sft_pipeline.config import ScoreConfig
from sft_pipeline.score import defaults
from sft_pipeline.score.reference import score_sft_example
from sft_pipeline.score.passes import active_signals, compute_scores, open_conversations, score_conversations

VOCAB = np.array([f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "ze")
                  for b in ("n", "ra", "li", "mo", "sto", "vek", "dor", "pan", "tis", "gu")] * 1
                 + "the a of and to in is it that for with on as data model answer".split())
PLANTS = {  # share of rows: how a planted row's response is made
    "short": 0.05, "sycophantic": 0.05, "hedge": 0.03, "refusal": 0.03, "disclaimer": 0.02,
    "repetition": 0.02, "exact_dup": 0.03, "near_dup": 0.03,
}
GEN_BATCH = 50_000


def _text(rng: np.random.Generator, n: int) -> str:
    return " ".join(VOCAB[rng.integers(0, len(VOCAB), n)])


def _response(rng: np.random.Generator, kind: str, previous: list[str]) -> str:
    n = int(np.clip(rng.lognormal(4.0, 0.7), 5, 600))  # median ~55 words
    if kind == "short":
        return _text(rng, int(rng.integers(1, 5)))
    if kind == "sycophantic":
        return str(rng.choice(["Sure! ", "Certainly! ", "Of course! "])) + _text(rng, n)
    if kind == "hedge":
        return "I believe " + _text(rng, n) if rng.random() < 0.5 else _text(rng, n) + " [CITATION NEEDED]"
    if kind == "refusal":
        return "I'm sorry, but I can't help with that. " + _text(rng, 8)
    if kind == "disclaimer":
        return "As an AI language model, " + _text(rng, n)
    if kind == "repetition":
        return " ".join([_text(rng, 6)] * 10)
    if kind == "near_dup" and previous:
        words = previous[int(rng.integers(len(previous)))].split()
        words[int(rng.integers(len(words)))] = "changed"
        return " ".join(words)
    return _text(rng, n)


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Write ``rows`` single-turn conversations (10 % with a system prompt) in streaming batches."""
    rng = np.random.default_rng(seed)
    kinds, probs = list(PLANTS) + ["plain"], list(PLANTS.values()) + [1 - sum(PLANTS.values())]
    msg_type = pa.struct([("role", pa.string()), ("content", pa.string())])
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("source_row", pa.int64()),
                        ("format", pa.string()), ("messages", pa.list_(msg_type)), ("metadata", pa.string())])
    recent: list[tuple[str, str]] = []
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, GEN_BATCH):
            roles, contents, offsets, ids = [], [], [0], []
            for kind in rng.choice(kinds, size=min(GEN_BATCH, rows - start), p=probs):
                if kind == "exact_dup" and recent:
                    user, answer = recent[int(rng.integers(len(recent)))]
                else:
                    user = _text(rng, int(rng.integers(4, 25)))
                    answer = _response(rng, kind, [a for _, a in recent])
                    recent = (recent + [(user, answer)])[-64:]
                turns = ([("system", "You are a helpful assistant.")] if rng.random() < 0.1 else []) \
                    + [("user", user), ("assistant", answer)]
                roles += [r for r, _ in turns]
                contents += [c for _, c in turns]
                offsets.append(len(roles))
                ids.append(hashlib.blake2b(repr(turns).encode(), digest_size=12).hexdigest())
            n = len(ids)
            messages = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.StructArray.from_arrays(
                [pa.array(roles), pa.array(contents)], fields=list(msg_type)))
            writer.write_batch(pa.record_batch([pa.array(ids), pa.array(["bench"] * n), pa.array(range(start, start + n)),
                                                pa.array(["messages"] * n), messages, pa.array(["{}"] * n)],
                                               schema=schema))


def seed_scores(path: Path, out: Path | None = None) -> np.ndarray:
    """(a): the seed function per row (instruction = the user turn, response = the reply).

    With ``out``, each batch is also written with a ``score`` column, as a naive stage would.
    """
    pf, scores = pq.ParquetFile(path), []
    schema = pf.schema_arrow.append(pa.field(constants.SCORE_COLUMN, pa.float64()))
    writer = pq.ParquetWriter(out, schema) if out else None
    for batch in pf.iter_batches(batch_size=8192):
        batch_scores = []
        for messages in batch.column("messages").to_pylist():
            user = next(m["content"] for m in messages if m["role"] == constants.ROLE_USER)
            reply = next(m["content"] for m in messages if m["role"] == constants.ROLE_ASSISTANT)
            batch_scores.append(score_sft_example({"instruction": user, "response": reply}))
        if writer:
            writer.write_batch(pa.RecordBatch.from_arrays(batch.columns + [pa.array(batch_scores)],
                                                          schema=writer.schema))
        scores += batch_scores
    if writer:
        writer.close()
    return np.array(scores)


def run_method(method: str, stage: bool, path: str, out: str, repeat: int) -> dict:
    """Runs in a fresh process: the best of ``repeat`` runs (the first one warms caches up)."""
    runs = [run_once(method, stage, path, out) for _ in range(repeat)]
    return min(runs, key=lambda r: r["cpu"])


def run_once(method: str, stage: bool, path: str, out: str) -> dict:
    """Scores only (in memory), or the whole stage (writing ``out``)."""
    wall, cpu = time.perf_counter(), time.process_time()
    scores = None
    if method == "read":
        for _ in pq.ParquetFile(path).iter_batches(batch_size=8192, columns=["id", "messages"]):
            pass
    elif method == "seed":
        scores = seed_scores(Path(path), Path(out) if stage else None)
    else:
        signals = defaults.SEED_SIGNALS if method == "ours-seed4" else defaults.SCORE_SIGNALS
        cfg = ScoreConfig(signals=list(signals))
        if stage:
            score_conversations(Path(path), Path(out), cfg)
        else:
            scores = compute_scores(open_conversations(Path(path)), cfg).score
    timing = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
              "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if stage and method not in ("seed", "read"):
        scores = pq.read_table(out, columns=[constants.SCORE_COLUMN]).column(0).to_numpy()
    return {**timing, "scores": scores}


def in_child(*args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(*args).result()


def minhash_table(path: Path, rows: int, num_perm: int = 64) -> list[str]:
    """datasketch vs rensa signatures over identical shingle hashes of the first ``rows`` rows."""
    import rensa
    from datasketch import MinHash

    from sft_pipeline.score import dedup, text
    from sft_pipeline.score.turns import flatten

    batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows, columns=["messages"]))
    turns = flatten(batch.column("messages"))
    hashes, owner = dedup.word_hashes(turns.content)
    shingles, groups = text.ngram_hashes(hashes, turns.conv[owner], 5)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(groups, minlength=turns.n_convs))])
    t = time.process_time()
    rensa.RMinHash.digest_matrix_from_flat_token_hashes(shingles, bounds.astype(np.uint64), num_perm, 1).to_rows()
    t_rensa = time.process_time() - t
    perms = MinHash(num_perm=num_perm).permutations
    t = time.process_time()
    for a, b in zip(bounds[:-1], bounds[1:]):
        m = MinHash(num_perm=num_perm, permutations=perms, scheme="affine32", hashfunc=int)
        m.update_batch((shingles[a:b] >> np.uint64(32)).tolist())
    t_ds = time.process_time() - t
    n = turns.n_convs
    return ["| MinHash signatures (64 perm) | rows | CPU s | rows/s/core |", "|---|---:|---:|---:|",
            f"| datasketch `MinHash.update_batch` per row | {n:,} | {t_ds:.2f} | {n / t_ds:,.0f} |",
            f"| rensa `digest_matrix_from_flat_token_hashes` | {n:,} | {t_rensa:.2f} | {n / t_rensa:,.0f} |",
            f"\nrensa / datasketch: {t_ds / t_rensa:.0f}x"]


LABELS = {"read": "Parquet decode of id + messages only (paid by all)",
          "seed": "(a) seed `score_sft_example` per row", "ours-seed4": "(b) ours, the seed's 4 signals",
          "ours-all": "(c) ours, all signals"}
N_SIGNALS = {"read": 0, "seed": 4, "ours-seed4": 4, "ours-all": len(active_signals(ScoreConfig()))}  # language id off


def print_table(res: dict, methods: list[str], rows: int) -> None:
    print("\n| method | signals | rows | scoring CPU s | scoring rows/s/core | vs (a) "
          "| stage CPU s (+ write) | stage rows/s/core | vs (a) | stage peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    read = res[("read", False)]
    print(f"| {LABELS['read']} | 0 | {rows:,} | {read['cpu']:.2f} | {rows / read['cpu']:,.0f} | | | | | |")
    for m in methods:
        core, stage = res[(m, False)], res[(m, True)]
        vs = [f"{res[('seed', st)]['cpu'] / r['cpu']:.1f}x" if "seed" in methods else "-"
              for st, r in ((False, core), (True, stage))]
        print(f"| {LABELS[m]} | {N_SIGNALS[m]} | {rows:,} | {core['cpu']:.2f} | {rows / core['cpu']:,.0f} | {vs[0]} "
              f"| {stage['cpu']:.2f} | {rows / stage['cpu']:,.0f} | {vs[1]} | {stage['rss_mb']:,.0f} |")
    if "seed" in methods:
        same = np.array_equal(np.round(res[("seed", False)]["scores"], 6), res[("ours-seed4", True)]["scores"])
        print(f"\n(b) scores identical to (a) on all {rows:,} rows: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--input", type=Path, help="an existing conversations.parquet: run (c) only")
    parser.add_argument("--minhash-rows", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, help="runs per method, best kept (default: 2, 1 from 500k rows)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.input or Path(tmp) / constants.CONVERSATIONS_FILE
        if not args.input:
            t = time.perf_counter()
            generate(path, args.rows)
            print(f"generated {args.rows:,} rows in {time.perf_counter() - t:.1f}s ({path.stat().st_size / 2**20:.0f} MB)")
        rows = pq.ParquetFile(path).metadata.num_rows
        methods = ["ours-all"] if args.input else ["seed", "ours-seed4", "ours-all"]
        repeat = args.repeat or (1 if rows >= 500_000 else 2)
        res = {(m, stage): in_child(run_method, m, stage, str(path), str(Path(tmp) / f"{m}.parquet"), repeat)
               for m in methods for stage in (False, True)}
        res[("read", False)] = in_child(run_method, "read", False, str(path), "", repeat)
        print(f"\nbest of {repeat} run(s) per method, each method in a fresh process")
        print_table(res, methods, rows)
        print()
        print("\n".join(minhash_table(path, min(args.minhash_rows, rows))))


if __name__ == "__main__":
    main()
