"""Ingest: Alpaca / ShareGPT / OpenAI messages / prompt-completion rows from JSONL, JSON,
Parquet, CSV, ``datasets`` folders or the hub -> one canonical conversation table.

``conversations.parquet`` columns: ``id`` (content hash of the messages), ``source``, ``source_index``
(its position in ``ingest.sources``), ``source_row``, ``format``, ``messages`` (list of ``{role, content}``),
``metadata`` (JSON).
``rejects.parquet`` columns: ``source``, ``source_row``, ``reason``, ``message``, ``raw``.
The stage's entry is ``entry.py``; ``sources.py`` streams every source through ``readers.py`` (files,
folders, the hub), ``formats.py`` (row formats -> messages) and ``validate.py`` into ``writer.py``
(the schemas); ``reasons.py`` lists the reject codes; ``output.py`` is ``sft-pipeline ingest --out``.
"""
