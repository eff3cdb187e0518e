"""The filter stage: keep rows by quality score; never recompute a signal.

Only ``id``, ``score`` and ``n_tokens_est`` are read to decide; the rows are then streamed once
into ``filtered.parquet`` (kept) and ``dropped.parquet`` (dropped, with ``dropped_by``), so
kept + dropped == input rows. Two modes:

* ``threshold``: keep ``score >= threshold`` (the seed's 0.7);
* ``top_fraction``: keep the best ``round(fraction * rows)`` rows by score, ties broken by
  ``id`` then input order (deterministic).

Also written: ``sweep.json`` (rows and estimated tokens kept at thresholds 0.0, 0.1 ... 1.0;
tokens are the score stage's ``n_tokens_est``: ceil(UTF-8 bytes / 4) + 4 per message) and a
score histogram PNG.

The stage's entry is ``entry.py``; the split, the sweep and the histogram are ``split.py``.
"""
