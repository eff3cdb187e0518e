"""One run's stage outputs as ``inspect`` reads them: id columns read once, single rows read by id, the
tokenize stage's tokenizer and settings rebuilt from its manifest (loaded only when a row needs them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sft_pipeline import constants
from sft_pipeline.artifacts import read_manifest
from sft_pipeline.errors import InputError

POSITION_COLUMNS = ("id", "source", "source_row")


@dataclass(frozen=True)
class Encoder:
    """What the tokenize stage encoded with: its tokenizer, the template's markers and its settings."""

    tokenizer: Any
    info: Any  # sft_pipeline.tokenize.template.TemplateInfo
    settings: Any  # sft_pipeline.tokenize.masks.EncodeSettings

    def encode(self, messages: list[dict], whole: bool = False):
        """The row encoded as the stage encodes it (``whole``: without truncation); None or a RowProblem
        when it cannot be."""
        from dataclasses import replace

        from sft_pipeline.tokenize.encode import encode_many

        settings = replace(self.settings, max_length=None) if whole else self.settings
        return encode_many([messages], self.tokenizer, self.info, settings)[0]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


class RunFiles:
    """Lazy, cached access to the files of the stage folders ``dirs`` (stage name -> folder)."""

    def __init__(self, dirs: dict[str, Path]):
        self.dirs = {name: Path(folder) for name, folder in dirs.items()}
        self._tables: dict[tuple[str, str, tuple], pa.Table] = {}
        self._manifests: dict[str, dict] = {}
        self._encoder: Encoder | None = None
        self.encoder_problem: str | None = None  # why the tokenize stage's tokenizer cannot be loaded here

    def has(self, stage: str) -> bool:
        return stage in self.dirs

    def path(self, stage: str, name: str) -> Path:
        return self.dirs[stage] / name

    def manifest(self, stage: str) -> dict:
        if stage not in self._manifests:
            try:
                self._manifests[stage] = read_manifest(self.dirs[stage])
            except (OSError, ValueError):
                raise InputError(f"{self.dirs[stage]}: no readable manifest.json") from None
        return self._manifests[stage]

    def columns(self, stage: str, name: str, columns: tuple[str, ...]) -> pa.Table:
        """Some columns of a stage file (read once; a missing file or column is one line)."""
        key = (stage, name, columns)
        if key not in self._tables:
            path = self.path(stage, name)
            try:
                self._tables[key] = pq.read_table(path, columns=list(columns))
            except (OSError, pa.ArrowException) as exc:
                raise InputError(f"{path}: cannot read {', '.join(columns)} ({str(exc).splitlines()[0]})") from None
        return self._tables[key]

    def column_names(self, stage: str, name: str) -> list[str]:
        return pq.read_schema(self.path(stage, name)).names

    def rows(self, stage: str, name: str, column: str, value: Any) -> list[dict]:
        """The rows of a stage file whose ``column`` equals ``value``, in file order."""
        path = self.path(stage, name)
        try:
            table = pq.read_table(path, filters=[(column, "==", value)])
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path}: cannot read ({str(exc).splitlines()[0]})") from None
        return table.to_pylist()

    def positions(self, stage: str, name: str, row_id: str) -> list[int]:
        """Row indices of ``row_id`` in a file with an ``id`` column."""
        ids = self.columns(stage, name, ("id",)).column("id")
        return pc.indices_nonzero(pc.equal(ids, row_id)).to_pylist()

    def packed_position(self, row_id: str) -> tuple[int, int] | None:
        """(packed row, sequence within it) of ``row_id`` in a packed ``train.parquet``."""
        ids = self.columns(constants.STAGE_TOKENIZE, constants.TRAIN_TOKENS_FILE, ("ids",)).column("ids")
        ids = ids.combine_chunks()
        hits = pc.indices_nonzero(pc.equal(pc.list_flatten(ids), row_id)).to_pylist()
        if not hits:
            return None
        parents = pc.list_parent_indices(ids).to_pylist()
        row = parents[hits[0]]
        return row, hits[0] - ids.offsets[row].as_py()

    def encoder(self) -> Encoder | None:
        """The tokenize stage's encoder (loaded once), or None: no tokenize output, or ``encoder_problem``."""
        if self._encoder is None and self.encoder_problem is None and self.has(constants.STAGE_TOKENIZE):
            try:
                self._encoder = self._load_encoder()
            except Exception as exc:  # noqa: BLE001 - a tokenizer that cannot be loaded here is shown, not fatal
                self.encoder_problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return self._encoder

    def _load_encoder(self) -> Encoder:
        from sft_pipeline.config import ModelConfig, TokenizeConfig
        from sft_pipeline.models import load_tokenizer
        from sft_pipeline.tokenize.masks import EncodeSettings
        from sft_pipeline.tokenize.template import learn_template

        config = self.manifest(constants.STAGE_TOKENIZE).get("config", {})
        cfg = TokenizeConfig.model_validate(config.get("tokenize", {}))
        tokenizer = load_tokenizer(ModelConfig.model_validate(config.get("model", {})))
        settings = EncodeSettings(max_length=cfg.max_length, train_on=cfg.train_on, truncation=cfg.truncation)
        return Encoder(tokenizer, learn_template(tokenizer), settings)
