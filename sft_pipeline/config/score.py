"""The ``score`` and ``filter`` sections: the quality signals, their weights, and which rows are kept."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from sft_pipeline.config.base import Section
from sft_pipeline.score import defaults


class ScoreConfig(Section):
    """Quality signals and their weights; score = max(0, 1 - sum of weights of fired signals).

    Turn-level signals (sft_pipeline.score.defaults.TURN_SIGNALS) are computed per assistant turn against the user turn
    before it; one fires for the conversation when at least ``min_turn_fraction[signal]`` of its
    assistant turns fire it (signals not listed there fire on any turn). See sft_pipeline.score.
    """

    signals: list[str] = Field(default_factory=lambda: list(defaults.SCORE_SIGNALS), description=(
        "The signals computed (each a boolean column of scores.parquet)."))
    weights: dict[str, float] = Field(default_factory=lambda: dict(defaults.DEFAULT_SCORE_WEIGHTS), description=(
        "Signal -> what it takes off the score when it fires; merged into the defaults."))
    min_turn_fraction: dict[str, float] = Field(
        default_factory=lambda: {defaults.SIGNAL_TOO_SHORT: 0.5, defaults.SIGNAL_TOO_VERBOSE: 0.5},
        description=("Turn-level signal -> the share of a conversation's assistant turns that must fire it for it "
                     "to fire for the conversation; signals not listed fire when any turn does."))
    min_response_words: int = Field(default=5, ge=0, description="too_short: an answer of fewer words.")
    max_verbosity_ratio: float = Field(default=50.0, gt=0, description=(
        "too_verbose: an answer of more than this many times the words of the user turn before it."))
    sycophantic_openers: list[str] = Field(
        default_factory=lambda: ["Sure!", "Certainly!", "Of course!", "Great question!"],
        description="sycophantic_opener: an answer starting with one of these.")
    hallucination_markers: list[str] = Field(default_factory=lambda: ["[CITATION NEEDED]"], description=(
        "hallucination_marker: an answer containing one of these anywhere."))
    hedge_phrases: list[str] = Field(default_factory=lambda: ["I believe"], description=(
        "hallucination_marker too: an answer with one of these in its first hedge_chars characters."))
    hedge_chars: int = Field(default=50, ge=1, description="How far into an answer hedge_phrases are looked for.")
    refusal_pattern: str = Field(default=defaults.DEFAULT_REFUSAL_PATTERN, description=(
        "refusal: an RE2 pattern (case-insensitive) looked for in the first refusal_chars of an answer."))
    refusal_chars: int = Field(default=200, ge=1, description="How far into an answer refusals are looked for.")
    disclaimer_pattern: str = Field(default=defaults.DEFAULT_DISCLAIMER_PATTERN, description=(
        "ai_disclaimer: an RE2 pattern (case-insensitive) looked for anywhere in an answer."))
    repetition_ngram: int = Field(default=4, ge=1, description="repetition: the word n-gram length.")
    repetition_threshold: float = Field(default=0.3, ge=0, le=1, description=(
        "repetition: fires above this share of repeated n-grams in the assistant's text."))
    bytes_per_token: float = Field(default=4.0, gt=0, description=(
        "Token estimate n_tokens_est = ceil(UTF-8 bytes / bytes_per_token) + template_tokens_per_message, "
        "per message."))
    template_tokens_per_message: int = Field(default=4, ge=0, description=(
        "The chat template's tokens per message in the token estimate."))
    max_tokens_est: int = Field(default=4096, ge=1, description="too_long: more estimated tokens than this.")
    near_duplicate_threshold: float = Field(default=0.85, gt=0, le=1, description=(
        "near_duplicate: an estimated Jaccard similarity (MinHash) at least this."))
    minhash_permutations: int = Field(default=64, ge=16, le=1024, description="MinHash permutations per row.")
    minhash_ngram: int = Field(default=5, ge=1, description="MinHash shingles: word n-grams over all messages.")
    languages: list[str] = Field(default_factory=list, description=(
        "wrong_language (fastText lid.176): the ISO 639 codes to keep, e.g. [en]; rows confidently in another "
        "language fire it. Empty: off."))
    language_min_confidence: float = Field(default=0.5, ge=0, le=1, description=(
        "wrong_language fires only when the identified language has at least this confidence."))
    language_chars: int = Field(default=1000, ge=16, description=(
        "The head of the user and assistant text given to language identification, in characters."))
    batch_rows: int = Field(default=4096, ge=1, le=1_000_000, description="Rows per scoring chunk.")
    max_batch_bytes: int = Field(default=8 * 2**20, ge=1024, description=(
        "Text per scoring chunk, in bytes (bounds memory)."))

    @field_validator("weights", mode="before")
    @classmethod
    def _merge_weights(cls, value: Any) -> Any:
        return {**defaults.DEFAULT_SCORE_WEIGHTS, **value} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _check_names(self) -> "ScoreConfig":
        for field, names, allowed in (("signals", self.signals, defaults.SCORE_SIGNALS),
                                      ("weights", self.weights, defaults.SCORE_SIGNALS),
                                      ("min_turn_fraction", self.min_turn_fraction, defaults.TURN_SIGNALS)):
            unknown = sorted(set(names) - set(allowed))
            if unknown:
                raise ValueError(f"{field}: unknown signal(s) {unknown}; known: {list(allowed)}")
        if any(w < 0 for w in self.weights.values()) or any(not 0 < f <= 1 for f in self.min_turn_fraction.values()):
            raise ValueError("weights must be >= 0 and min_turn_fraction values in (0, 1]")
        unknown = sorted(set(self.languages) - defaults.LID176_LABELS)
        if unknown:
            raise ValueError(f"languages: unknown code(s) {unknown}; lid.176 knows {len(defaults.LID176_LABELS)} "
                             "ISO 639 codes such as en, de, fr, zh, ja")
        return self


class FilterConfig(Section):
    """Which scored rows are kept for training."""

    threshold: float = Field(default=0.7, ge=0, le=1, description="Keep rows whose score is at least this.")
    top_fraction: float | None = Field(default=None, gt=0, le=1, description=(
        "When set, keep this fraction of the rows, best scores first (ties by id), instead of a threshold."))
    random_rows: int | None = Field(default=None, ge=1, description=(
        "When set, keep this many of the scored rows drawn at random whatever their score (by id hash under "
        "run.seed; all of them when there are fewer), instead of threshold: the random control that "
        "`sft-pipeline sweep --random-control` trains beside each setting."))

    @model_validator(mode="after")
    def _check_one_method(self) -> "FilterConfig":
        if self.random_rows is not None and self.top_fraction is not None:
            raise ValueError("set top_fraction or random_rows, not both")
        return self
