"""Penn Treebank tokenisation of captions as pycocoevalcap's PTBTokenizer does it, in pure Python."""

# Independent implementation of the Penn Treebank tokenisation conventions (split off punctuation,
# split contractions, normalise quotes and brackets, keep numbers, hyphenated words and common
# abbreviations whole). It contains no Stanford CoreNLP code, rules or data. Its behaviour was
# verified black-box against the output of the stanford-corenlp-3.4.1.jar that pycocoevalcap 1.2
# runs (`PTBTokenizer -preserveLines -lowerCase`), on the recorded fixtures and on thousands of
# generated caption-like lines: where the outputs differed the rules here were adjusted, and the
# word lists below (common English words and abbreviations) keep the entries on which both agree.
#
# Known differences, none of them caption-like (KNOWN_DIFFERENCES names the recorded cases):
#   - apostrophes and backticks inside rare non-English words (o`o, O'o, xO'Neil);
#   - e-mail addresses, URLs, SGML/HTML markup and emoticons in other than their common forms;
#   - run-ons without spaces mixing capitals, quotes and symbols ("FRISBEE’MANY", "with.-5");
#   - letters that only Unicode versions after 6.0 assign (CoreNLP deletes them, here they are
#     letters), and a soft hyphen between a digit and a letter ("12\u00adab").

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

__all__ = ["ptb_tokenize", "ptb_tokenize_lines"]

# Recorded fixture texts (tests/fixtures/metrics/ptb.json) on which the output here differs from
# CoreNLP's, with the reason; tests/test_metrics.py checks that each still differs.
KNOWN_DIFFERENCES = {
    "o`o O'o": "CoreNLP keeps o`o and O'o whole; no PTB convention says why (o'a, a'a and a`b split)",
}

# The tokens pycocoevalcap's PTBTokenizer drops after tokenising. It compares them with the
# lower-cased output, so "-lrb-", "-rrb-" and friends survive.
PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)


# --- Characters ---------------------------------------------------------------------------------


def _class_body(predicate: Callable[[str], bool]) -> str:
    """A regex character-class body for the Basic Multilingual Plane characters that satisfy `predicate`.

    Only the BMP: the reference tokeniser deletes every supplementary character (emoji, rare
    scripts) as untokenisable.
    """
    ranges: list[list[int]] = []
    for code in range(0x10000):
        if 0xD800 <= code < 0xE000 or not predicate(chr(code)):
            continue
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "".join(
        f"\\u{start:04x}-\\u{end:04x}" if end > start else f"\\u{start:04x}" for start, end in ranges
    )


def _is_letter(char: str) -> bool:
    # Combining marks of the alphabetic scripts count as letters, so that decomposed accents stay
    # inside their word; later marks (variation selectors, marks for symbols) are deleted.
    category = unicodedata.category(char)
    return category[0] == "L" or (category in ("Mn", "Mc") and (char < "\u1000" or char in "\u1885\u1886"))


_LETTERS = _class_body(_is_letter)
_DIGITS = _class_body(lambda char: unicodedata.category(char) == "Nd")
L = f"[{_LETTERS}]"
D = f"[{_DIGITS}]"
AN = f"[{_LETTERS}{_DIGITS}]"
_ALNUM = re.compile(AN)
_SPACE = r"[^\S\x85]"  # white space; U+0085 is read as a Windows-1252 ellipsis instead

# Stand-alone symbols the reference keeps as one-character tokens (found by probing every BMP
# character); any other character that is neither a letter, a digit nor white space is deleted.
_SYMBOL_RANGES = [
    (0x0021, 0x007E), (0x0080, 0x0080), (0x0085, 0x0085), (0x0091, 0x0094), (0x0096, 0x0097),
    (0x00A1, 0x037E), (0x0384, 0x0387), (0x03F6, 0x03F6), (0x055A, 0x0589), (0x05BE, 0x05C6),
    (0x05F3, 0x05F4), (0x0600, 0x0603), (0x0606, 0x060C), (0x061B, 0x061B), (0x061E, 0x066A),
    (0x066D, 0x070D), (0x070F, 0x074C), (0x07F6, 0x07F8), (0x0964, 0x0965), (0x0E3F, 0x0E4F),
    (0x1FBD, 0x1FBD), (0x2013, 0x2023), (0x2026, 0x2026), (0x2030, 0x203B), (0x203E, 0x2042),
    (0x2044, 0x2044), (0x2070, 0x2070), (0x2074, 0x208E), (0x20A0, 0x20A0), (0x20A4, 0x20A4),
    (0x20AC, 0x20AC), (0x2100, 0x214F), (0x2153, 0x215E), (0x2190, 0x2BFF), (0x3001, 0x3002),
    (0x3012, 0x3012), (0x30FB, 0x30FB), (0xFF01, 0xFF65), (0xFFE0, 0xFFE1), (0xFFE5, 0xFFE6),
]  # fmt: skip
_SYMBOL = re.compile("[" + "".join(f"\\u{start:04x}-\\u{end:04x}" for start, end in _SYMBOL_RANGES) + "]")

# PTB spells brackets as words; quotes, dashes and a few currency signs get ASCII forms.
_SYMBOL_FORMS = {
    "(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-",
    "\u201c": "``", "\u00ab": "``", "\x93": "``", "\u201d": "''", "\u00bb": "''", "\x94": "''",
    "\u2018": "`", "\u201b": "`", "\u2039": "`", "\x91": "`", "\u2019": "'", "\u203a": "'", "\x92": "'",
    "\u2013": "--", "\u2014": "--", "\u2015": "--", "\x96": "--", "\x97": "--", "\u00ad": "-",
    "\u2026": "...", "\x85": "...", "\u00a2": "cents", "\u00a3": "#", "\u00a4": "$", "\u20a0": "$",
    "\u20ac": "$", "\x80": "$", "\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3",
    "\u2154": "2/3",
}  # fmt: skip

_CURLY = "\u2019\x92"  # right single quotation mark, also as its Windows-1252 byte
_APOSTROPHE = f"['{_CURLY}]"
_QUOTE_PAIR = "`\u2018\u2019\u201c\u201d\u00ab\u00bb"  # two of these in a row make one token

# --- Word lists (common English words, each checked against the reference) ----------------------

# Abbreviations that keep their period, even when another word is glued to them ("Mr.Smith").
_ABBREVIATIONS = [
    "adm", "assoc", "ave", "capt", "cf", "cie", "cmdr", "col", "dept", "det", "dr", "ft", "gen", "gov",
    "hon", "insp", "jos", "lt", "maj", "messrs", "mlle", "mme", "mr", "mrs", "ms", "mt", "natl", "ph",
    "pres", "prof", "rep", "rev", "sen", "sgt", "st", "ste", "supt", "vs", "wm"
]  # fmt: skip
# Abbreviations that can end a sentence (months, days, states, company suffixes, ...): they keep
# their period too, but a lone letter glued to them is a word of its own ("Jr.x" -> "Jr." "x").
_FINAL_ABBREVIATIONS = [
    "al", "ala", "apr", "ariz", "assn", "aug", "bldg", "blvd", "bros", "calif", "co", "colo", "conn",
    "corp", "cos", "ct", "dec", "esq", "est", "etc", "ext", "feb", "fla", "fri", "ga", "inc", "ind", "intl",
    "jan", "jr", "jul", "jun", "kan", "kans", "ky", "ltd", "mar", "md", "mich", "minn", "mo", "mon", "mont",
    "neb", "nev", "nov", "oct", "okla", "penn", "plc", "rd", "sep", "sept", "sq", "sr", "tel", "tenn",
    "thu", "thurs", "tue", "tues", "univ", "va", "vt", "wed", "wis", "wisc", "wyo"
]  # fmt: skip
# Abbreviations that are also ordinary words: only capitalised ("Mass." but "mass .").
_CAPITALISED_ABBREVIATIONS = ["Ark", "Del", "Ill", "La", "Mass", "Miss", "Ore", "Pa", "Tex", "Wash"]

# Capitalised words that start a new sentence after a one-letter initial: "... letter A. The ..."
# splits the period off, "A. Smith" keeps it.
_SENTENCE_STARTS = [
    "the", "a", "an", "he", "she", "it", "they", "we", "you", "this", "that", "these", "there", "then",
    "but", "so", "if", "in", "at", "as", "one", "some", "many", "her", "their", "our", "what", "when",
    "while", "after", "since", "however", "here", "now", "yet", "mr.", "ms.", "such", "about", "other",
    "more", "once", "last", "according"
]  # fmt: skip

# File names that start with a digit ("2.jpg") need a known extension to stay one token.
_FILE_EXTENSIONS = [
    "jpg", "jpeg", "png", "gif", "bmp", "pdf", "txt", "doc", "docx", "ppt", "html", "htm", "xml", "c", "h",
    "cpp", "java", "py", "pl", "php", "exe", "zip", "gz", "tar", "mp3", "wav", "mov", "ps", "jar", "class",
    "bat"
]  # fmt: skip


def _alternatives(words: Sequence[str]) -> str:
    # Longest first, as a regex alternation takes the first alternative that matches.
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))


def _abbreviation() -> str:
    capitalised = [form for word in _CAPITALISED_ABBREVIATIONS for form in (word, word.upper())]
    words = f"(?i:ph\\.d|{_alternatives(_ABBREVIATIONS + _FINAL_ABBREVIATIONS)})|{_alternatives(capitalised)}"
    return f"(?:{words}|Mfg|mfg|Pty|pty)\\."


def _sentence_start() -> str:
    forms = [form for word in _SENTENCE_STARTS for form in (word.capitalize(), word.upper())]
    return f"{_SPACE}+(?:{_alternatives(forms)}){_SPACE}"


# --- Token shapes -------------------------------------------------------------------------------


class _Rule(NamedTuple):
    """One token shape. A (?P<context>...) group at the end of `pattern` must follow the token and
    counts towards the longest match, as trailing context does in a lexer, but is not consumed."""

    pattern: re.Pattern[str]
    form: Callable[[str], str] | None


def _rule(pattern: str, form: Callable[[str], str] | None = None, flags: int = 0) -> _Rule:
    return _Rule(re.compile(pattern, flags), form)


def _nonbreaking(token: str) -> str:
    # A token that holds a space ("3 1/2", a phone number, an SGML tag) gets a non-breaking one.
    return token.replace(" ", "\u00a0")


def _brackets(token: str) -> str:
    return token.replace("(", "-LRB-").replace(")", "-RRB-")


def _straight_apostrophe(token: str) -> str:
    return re.sub(f"[{_CURLY}]", "'", token)


def _quote_pair(token: str) -> str:
    return "".join(_SYMBOL_FORMS.get(char, char) for char in token)


_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": "''", "&apos;": "'"}

# Anything but white space, brackets, double quotes and "@" can be part of an e-mail address,
# which does not start with a period after its "@", nor end with one.
_NOT_EMAIL = '\\s"()<>{}|@'
_NUMBER = f"[-+]?(?:{D}+|[.,:]{D}+)(?:[.,:]{D}+)*"
# One part of "and/or", "t-shirt/jeans" or "9/11": ASCII only, as in the reference.
_SLASH_PART = "[A-Za-z0-9]+(?:-[A-Za-z]+)*"

# A word after an elided d', l', o' or n': d'Artagnan, l'amour, o'clock.
_ELIDED = f"(?:[dloDLO]|[nN](?!{_APOSTROPHE}[tT]))['\u2018{_CURLY}](?:[A-Za-z]{AN}+|{D}+)"

# A hyphenated ASCII word whose first part has dots or commas: 3.5-inch, U.K.,one-way, ab.cd-ef.
_DOTTED_HYPHENATED = f"[A-Za-z0-9](?:[A-Za-z0-9]|[.,](?=[A-Za-z0-9.,-]))*(?:-{AN}+)+"

# Listed by priority: when two rules match equally long, the earlier one wins.
_RULES = [
    # Contractions and other words PTB splits in two: "do n't", "can not", "gon na".
    # The n't only splits off ASCII words, and keeps letters glued after it ("do n'ts").
    _rule(f"(?P<token>[A-Za-z]+?)(?P<context>(?i:n['`{_CURLY}]t))"),
    _rule(f"(?i:n['`{_CURLY}]t)(?!{L})", _straight_apostrophe),
    _rule(f"(?i:n['`{_CURLY}]t){L}+"),
    _rule(r"(?P<token>(?i:can|gon|got|wan|lem|gim))(?P<context>(?i:not|na|ta|me))(?![A-Za-z])"),
    # After a straight apostrophe 'll, 're and 've need a character after them: at the very end of
    # the input the reference reads them as a quote and a word. A curly one splits even inside a word.
    _rule(r"'(?:(?i:s|d|m)|(?i:ll|re|ve)(?=[\s\S]))(?![A-Za-z])"),
    _rule(f"[{_CURLY}](?i:s|d|m|ll|re|ve)", _straight_apostrophe),
    _rule(r"&apos;(?i:s|d|m|ll|re|ve)(?![A-Za-z])", lambda token: "'" + token[6:]),
    # Words that start with an apostrophe: 'em, 'cause, rock 'n' roll, 't is, the '90s.
    _rule(r"(?P<token>'[tT])(?P<context>(?i:is|was))"),
    _rule(f"['{_CURLY}](?i:em|cause|till?)|'[nN]'?(?![A-Za-z.])|[{_CURLY}][nN][{_CURLY}]?"),
    _rule(f"['{_CURLY}](?:{D}{D}(?={_SPACE}|$)|[2-9]0[sS])"),
    # Words with an inner apostrophe: o'clock, d'Artagnan, O'Neil, ma'am, Hawai'i; y'all splits.
    _rule(f"{_ELIDED}(?:-{AN}+)*"),
    _rule(f"[A-HJ-XZ]['`\u2018{_CURLY}][A-Za-z]{{2,}}"),
    _rule(
        f"{L}+[aeiouyAEIOUY](?:[`\u2018]|['{_CURLY}](?!(?i:s|d|m|ll|re|ve)(?![A-Za-z])))"
        f"[aeiouAEIOUB-DF-HJ-NP-TV-Z]{L}*|[eE]{_APOSTROPHE}er"
    ),
    _rule(f"[yY]{_APOSTROPHE}(?=[A-Za-z])|j{_APOSTROPHE}(?=[a-z])|[dDjJlL]{_APOSTROPHE}(?![A-Za-z])"),
    # Abbreviations and initials keep their period; a one-letter initial loses it when a new
    # sentence visibly starts after it. So does a word directly followed by ".," or ".;".
    _rule(f"{_abbreviation()}(?:-{AN}+)*"),
    _rule(f"(?P<token>(?i:{_alternatives(_FINAL_ABBREVIATIONS)})\\.)(?P<context>{L})(?!{AN})"),
    _rule(f"(?i:no|nos)\\.(?={_SPACE}?{D})"),
    _rule(f"[A-Za-z]\\.(?!{_sentence_start()})"),
    _rule(f"[A-Za-z]\\.(?:(?:[A-Za-z]\\.)+(?:-{AN}+)*|(?:-{AN}+)+)"),
    _rule(
        f"(?P<token>(?:(?:{AN}+[-@]|[A-Z]+&)*{AN}+(?:\\.{L}{AN}*)*|{_ELIDED}|{_DOTTED_HYPHENATED})\\.)"
        "(?P<context>[,;:])"
    ),
    # Words: hyphenated (also after dots and commas: "3.5-inch"), joined by dots (file and host
    # names), by ! or ?, by & or + in capitals, by up to two slashes.
    _rule(f"{AN}+(?:[-_\u2010\u2011]{AN}+)*"),
    _rule(_DOTTED_HYPHENATED),
    _rule(f"{L}{AN}*(?:\\.{L}{AN}*)+"),
    _rule(f"{L}{AN}*(?:[.!?]{L}{AN}*)+"),
    _rule(r"[A-Z]+(?:[&+][A-Z]+)+(?:-[A-Za-z0-9]+)*"),
    _rule(f"{_SLASH_PART}(?:/{_SLASH_PART}){{1,2}}"),
    _rule(f"{D}{AN}*(?:\\.{AN}+)*\\.(?i:{_alternatives(_FILE_EXTENSIONS)})(?!{AN})"),
    # Numbers, a whole number with a fraction ("3 1/2"), phone numbers.
    _rule(_NUMBER),
    _rule(f"{D}+[ \u00a0]{D}+/{D}{{1,4}}", _nonbreaking),
    _rule(f"\\({D}{{2,3}}\\) ?{D}{{3}}-?{D}{{4,5}}", lambda token: _nonbreaking(_brackets(token))),
    # Names of things: languages, currencies written with a country code, hashtags, handles,
    # e-mail addresses, URLs, SGML tags and entities.
    _rule(r"[cCfF]#|[cC]\+\+"),
    _rule(r"[A-Z]+\$"),
    _rule(f"#{L}+|##+"),
    _rule(r"@[A-Za-z]\w*", flags=re.ASCII),
    _rule(f"[A-Za-z0-9][^{_NOT_EMAIL}]*@[^{_NOT_EMAIL}.](?:[^{_NOT_EMAIL}]*[^{_NOT_EMAIL}.])?"),
    _rule(r"(?:https?|ftp)://[^\s\"<>]+|www\.[^\s\"<>/]+(?:/[^\s\"<>/]+)*"),
    _rule(r"</?[A-Za-z][^<>\n]*>", _nonbreaking),
    _rule(r"<<|>>"),
    _rule(r"&(?:amp|lt|gt|quot|apos);", _ENTITIES.__getitem__),
    # Punctuation: ellipses, dashes, runs of ! and ?, doubled quotes, emoticons.
    _rule(r"\.\.\.+", lambda token: "..."),
    _rule(r"-{5,}"),
    _rule(r"-{2,4}", lambda token: "--"),
    _rule(r"[!?]+"),
    _rule(f"''|[{_QUOTE_PAIR}]{{2}}", _quote_pair),
    _rule(r"[:;=]-?[()\[\]DPpO|\\](?![A-Za-z0-9])", _brackets),
    _rule(r"\^_\^"),
]


# --- Scanner ------------------------------------------------------------------------------------


def _longest_match(text: str, position: int) -> tuple[int, str] | None:
    """(end, token) of the longest rule match at `position`; ties go to the earlier rule."""
    best_length = 0
    best: tuple[_Rule, re.Match[str]] | None = None
    for rule in _RULES:
        match = rule.pattern.match(text, position)
        if match and match.end() - position > best_length:
            best_length = match.end() - position
            best = (rule, match)
    if best is None:
        return None
    rule, match = best
    end = match.start("context") if "context" in rule.pattern.groupindex else match.end()
    token = text[position:end]
    return end, rule.form(token) if rule.form else token


def _single_character(text: str, position: int) -> str | None:
    """The token for a character no rule covers; None for the characters the reference deletes."""
    char = text[position]
    if char == '"':
        # A straight double quote opens when a word follows it.
        return "``" if _ALNUM.match(text, position + 1) else "''"
    if _SYMBOL.match(char) or char == "\u00ad":
        return _SYMBOL_FORMS.get(char, char)
    return None


def _tokens(text: str) -> Iterator[tuple[int, str]]:
    """(line number, token) for each token of `text`, its lines split at '\\n'."""
    line = 0
    position = 0
    while position < len(text):
        char = text[position]
        if char == "\n":
            line += 1
            position += 1
        elif char.isspace() and char != "\x85":
            position += 1
        elif (found := _longest_match(text, position)) is not None:
            position, token = found
            yield line, token
        else:
            token = _single_character(text, position)
            if token is not None:
                yield line, token
            position += 1


# A soft hyphen next to a letter or digit is invisible; on its own it reads as a hyphen.
_SOFT_HYPHENS = re.compile(f"(?<={AN})\u00ad+|\u00ad+(?={AN})")
# pycocoevalcap replaces '\n' inside a caption by a space. The Java tokeniser also breaks lines
# at these other separators, which shifts every later caption; here they are spaces too.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\u2028\u2029]")


def ptb_tokenize_lines(lines: Sequence[str]) -> list[str]:
    """Tokenise captions as one pycocoevalcap PTBTokenizer call does: one output per caption.

    The captions are read as consecutive lines of one text, as the Java tokeniser reads them, so a
    caption ending in an initial ("... letter A.") sees how the next one starts; line breaks inside
    a caption count as spaces. Tokens are lower-cased and the punctuation tokens removed.
    """
    text = _SOFT_HYPHENS.sub("", "\n".join(_LINE_BREAKS.sub(" ", line) for line in lines))
    tokens: list[list[str]] = [[] for _ in lines]
    for line, token in _tokens(text):
        lowered = token.lower()
        if lowered not in PUNCTUATION:
            tokens[line].append(lowered)
    return [" ".join(line_tokens) for line_tokens in tokens]


def ptb_tokenize(text: str) -> str:
    """Tokenise one caption: lower-cased PTB tokens joined by spaces, punctuation tokens dropped."""
    return ptb_tokenize_lines([text])[0]
