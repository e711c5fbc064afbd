"""Official VQA answer processing (GT-Vision-Lab/VQA vqaEval.py, main since commit a013f00), for VQA accuracy."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

# Tables as in PythonEvaluationTools/vqaEvaluation/vqaEval.py of GT-Vision-Lab/VQA (the master
# version with straight apostrophes). Keys such as "Im" or "Id've" hold capitals and so never match
# (words are lower-cased first): kept anyway, the official table has them.
CONTRACTIONS: Mapping[str, str] = MappingProxyType({
    'aint': "ain't", 'arent': "aren't", 'cant': "can't", 'couldve': "could've", 'couldnt': "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", 'didnt': "didn't", 'doesnt': "doesn't",
    'dont': "don't", 'hadnt': "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", 'hasnt': "hasn't",
    'havent': "haven't", 'hed': "he'd", "hed've": "he'd've", "he'dve": "he'd've", 'hes': "he's",
    'howd': "how'd", 'howll': "how'll", 'hows': "how's", "Id've": "I'd've", "I'dve": "I'd've", 'Im': "I'm",
    'Ive': "I've", 'isnt': "isn't", 'itd': "it'd", "itd've": "it'd've", "it'dve": "it'd've", 'itll': "it'll",
    "let's": "let's", 'maam': "ma'am", 'mightnt': "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", 'mightve': "might've", 'mustnt': "mustn't", 'mustve': "must've",
    'neednt': "needn't", 'notve': "not've", 'oclock': "o'clock", 'oughtnt': "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", 'shant': "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", 'shouldve': "should've", 'shouldnt': "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": 'somebodyd',
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", 'somebodyll': "somebody'll",
    'somebodys': "somebody's", 'someoned': "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", 'someonell': "someone'll", 'someones': "someone's",
    'somethingd': "something'd", "somethingd've": "something'd've", "something'dve": "something'd've",
    'somethingll': "something'll", 'thats': "that's", 'thered': "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", 'therere': "there're", 'theres': "there's", 'theyd': "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", 'theyll': "they'll", 'theyre': "they're",
    'theyve': "they've", 'twas': "'twas", 'wasnt': "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    'weve': "we've", 'werent': "weren't", 'whatll': "what'll", 'whatre': "what're", 'whats': "what's",
    'whatve': "what've", 'whens': "when's", 'whered': "where'd", 'wheres': "where's", 'whereve': "where've",
    'whod': "who'd", "whod've": "who'd've", "who'dve": "who'd've", 'wholl': "who'll", 'whos': "who's",
    'whove': "who've", 'whyll': "why'll", 'whyre': "why're", 'whys': "why's", 'wont': "won't",
    'wouldve': "would've", 'wouldnt': "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    'yall': "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", 'youd': "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", 'youll': "you'll", 'youre': "you're", 'youve': "you've",
})  # fmt: skip
NUMBER_WORDS: Mapping[str, str] = MappingProxyType({
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
})  # fmt: skip
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})
# Order matters: each is replaced in turn. "'", ":" and "." are not here (periods have their own rule).
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip

# The official pattern is "(?!<=\d)(\.)(?!\d)": a mistyped look-behind that is really a look-ahead
# for "<=" + digit, so in effect "a period not followed by a digit" ("3.5" keeps its point, "a.b"
# and "3." lose theirs). Copied as is so that odd inputs behave identically.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(\,)(\d)")
# The official code passes re.UNICODE positionally where re.sub expects `count`, so at most
# int(re.UNICODE) == 32 periods are stripped.
_MAX_PERIODS_STRIPPED = 32


def strip_punctuation(text: str) -> str:
    """The official processPunctuation().

    A mark touching a space ("a ,b", "yes, no"), or any mark at all once the text contains a
    digit-comma-digit ("1,000"), is deleted; otherwise it becomes a space ("left-handed" ->
    "left handed"). The test always looks at the original text, not the partly cleaned one.
    """
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if delete_all or touches_space else " ")
    return _PERIOD_STRIP.sub("", out, count=_MAX_PERIODS_STRIPPED)


def map_digits_and_articles(text: str) -> str:
    """The official processDigitArticle(): lower-case, number words to digits, drop articles, expand contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def clean_answer(text: str) -> str:
    """What the official evaluate() does to every answer and prediction first: tabs and newlines to
    spaces, surrounding white space stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(text: str) -> str:
    """An answer fully processed as the official evaluate() processes a question whose answers differ:
    cleaned, then processPunctuation(), then processDigitArticle()."""
    return map_digits_and_articles(strip_punctuation(clean_answer(text)))


def process_question(prediction: str, answers: Sequence[str]) -> tuple[str, list[str]]:
    """The prediction and the annotators' answers as the official evaluate() compares them (vqaEval.py
    since commit a013f00, "Fixed processing answers bug"): all are cleaned; then, only when the answers
    are not all identical, all of them and the prediction are punctuation- and digit/article-processed.
    When the answers agree, neither side is processed, so a raw prediction must equal them as written."""
    cleaned = [clean_answer(a) for a in answers]
    if len(set(cleaned)) > 1:
        return normalize_vqa_answer(prediction), [normalize_vqa_answer(a) for a in answers]
    return clean_answer(prediction), cleaned
