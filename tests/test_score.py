"""Score stage: each signal on crafted conversations, multi-turn rules, dedup, streaming, errors."""

import hashlib
import json
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sft_pipeline import constants
from sft_pipeline.config import ScoreConfig, validate_config
from sft_pipeline.errors import ConfigError, InputError
from sft_pipeline.score import defaults
from sft_pipeline.score.passes import active_signals, score_conversations
from sft_pipeline.score.reference import score_sft_example

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("source_row", pa.int64()),
                    ("format", pa.string()), ("messages", MESSAGES), ("metadata", pa.string())])
GOOD = ("Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the "
        "chloroplasts of plant cells, which is how plants store energy they can use later.")


def chat(*turns: str, system: str | None = None) -> list[dict]:
    """Alternating user/assistant messages from plain strings."""
    msgs = [{"role": constants.ROLE_SYSTEM, "content": system}] if system else []
    roles = [constants.ROLE_USER, constants.ROLE_ASSISTANT]
    return msgs + [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


def write(path, conversations, ids=None):
    rows = []
    for i, msgs in enumerate(conversations):
        cid = ids[i] if ids else hashlib.sha256(json.dumps([i, msgs]).encode()).hexdigest()[:16]
        rows.append({"id": cid, "source": "test", "source_row": i, "format": "messages",
                     "messages": msgs, "metadata": "{}"})
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path


def score(tmp_path, conversations, ids=None, **cfg):
    src = write(tmp_path / constants.CONVERSATIONS_FILE, conversations, ids)
    summary = score_conversations(src, tmp_path / constants.SCORES_FILE, ScoreConfig(**cfg))
    return pq.read_table(tmp_path / constants.SCORES_FILE).to_pylist(), summary


CASES = [  # (signal, conversation that fires it, similar conversation that does not)
    (defaults.SIGNAL_TOO_SHORT, chat("Explain photosynthesis.", "Yes, it is."),
     chat("Explain photosynthesis.", "It makes sugar from light.")),
    (defaults.SIGNAL_TOO_VERBOSE, chat("Photosynthesis?", " ".join(["word"] * 51)),
     chat("Photosynthesis?", " ".join(["word%d" % i for i in range(50)]))),
    (defaults.SIGNAL_SYCOPHANTIC, chat("Explain photosynthesis.", "  Certainly! " + GOOD),
     chat("Explain photosynthesis.", "I am certainly glad to help. " + GOOD)),
    (defaults.SIGNAL_HALLUCINATION, chat("Explain photosynthesis.", GOOD + " [CITATION NEEDED]"),
     chat("Explain photosynthesis.", GOOD + " [citation below]")),
    (defaults.SIGNAL_HALLUCINATION, chat("Explain photosynthesis.", "Well, I believe that " + GOOD),
     chat("Explain photosynthesis.", GOOD + " I believe that is all.")),
    (defaults.SIGNAL_REFUSAL, chat("Explain photosynthesis.", "I'm sorry, but I can't help with that request today."),
     chat("Explain photosynthesis.", "Sorry for the wait! " + GOOD)),
    (defaults.SIGNAL_AI_DISCLAIMER, chat("Explain photosynthesis.", "As an AI language model, I think " + GOOD),
     chat("Explain photosynthesis.", "AI models aside, " + GOOD)),
    (defaults.SIGNAL_REPETITION, chat("Explain photosynthesis.", "the plant makes sugar from light " * 12),
     chat("Explain photosynthesis.", GOOD)),
    (defaults.SIGNAL_BAD_STRUCTURE, chat("Explain photosynthesis.", GOOD, "And respiration?"),
     chat("Explain photosynthesis.", GOOD, "And respiration?", GOOD.replace("Photo", "Respi"))),
    (defaults.SIGNAL_BAD_STRUCTURE, chat("   ", GOOD), chat("Hi", GOOD, system="Be brief.")),
]


@pytest.mark.parametrize(("signal", "fires", "clean"), CASES)
def test_signal_fires_only_on_its_example(tmp_path, signal, fires, clean):
    rows, _ = score(tmp_path, [fires, clean])
    assert rows[0][signal] and signal in rows[0][constants.REASONS_COLUMN]
    assert not rows[1][signal], rows[1][constants.REASONS_COLUMN]


def test_clean_conversation_scores_one_and_weights_add_up(tmp_path):
    rows, summary = score(tmp_path, [chat("Explain photosynthesis.", GOOD),
                                     chat("Hi", "Sure! I believe it is short.")])
    assert rows[0][constants.SCORE_COLUMN] == 1.0 and rows[0][constants.REASONS_COLUMN] == []
    assert rows[1][constants.REASONS_COLUMN] == [defaults.SIGNAL_SYCOPHANTIC, defaults.SIGNAL_HALLUCINATION]
    assert rows[1][constants.SCORE_COLUMN] == 0.6  # 1 - 0.3 - 0.1, exactly (rounded)
    assert summary["rows"] == 2 and summary["signals"][defaults.SIGNAL_SYCOPHANTIC] == 1


def test_too_long_uses_the_token_estimate(tmp_path):
    rows, _ = score(tmp_path, [chat("Q?", "x" * 400), chat("Q?", "x" * 40)], max_tokens_est=100)
    assert rows[0][constants.TOKENS_EST_COLUMN] == 1 + 4 + 100 + 4  # ceil(bytes / 4) + 4 per message
    assert [r[defaults.SIGNAL_TOO_LONG] for r in rows] == [True, False]


def test_single_turn_matches_the_seed_heuristics(tmp_path):
    pairs = [("Explain photosynthesis.", GOOD), ("Hi", "Yes."), ("Why?", "Sure! " + GOOD),
             ("Tell me", "I believe so, " + GOOD + " [CITATION NEEDED]"), ("X", " ".join(["w"] * 60)),
             ("Great?", "Great question! Of course!"), ("Describe it", "Of course! I believe it.")]
    rows, _ = score(tmp_path, [chat(q, a) for q, a in pairs], signals=list(defaults.SEED_SIGNALS))
    assert [r[constants.SCORE_COLUMN] for r in rows] == [round(score_sft_example({"instruction": q, "response": a}), 6)
                                                 for q, a in pairs]


def test_multi_turn_aggregation(tmp_path):
    long_q = " ".join(["why"] * 10)
    rows, _ = score(tmp_path, [
        chat("Explain.", GOOD, "Thanks!", "You're welcome!"),  # 1 of 2 turns short: fires (>= 0.5)
        chat("Explain.", GOOD, "More?", GOOD, "Thanks!", "Welcome!"),  # 1 of 3 short: does not
        chat("Explain.", GOOD, "More?", "Sure! " + GOOD),  # an opener on any turn fires
        chat("A?", GOOD, long_q, GOOD),  # each turn measured against its own instruction
    ], signals=list(defaults.SEED_SIGNALS))
    assert [r[defaults.SIGNAL_TOO_SHORT] for r in rows] == [True, False, False, False]
    assert [r[defaults.SIGNAL_SYCOPHANTIC] for r in rows] == [False, False, True, False]
    assert [r["n_assistant_turns"] for r in rows] == [2, 3, 2, 2]
    rows, _ = score(tmp_path, [chat("A?", GOOD, "B?", GOOD)], signals=[defaults.SIGNAL_TOO_VERBOSE],
                    max_verbosity_ratio=10, min_turn_fraction={defaults.SIGNAL_TOO_VERBOSE: 1.0})
    assert rows[0][defaults.SIGNAL_TOO_VERBOSE]  # both turns exceed 10x their one-word instruction


def test_exact_duplicates_keep_the_smallest_id(tmp_path):
    base = chat("Explain photosynthesis.", GOOD)
    spaced = chat("Explain photosynthesis.  ", "\n" + GOOD + " ")
    other = chat("Explain respiration.", GOOD.replace("Photo", "Respi"))
    rows, summary = score(tmp_path, [base, other, spaced, base], ids=["c", "x", "a", "b"])
    assert [r[defaults.SIGNAL_EXACT_DUPLICATE] for r in rows] == [True, False, False, True]
    assert [r[constants.DUPLICATE_OF_COLUMN] for r in rows] == ["a", None, None, "a"]
    assert rows[0][constants.SCORE_COLUMN] == 0.0 and rows[2][constants.SCORE_COLUMN] == 1.0
    assert summary["duplicate_clusters"] == 1


def test_near_duplicates_keep_one_representative(tmp_path):
    words = [f"token{i}" for i in range(200)]
    text = " ".join(words)
    edited = " ".join(words[:100] + ["changed"] + words[101:])
    unrelated = " ".join(f"other{i}" for i in range(200))
    rows, summary = score(tmp_path, [chat("Q?", text), chat("Q?", edited), chat("Q?", unrelated)],
                          ids=["m", "k", "z"], signals=[defaults.SIGNAL_NEAR_DUPLICATE])
    assert [r[defaults.SIGNAL_NEAR_DUPLICATE] for r in rows] == [True, False, False]
    assert rows[0][constants.DUPLICATE_OF_COLUMN] == "k" and rows[1][constants.DUPLICATE_OF_COLUMN] is None
    assert summary["signals"] == {defaults.SIGNAL_NEAR_DUPLICATE: 1}


def test_composed_and_decomposed_spellings_are_duplicates_and_kept_as_written(tmp_path):
    composed = chat("Qu'est-ce qu'un caf\u00e9 cr\u00e8me ?", "Un caf\u00e9 avec de la cr\u00e8me, servi chaud. " * 8)
    decomposed = [{**m, "content": unicodedata.normalize("NFD", m["content"])} for m in composed]
    assert decomposed != composed
    rows, _ = score(tmp_path, [composed, decomposed], ids=["a", "b"])
    assert [r[defaults.SIGNAL_EXACT_DUPLICATE] for r in rows] == [False, True]
    assert rows[1][constants.DUPLICATE_OF_COLUMN] == "a"
    rows, _ = score(tmp_path, [composed, decomposed], ids=["a", "b"], signals=[defaults.SIGNAL_NEAR_DUPLICATE])
    assert [r[defaults.SIGNAL_NEAR_DUPLICATE] for r in rows] == [False, True]
    assert [r["messages"] for r in rows] == [composed, decomposed]


def test_exact_copies_point_at_the_final_representative(tmp_path):
    words = [f"token{i}" for i in range(200)]
    text, edited = " ".join(words), " ".join(words[:50] + ["changed"] + words[51:])
    rows, _ = score(tmp_path, [chat("Q?", text), chat("Q?", edited), chat("Q?", text)], ids=["b", "a", "c"])
    assert [r[defaults.SIGNAL_NEAR_DUPLICATE] for r in rows] == [True, False, False]
    assert [r[defaults.SIGNAL_EXACT_DUPLICATE] for r in rows] == [False, False, True]
    # "c" copies "b", whose cluster keeps "a"
    assert [r[constants.DUPLICATE_OF_COLUMN] for r in rows] == ["a", None, "a"]


def test_streaming_in_small_chunks_gives_the_same_result(tmp_path):
    convs = [chat(f"Question {i}?", " ".join([GOOD] * 4) + f" Variant {i % 4}.") for i in range(12)]
    convs += [chat("Hi", "Yes."), chat("Q?", "Sure! " + GOOD)]
    whole, _ = score(tmp_path, convs)
    pieces, _ = score(tmp_path, convs, batch_rows=3, max_batch_bytes=1024)
    assert pieces == whole
    assert sum(r[defaults.SIGNAL_NEAR_DUPLICATE] for r in whole) > 0  # found across chunks too


def test_output_keeps_every_row_and_column(tmp_path):
    convs = [chat("Q?", GOOD), chat("Q?", "ok"), chat("Explain.", "Certainly! " + GOOD)]
    rows, _ = score(tmp_path, convs)
    table = pq.read_table(tmp_path / constants.SCORES_FILE)
    assert table.column_names[:6] == SCHEMA.names
    assert active_signals(ScoreConfig()) <= set(table.column_names)
    assert defaults.SIGNAL_WRONG_LANGUAGE not in table.column_names  # language id is off by default
    assert [r["source_row"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert 0.0 <= r[constants.SCORE_COLUMN] <= 1.0
        assert r[constants.REASONS_COLUMN] == [s for s in defaults.SCORE_SIGNALS if r.get(s)]


def test_malformed_rows_are_scored_not_crashed(tmp_path):
    convs = [None, [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": None}],
             [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": GOOD}]]
    rows, _ = score(tmp_path, convs)
    assert [r[defaults.SIGNAL_BAD_STRUCTURE] for r in rows] == [True, True, False]


def test_empty_input_writes_an_empty_scores_file(tmp_path):
    rows, summary = score(tmp_path, [])
    assert rows == [] and summary["rows"] == 0
    assert {constants.SCORE_COLUMN, constants.TOKENS_EST_COLUMN, constants.REASONS_COLUMN} <= set(
        pq.read_schema(tmp_path / constants.SCORES_FILE).names)


def test_unreadable_inputs_raise_one_line_errors(tmp_path):
    cfg = ScoreConfig()
    with pytest.raises(InputError, match="no such file"):
        score_conversations(tmp_path / "missing.parquet", tmp_path / "out.parquet", cfg)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="bad.parquet: not a readable Parquet file"):
        score_conversations(tmp_path / "bad.parquet", tmp_path / "out.parquet", cfg)
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "nomsg.parquet")
    with pytest.raises(InputError, match="missing column.*messages"):
        score_conversations(tmp_path / "nomsg.parquet", tmp_path / "out.parquet", cfg)
    pq.write_table(pa.table({"id": ["a"], "messages": ["text"]}), tmp_path / "flat.parquet")
    with pytest.raises(InputError, match="must be list<struct<role, content>>"):
        score_conversations(tmp_path / "flat.parquet", tmp_path / "out.parquet", cfg)


def test_config_checks_signal_names_and_patterns(tmp_path):
    base = {"ingest": {"sources": [{"path": "x.jsonl"}]}}
    with pytest.raises(ConfigError, match="unknown signal"):
        validate_config({**base, "score": {"weights": {"too_shrt": 0.5}}})
    cfg = validate_config({**base, "score": {"weights": {"too_short": 0.4}}}).score
    assert cfg.weights[defaults.SIGNAL_TOO_SHORT] == 0.4 and cfg.weights[defaults.SIGNAL_SYCOPHANTIC] == 0.3
    src = write(tmp_path / "c.parquet", [chat("Q?", GOOD)])
    with pytest.raises(ConfigError, match="refusal_pattern: invalid RE2"):
        score_conversations(src, tmp_path / "o.parquet", ScoreConfig(refusal_pattern="(unclosed"))


FRENCH = ("La photosynthèse transforme la lumière, l'eau et le dioxyde de carbone en sucre et en "
          "oxygène dans les chloroplastes des cellules végétales.")
GERMAN = ("Die Photosynthese wandelt Licht, Wasser und Kohlendioxid in den Chloroplasten der "
          "Pflanzenzellen in Zucker und Sauerstoff um.")


def test_language_identification_flags_other_languages(tmp_path):
    convs = [chat("What does photosynthesis do?", GOOD), chat("Que fait la photosynthèse ?", FRENCH),
             chat("Was macht die Photosynthese?", GERMAN), chat("?", "..."),
             chat("Translate into French: plants make sugar.", FRENCH)]
    rows, summary = score(tmp_path, convs, languages=["en", "de"])
    assert [r[constants.LANGUAGE_COLUMN] for r in rows][:3] == ["en", "fr", "de"]
    assert rows[3][constants.LANGUAGE_SCORE_COLUMN] < 0.5 or rows[3][constants.LANGUAGE_COLUMN] == "und"
    assert [r[defaults.SIGNAL_WRONG_LANGUAGE] for r in rows][:4] == [False, True, False, False]
    assert defaults.SIGNAL_WRONG_LANGUAGE in rows[1][constants.REASONS_COLUMN]
    assert rows[1][constants.SCORE_COLUMN] == pytest.approx(1 - ScoreConfig().weights[defaults.SIGNAL_WRONG_LANGUAGE])
    assert summary["signals"][defaults.SIGNAL_WRONG_LANGUAGE] == sum(r[defaults.SIGNAL_WRONG_LANGUAGE] for r in rows)
    strict, _ = score(tmp_path, convs, languages=["en"], language_min_confidence=1.0)
    assert not any(r[defaults.SIGNAL_WRONG_LANGUAGE] for r in strict)  # nothing is that sure


def test_language_codes_are_checked_at_load():
    base = {"ingest": {"sources": [{"path": "x.jsonl"}]}}
    for bad, shown in ((["English"], "'English'"), (["en", "qq"], "'qq'")):
        with pytest.raises(ConfigError, match=rf"score: .*languages: unknown code\(s\) \[{shown}\]"):
            validate_config({**base, "score": {"languages": bad}})
