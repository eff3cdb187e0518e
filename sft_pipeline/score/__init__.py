"""The score stage: one boolean column per quality signal, a weighted ``score`` and ``reasons``.

Signals (names and default weights in ``sft_pipeline.score.defaults``; thresholds in ``ScoreConfig``):

* the seed tutorial's four heuristics, per assistant turn against the user turn before it:
  ``too_short`` (< 5 words), ``too_verbose`` (> 50x the instruction's words),
  ``sycophantic_opener`` ("Sure!", "Certainly!", ...), ``hallucination_marker``
  ("[CITATION NEEDED]" anywhere, "I believe" in the first 50 characters);
* ``refusal`` (refusal phrases near the start of a turn), ``ai_disclaimer``
  ("as an AI language model", ...);
* ``repetition`` (share of repeated word n-grams in the assistant's text), ``bad_structure``,
  ``too_long`` (estimated tokens, column ``n_tokens_est``);
* ``exact_duplicate`` and ``near_duplicate`` (MinHash LSH): one representative per cluster,
  the row with the smallest id, is kept unflagged; the others name it in ``duplicate_of``;
* optionally ``wrong_language`` (fastText lid.176, columns ``language``/``language_score``),
  on when ``score.languages`` lists the codes to keep (sft_pipeline.score.language).

How turn-level signals aggregate over a multi-turn conversation is described in
``sft_pipeline.score.signals``. ``score = max(0, 1 - sum of weights of fired signals)``.
"""
