"""Weighted mixing of sources (ingest.sources[i].weight): exact per-source counts, a source too small for its share,
a source of weight 0, the same rows on a re-run, the weights in the tokenize key, and the counts in the manifest."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft_pipeline import cache, constants, stages
from sft_pipeline.config import TokenizeConfig, validate_config
from sft_pipeline.errors import ConfigError, InputError
from sft_pipeline.tokenize.mixing import Mix
from sft_pipeline.tokenize.token_files import DROP_NOT_MIXED, tokenize_split

SEED = 11
ROOT = Path(__file__).resolve().parents[1]


def conversation(i: int) -> list[dict]:
    """A short conversation with words of its own (no n-gram is shared between rows)."""
    return [{"role": "user", "content": " ".join(f"u{i}w{j}" for j in range(5))},
            {"role": "assistant", "content": " ".join(f"a{i}w{j}" for j in range(8 + i % 5))}]


def write_rows(path: Path, sizes: list[int], shuffle: bool = False) -> Path:
    """A filtered.parquet with ``sizes[s]`` rows from source ``s`` (ids ``s<s>-<k>``)."""
    rows = [{"id": f"s{s}-{k:03d}", "source": f"src{s}.jsonl", "source_index": s,
             "messages": conversation(100 * s + k), "score": 1.0}
            for s, n in enumerate(sizes) for k in range(n)]
    if shuffle:
        random.Random(0).shuffle(rows)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def mixed(tmp_path: Path, tokenizer, sizes: list[int], weights: list[float], name: str = "out",
          shuffle: bool = False, **cfg) -> tuple[dict, Path]:
    src = write_rows(tmp_path / f"{name}.parquet", sizes, shuffle)
    out = tmp_path / name
    out.mkdir()
    settings = TokenizeConfig(**{"heldout_fraction": 0.0, "max_length": 256, **cfg})
    return tokenize_split(src, out, tokenizer, settings, seed=SEED, mix_weights=weights), out


def train_sources(out: Path) -> dict[str, int]:
    ids = pq.read_table(out / constants.TRAIN_TOKENS_FILE).column("id").to_pylist()
    return {s: sum(i.startswith(f"{s}-") for i in ids) for s in ("s0", "s1", "s2")}


def test_each_source_gives_exactly_its_share_of_max_rows(tmp_path, tiny_tokenizer):
    stats, out = mixed(tmp_path, tiny_tokenizer, [60, 30, 12], [2, 1, 1], max_rows=40)
    assert train_sources(out) == {"s0": 20, "s1": 10, "s2": 10}
    mix = stats["mix"]
    assert [(m["share_asked"], m["rows_available"], m["rows_asked"], m["rows_selected"], m["rows_short"])
            for m in mix.values()] == [(0.5, 60, 20, 20, 0), (0.25, 30, 10, 10, 0), (0.25, 12, 10, 10, 0)]
    assert [m["train_rows"] for m in mix.values()] == [20, 10, 10] and stats["train_rows"] == 40
    assert [m["source"] for m in mix.values()] == ["src0.jsonl", "src1.jsonl", "src2.jsonl"]
    assert sum(m["supervised_tokens"] for m in mix.values()) == stats["supervised_tokens"]
    assert all(m["supervised_tokens"] > 0 for m in mix.values())
    dropped = pq.read_table(out / constants.TOKENIZE_DROPPED_FILE).to_pylist()
    assert len(dropped) == stats["not_selected_by_mix"] == 62 and {d["reason"] for d in dropped} == {DROP_NOT_MIXED}


def test_without_max_rows_the_shares_hold_exactly_and_no_source_is_short(tmp_path, tiny_tokenizer):
    stats, out = mixed(tmp_path, tiny_tokenizer, [60, 10], [1, 1])
    assert train_sources(out) == {"s0": 10, "s1": 10, "s2": 0}  # the largest total both fill at 50 % each
    assert [m["rows_short"] for m in stats["mix"].values()] == [0, 0]


def test_a_source_too_small_for_its_share_is_used_whole_and_its_shortfall_reported(tmp_path, tiny_tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="sft_pipeline.tokenize"):
        stats, out = mixed(tmp_path, tiny_tokenizer, [60, 8], [1, 1], max_rows=40)
    assert train_sources(out) == {"s0": 20, "s1": 8, "s2": 0}  # the other source keeps its share, nothing moves
    small = stats["mix"]["source_1"]
    assert (small["rows_asked"], small["rows_selected"], small["rows_short"], small["train_rows"]) == (20, 8, 12, 8)
    assert small["share_asked"] == 0.5 and small["share_obtained"] == round(8 / 28, 4)
    assert any("source_1 (src1.jsonl) has 8 train rows for a share of 20" in r.getMessage() for r in caplog.records)


def test_a_source_of_weight_zero_contributes_nothing(tmp_path, tiny_tokenizer):
    stats, out = mixed(tmp_path, tiny_tokenizer, [20, 20, 20], [1, 0, 1])
    assert train_sources(out) == {"s0": 20, "s1": 0, "s2": 20}
    zero = stats["mix"]["source_1"]
    assert (zero["rows_asked"], zero["train_rows"], zero["supervised_tokens"], zero["rows_short"]) == (0, 0, 0, 0)
    dropped = pq.read_table(out / constants.TOKENIZE_DROPPED_FILE).to_pylist()
    assert sorted(d["id"] for d in dropped) == [f"s1-{k:03d}" for k in range(20)]


def test_the_same_rows_are_selected_on_a_rerun_in_any_row_order(tmp_path, tiny_tokenizer):
    def selected(name: str, shuffle: bool) -> list[str]:
        _, out = mixed(tmp_path, tiny_tokenizer, [50, 25], [3, 1], name=name, shuffle=shuffle, max_rows=24)
        return sorted(pq.read_table(out / constants.TRAIN_TOKENS_FILE).column("id").to_pylist())

    first = selected("a", shuffle=False)
    assert len(first) == 24 and first == selected("b", shuffle=False) == selected("c", shuffle=True)
    other_seed = tokenize_split(write_rows(tmp_path / "d.parquet", [50, 25]), tmp_path, tiny_tokenizer,
                                TokenizeConfig(heldout_fraction=0.0, max_length=256, max_rows=24), seed=SEED + 1,
                                mix_weights=[3, 1])
    ids = sorted(pq.read_table(tmp_path / constants.TRAIN_TOKENS_FILE).column("id").to_pylist())
    assert other_seed["train_rows"] == 24 and ids != first  # the sample follows run.seed


def test_rows_without_a_known_source_are_refused_in_one_line(tmp_path, tiny_tokenizer):
    path = tmp_path / "old.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "messages": conversation(0)}]), path)
    with pytest.raises(InputError, match="no source_index column"):
        tokenize_split(path, tmp_path, tiny_tokenizer, TokenizeConfig(), seed=0, mix_weights=[1.0])
    write_rows(path, [0, 2])
    with pytest.raises(InputError, match=r"row 0 \(id='s1-000'\): source_index 1 names none of the 1 configured"):
        tokenize_split(path, tmp_path, tiny_tokenizer, TokenizeConfig(), seed=0, mix_weights=[1.0])


def config(*weights, **tokenize):
    return validate_config({"ingest": {"sources": [{"path": f"s{i}", "weight": w} for i, w in enumerate(weights)]},
                            "tokenize": tokenize})


def test_weights_are_set_on_every_source_or_none_and_not_all_zero():
    assert config(None, None).ingest.mix_weights is None and config(3, 1).ingest.mix_weights == [3.0, 1.0]
    with pytest.raises(ConfigError, match="sources.1.weight: set a weight on every source or on none"):
        config(1, None)
    with pytest.raises(ConfigError, match="every weight is 0"):
        config(0, 0)
    with pytest.raises(ConfigError, match=r"ingest.sources.0.weight: Input should be greater than or equal to 0"):
        config(-1, 1)


def test_the_shares_enter_the_tokenize_key_and_not_the_ingest_key():
    from sft_pipeline import sweep_rows
    from sft_pipeline.stages import StageResult

    filtered = StageResult(stage=constants.STAGE_FILTER, key="f", out_dir="/f", files={constants.FILTERED_FILE: "d"})
    tokenize, ingest = stages.get(constants.STAGE_TOKENIZE), stages.get(constants.STAGE_INGEST)
    branch_ids = sweep_rows.stage(["threshold=0.7"])

    def keys(cfg):
        return (cache.key(tokenize, cfg, {constants.STAGE_FILTER: filtered}), cache.key(ingest, cfg),
                cache.key(branch_ids, cfg, {"threshold=0.7": filtered}))

    unweighted, even, uneven, scaled = keys(config(None, None)), keys(config(1, 1)), keys(config(3, 1)), \
        keys(config(6, 2))
    assert len({unweighted[0], even[0], uneven[0], scaled[0]}) == 4  # the weights as given enter the key
    assert len({unweighted[2], even[2], uneven[2]}) == 3  # so do the sweep's rows to decontaminate against
    assert unweighted[1] == even[1] == uneven[1]  # ingest writes the same rows whatever the weights
    assert cache.config_part(tokenize, config(3, 1))[stages.MIX_WEIGHTS] == [3.0, 1.0]


def test_a_sweep_decontaminates_against_the_rows_the_mix_trains_on(tmp_path, tiny_tokenizer):
    from sft_pipeline.sweep_rows import train_ids

    cfg = TokenizeConfig(heldout_fraction=0.2, max_heldout_rows=10, max_length=256, max_rows=30)
    src = write_rows(tmp_path / "rows.parquet", [50, 30])
    table = pq.read_table(src)
    mix = Mix((1.0, 2.0), table.column("source_index").to_pylist())
    tokenize_split(src, tmp_path, tiny_tokenizer, cfg, seed=SEED, mix_weights=list(mix.weights))
    trained = sorted(pq.read_table(tmp_path / constants.TRAIN_TOKENS_FILE).column("id").to_pylist())
    assert train_ids([table.column("id").to_pylist()], cfg, SEED, [mix]) == trained


def test_mixing_through_the_stages_records_each_source_in_the_manifest(tiny_model_dir, tmp_path):
    lines = (ROOT / "tests" / "data" / "tiny_chat.jsonl").read_text().splitlines()
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("\n".join(lines[:35]) + "\n")
    second.write_text("\n".join(lines[35:]) + "\n")
    sources = [{"path": str(first), "weight": 1}, {"path": str(second), "weight": 1}]
    cfg = validate_config({"run": {"output_dir": str(tmp_path / "runs"), "seed": 0},
                           "model": {"name_or_path": str(tiny_model_dir)}, "ingest": {"sources": sources},
                           "filter": {"threshold": 0.0}, "tokenize": {"max_length": 128, "heldout_fraction": 0.2}})
    results = {}
    for stage in stages.upto(constants.STAGE_TOKENIZE):
        results[stage.name] = cache.run(stage, cfg, {name: results[name] for name in stage.reads})
    convs = pq.read_table(Path(results[constants.STAGE_INGEST].out_dir) / constants.CONVERSATIONS_FILE)
    assert sorted(set(convs.column("source_index").to_pylist())) == [0, 1]
    manifest = json.loads((Path(results[constants.STAGE_TOKENIZE].out_dir) / constants.MANIFEST_FILE).read_text())
    mix = manifest["details"]["mix"]
    assert [m["source"] for m in mix.values()] == [str(first), str(second)]
    assert mix["source_0"]["rows_asked"] == mix["source_1"]["rows_asked"] > 0
    assert sum(m["train_rows"] for m in mix.values()) == manifest["counts"]["train_rows"]
