"""Tokenize stage: assistant-only label masks, held-out split, packing.

``entry.run_stage`` is the stage's entry; ``token_files.tokenize_split`` runs the whole stage on
``filtered.parquet``; ``masks.encode_conversation`` turns one conversation into ``input_ids``/``labels``;
``template.learn_template`` reads a chat template's end-of-turn markers; ``encode`` batches rows over
processes; ``split`` draws the held-out rows; ``verify`` is the label-mask gate; ``packing`` and
``preview`` write the packed rows and ``mask_preview.md``.
"""
