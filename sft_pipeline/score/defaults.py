"""The score stage's vocabulary and defaults: its signal names, their default weights, the refusal and
disclaimer patterns, and the languages lid.176 knows (``ScoreConfig`` takes its defaults from here)."""

# Quality signals: each is a boolean column of scores.parquet.
# Turn-level signals are computed per assistant turn against the user turn before it.
SIGNAL_TOO_SHORT = "too_short"
SIGNAL_TOO_VERBOSE = "too_verbose"
SIGNAL_SYCOPHANTIC = "sycophantic_opener"
SIGNAL_HALLUCINATION = "hallucination_marker"
SIGNAL_REFUSAL = "refusal"
SIGNAL_AI_DISCLAIMER = "ai_disclaimer"
TURN_SIGNALS = (SIGNAL_TOO_SHORT, SIGNAL_TOO_VERBOSE, SIGNAL_SYCOPHANTIC, SIGNAL_HALLUCINATION,
                SIGNAL_REFUSAL, SIGNAL_AI_DISCLAIMER)
SEED_SIGNALS = TURN_SIGNALS[:4]  # the seed tutorial's four heuristics
# Conversation-level signals.
SIGNAL_REPETITION = "repetition"
SIGNAL_BAD_STRUCTURE = "bad_structure"
SIGNAL_TOO_LONG = "too_long"
SIGNAL_EXACT_DUPLICATE = "exact_duplicate"
SIGNAL_NEAR_DUPLICATE = "near_duplicate"
SIGNAL_WRONG_LANGUAGE = "wrong_language"  # computed only when score.languages is set
SCORE_SIGNALS = TURN_SIGNALS + (SIGNAL_REPETITION, SIGNAL_BAD_STRUCTURE, SIGNAL_TOO_LONG,
                                SIGNAL_EXACT_DUPLICATE, SIGNAL_NEAR_DUPLICATE, SIGNAL_WRONG_LANGUAGE)
# The weight of each signal (ScoreConfig.weights), and the refusal/disclaimer RE2 patterns.
DEFAULT_SCORE_WEIGHTS = {
    SIGNAL_TOO_SHORT: 0.5,
    SIGNAL_TOO_VERBOSE: 0.2,
    SIGNAL_SYCOPHANTIC: 0.3,
    SIGNAL_HALLUCINATION: 0.1,
    SIGNAL_REFUSAL: 0.3,
    SIGNAL_AI_DISCLAIMER: 0.2,
    SIGNAL_REPETITION: 0.3,
    SIGNAL_BAD_STRUCTURE: 0.5,
    SIGNAL_WRONG_LANGUAGE: 0.5,
    SIGNAL_TOO_LONG: 0.2,
    SIGNAL_EXACT_DUPLICATE: 1.0,
    SIGNAL_NEAR_DUPLICATE: 1.0,
}
_APOS = "['\u2019]"
DEFAULT_REFUSAL_PATTERN = (
    rf"\bI{_APOS}?m sorry,? but I\b|\bI (?:cannot|can{_APOS}?t|won{_APOS}?t|am unable to|am not able to) "
    r"(?:help|assist|provide|comply|fulfill|do that|create|generate|write|answer)\b"
    rf"|\bI{_APOS}?m (?:unable|not able) to (?:help|assist|provide|comply|fulfill|answer)\b"
    r"|\bI must (?:decline|refuse)\b"
)
DEFAULT_DISCLAIMER_PATTERN = (
    r"\bas an? (?:AI|artificial intelligence)(?: language)? (?:model|assistant)\b"
    r"|\bas a (?:large )?language model\b"
    rf"|\bI(?: am|{_APOS}m) (?:just |only )?an AI\b"
)

# The 176 labels of lid.176 (fasttext.cc/docs/en/language-identification.html); the model
# object exposes no label list, and a typo such as "eng" would otherwise flag every row.
LID176_LABELS = frozenset("""
af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co cs cv cy
da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif hr hsb ht hu hy ia
id ie ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo lrc lt lv mai mg mhr min mk ml
mn mr mrj ms mt mwl my myv mzn nah nap nds ne new nl nn no oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru rue
sa sah sc scn sco sd sh si sk sl so sq sr su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa
war wuu xal xmf yi yo yue zh""".split())
