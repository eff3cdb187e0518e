"""The evaluate stage: base vs tuned on the same items, paired intervals, the gate, the report.

* :mod:`~sft_pipeline.evaluate.model_eval`: one model measured on the shared inputs (held-out loss, prompt
  benchmarks, generation behaviour), and the comparison of two such measurements;
* :mod:`~sft_pipeline.evaluate.entry`: the stage's entry (``run_stage``);
* :mod:`~sft_pipeline.evaluate.gate`: the regression gate over the paired intervals;
* the rest: generation, held-out loss, the benchmarks and their checkers, bootstrap statistics.

The base model is measured by the baseline stage (:mod:`sft_pipeline.baseline`). This package file imports
nothing, so reading a verdict or a statistic does not load torch.
"""
