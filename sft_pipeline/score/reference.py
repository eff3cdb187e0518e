"""The seed tutorial's per-row heuristic, verbatim: the reference the vectorised scorer must match
on single-turn rows (tests/test_score.py) and the baseline it is benchmarked against (bench/bench_score.py).
Not used by the pipeline.
"""

from __future__ import annotations


def score_sft_example(example: dict) -> float:
    """Heuristic quality score for an SFT example (the seed tutorial's, verbatim)."""
    score = 1.0
    response = example["response"]
    instruction = example["instruction"]
    # Response length should be proportional to instruction complexity
    instruction_words = len(instruction.split())
    response_words = len(response.split())
    if response_words < 5:
        score -= 0.5  # Too short — likely not useful
    if response_words > instruction_words * 50:
        score -= 0.2  # Suspiciously verbose
    # Responses starting with "Sure!" or "Certainly!" indicate sycophantic training data
    if response.startswith(("Sure!", "Certainly!", "Of course!", "Great question!")):
        score -= 0.3
    # Check for hallucination markers
    if "[CITATION NEEDED]" in response or "I believe" in response[:50]:
        score -= 0.1
    return max(0.0, score)
