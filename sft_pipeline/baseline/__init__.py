"""The baseline stage: the base model measured once on the held-out rows and prompts (``base_eval.json``).

A change to training alone, or every branch of a sweep, reuses it; evaluate reads it back, checked by the
digest of the inputs it answered.
"""
