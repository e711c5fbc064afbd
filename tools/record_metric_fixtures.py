"""Records tests/fixtures/metrics/*.json from the reference implementations (run by hand, never by tests).

  ptb.json    pycocoevalcap 1.2's PTBTokenizer (Stanford CoreNLP 3.4.1 under a real JVM)
  cider.json  pycocoevalcap 1.2's PTBTokenizer + Cider().compute_score, as COCOEvalCap chains them
  vqa.json    the official GT-Vision-Lab/VQA evaluation code (see tools/vqa_official_reference.py); its
              accuracy values were re-derived for main's rules (its `recorded_with` says how) and are
              replaced by main's own outputs the next time this runs with main's vqaEval.py

Nothing here imports vilaray: the expected values must not come from the code under test.

    pip install --target /tmp/pcc --no-deps pycocoevalcap==1.2   # numpy comes from .venv; needs `java`
    PYTHONPATH=/tmp/pcc .venv/bin/python tools/record_metric_fixtures.py --vqa-eval /path/to/vqaEval.py
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vqa_official_reference as vqa_ref  # noqa: E402 - tools/ is not a package

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "metrics"

# Single captions, each tokenised by its own PTBTokenizer call (no neighbouring line to look at).
PTB_CASES = [
    "A man is riding a horse.",
    "Two dogs play in the grass .",
    "I don't know; it's John's (big) dog!",
    "isn't doesn't don't won't can't ain't shouldn't've",
    "they'll we're I'm you've he'd she's",
    "DON'T Can't IT'S WE'LL",
    "it\u2019s don\u2019t we\u2019re \u201cquoted\u201d \u2018single\u2019",
    'He said "hello" to me.',
    "a 'quoted' word and ''double'' quotes",
    "rock 'n' roll at 5 o'clock, O'Neil's d'Artagnan",
    "y'all 'em 'tis 'twas '90s",
    "cannot gonna gotta wanna lemme gimme dunno",
    "a black-and-white photo of a well-known t-shirt",
    "x-ray e-mail co-op anti-war 3-year-old mid-1990s",
    "3,000 people, 3.5 miles and 1,000,000 dollars",
    "$5.00 and 50% off, \u00a33 or \u20ac2 or \u00a2",
    "3 1/2 cups and \u00bd a lemon, 9/11 and 24/7",
    "(555) 123-4567 or 555-123-4567",
    "12/25/2014 at 12:30 or 3:30pm",
    "black-and-white photo... end",
    "wait.... what..... . . . ok\u2026",
    "x -- y - z --- w",
    "a dog \u2014 a cat \u2013 a bird",
    "[a] {b} <c> (d)",
    "a < b > c << d >>",
    "Mr. Smith and Dr. Who on St. Patrick's day",
    "the U.S. army vs. the U.K. team",
    "the U.S. The end",
    "a man on a bike.",
    "A. Smith wrote it.",
    "I. The",
    "Jan. 5 and Feb. The",
    "e.g., etc., i.e.; no. 5",
    "hello.world and a.b.c",
    "end.",
    "end!?",
    "www.google.com http://x.com/a?b=c foo@bar.com",
    "@user #tag :) ;-( ^_^",
    "AT&T and R&D &amp; S&P-500",
    "C++ and C# and F#",
    "caf\u00e9 na\u00efve \u00fcber Stra\u00dfe Zo\u00eb",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u0395\u03bb\u03bb\u03ac\u03b4\u03b1 \u0420\u043e\u0441\u0441\u0438\u044f",
    "emoji \U0001f600 thumbs \U0001f44d\U0001f3fd end",
    "\u00a9 \u00ae \u00b0 \u00b1 \u00d7 \u00f7 \u00a7 ~ ^ | \\ + % & \u2122 \u2022",
    "tabs\there and  double  spaces",
    "soft\u00adhyphen and non\u00a0breaking",
    "zero\u200bwidth and \ufeffbom",
    "1990s 2nd 3rd 100km 5kg 3x4 x3",
    "its' dogs' James' car",
    "kids' toys and the boss's office",
    "",
    ".",
    "...",
    "!!!",
    "a",
    "A",
    "   leading and trailing   ",
    "ALL CAPS CAPTION.",
    "a A a A the THE The",
    "dog dog dog dog dog",
    "a man riding a wave on top of a surfboard",
    "There is a man, a woman, and a child.",
    "What's that? It's a bird!",
    "5'10\" tall",
    "Yahoo! E! OK!",
    "and/or a/b/c/d w/ t-shirt/jeans",
    "2a.b.c image.jpg file2.png",
    "o`o O'o",
    "-5 +3 .5 -.5 1.000,5",
    "x\u00b2 H\u2082O",
    "&lt;b&gt; &quot;hi&quot; &apos;s",
    # More caption-like cases, added when vilaray.evals.ptb was written (recorded from the jar too).
    "The dog's toy, the dogs' bed and the children's room.",
    "It\u2019s a man\u2019s hat; they\u2019re \u201cfriends\u201d.",
    'A sign that says "No Parking" (in red).',
    "A man at 7 p.m. on Jan. 5 in Washington, D.C.",
    "A woman in the U.S. The dog is brown.",
    "A sign with the letter A. The bus is red.",
    "A sign with the letter A. Smith is here.",
    "A 3 1/2 foot tall boy and a 10-foot pole",
    "Mt. Fuji, Ave. B, St. Louis and Ft. Worth",
    "A no. 5 bus and No. 10 bus",
    "a dog on a bed.The dog is sleeping",
    "two dogs,black-and-white,on grass",
    "A man -- wearing a hat -- walks by... slowly!!",
    "What?! A cat?? Yes!!!",
    "3:30pm, 10am, 12:30 p.m. and 7 PM",
    "$5.00, \u00a33.50, \u20ac2, \u00a250 and 50%",
    "The 1990s, '80s and 1,000,000 people",
    "Look, they're",
    "A CAT'S TOY ISN'T HERE",
    "Sm\u00f6rg\u00e5sbord, jalape\u00f1o and cr\u00e8me br\u00fbl\u00e9e at a caf\u00e9",
    "Mr.Smith and Dr.Jones",
    "at 5 o'clock., ma'am",
    "'cause y'all can't",
    "a sign with the letter I.",
    "half - and - half",
]

# Several captions tokenised in ONE call: CoreNLP sees them as one stream of lines, so a caption
# ending in an abbreviation depends on how the next line starts.
PTB_STREAMS = [
    ["the U.S.", "The dog runs."],
    ["the U.S.", "the dog runs."],
    ["a dog on Jan.", "The end", "a man and a.", "He is here."],
    ["I.", "The cat", "Z.", "a b"],
    ["Mr.", "Smith", "etc.", "And so on", "etc.", "and so on"],
    ["", "", "a caption after empty ones", ""],
    # An initial ends a sentence only before a sentence-like start; 'll and 're at the very end.
    ["A sign with the letter A.", "A man on a horse.", "The letter I.", "the cat sleeps."],
    ["A man we'll", "see they're", "here we'll"],
    ["A sign for Route B.", "Two dogs play.", "A sign for Jan.", "The end."],
]


def _java_version() -> str:
    completed = subprocess.run(["java", "-version"], capture_output=True, text=True, check=True)
    return completed.stderr.splitlines()[0].strip()


def _tokenizer() -> Any:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer()


def _tokenize_stream(captions: list[str]) -> list[str]:
    """One PTBTokenizer call over `captions`, one image per caption, in order."""
    tokenized = _tokenizer().tokenize(
        {index: [{"caption": caption}] for index, caption in enumerate(captions)}
    )
    return [tokenized[index][0] for index in range(len(captions))]


def record_ptb() -> dict[str, Any]:
    return {
        "cases": [{"text": text, "tokenized": _tokenize_stream([text])[0]} for text in PTB_CASES],
        "streams": [{"texts": texts, "tokenized": _tokenize_stream(texts)} for texts in PTB_STREAMS],
    }


_CORPUS_WORDS = (
    "a an the man woman dog cat riding sitting standing on top of with two three black white red "
    "large small table street car bus train sign surfboard wave kitchen pizza plate next to in front"
)


def _random_corpus(seed: int, images: int) -> tuple[dict[str, str], dict[str, list[str]]]:
    rng = random.Random(seed)
    words = _CORPUS_WORDS.split()

    def caption() -> str:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        return text[0].upper() + text[1:] + rng.choice([".", "", " .", "!"])

    predictions = {f"img{index}": caption() for index in range(images)}
    references = {f"img{index}": [caption() for _ in range(rng.randint(1, 6))] for index in range(images)}
    return predictions, references


def _cider_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = [
        {
            "name": "coco_like",
            "predictions": {
                "1": "A man riding a wave on top of a surfboard.",
                "2": "A plate of food with broccoli and meat.",
                "3": "Two giraffes standing next to each other in a field.",
            },
            "references": {
                "1": [
                    "A man riding a wave on top of a surfboard.",
                    "A surfer rides a large wave in the ocean.",
                    "A person on a surfboard riding a wave.",
                    "Man surfing on a wave in the ocean.",
                    "A surfer is catching a wave.",
                ],
                "2": [
                    "A plate with meat, broccoli and potatoes.",
                    "Broccoli and meat are on a white plate.",
                    "A dinner plate of steak and vegetables.",
                    "Food on a plate, including broccoli.",
                    "A meal of meat and broccoli on a dish.",
                ],
                "3": [
                    "Two giraffes stand in a grassy field.",
                    "A pair of giraffes next to a tree.",
                    "Giraffes standing together in the wild.",
                    "Two tall giraffes in a field of grass.",
                    "Two giraffes are standing near each other.",
                ],
            },
        },
        {
            "name": "punctuation_capitals_contractions",
            "predictions": {
                "a": "It's a DOG, isn't it?!",
                "b": "the man doesn't (really) smile...",
                "c": '"A" black-and-white photo; 3,000 people.',
            },
            "references": {
                "a": ["it's a dog isn't it", "It is a dog.", "A dog, it's a dog!"],
                "b": ["The man doesn't smile.", "A man, not smiling.", "the man does not smile"],
                "c": [
                    "A black and white photo of 3,000 people.",
                    "black-and-white photo",
                    "A crowd of people.",
                ],
            },
        },
        {
            "name": "identical_unrelated_and_empty",
            "predictions": {
                "same": "a red bus parked on the street",
                "unrelated": "purple elephants dancing under the moonlight",
                "empty": "",
                "dot": ".",
                "oneword": "bus",
            },
            "references": {
                "same": ["a red bus parked on the street", "a red bus on a city street", "a parked red bus"],
                "unrelated": ["a cat sleeping on a sofa", "a sleeping cat on the couch", "a cat on a sofa"],
                "empty": ["a kitchen with a stove", "a stove in a kitchen", "an empty kitchen"],
                "dot": ["a bowl of fruit", "fruit in a bowl", "apples and oranges"],
                "oneword": ["a blue bus", "a bus on the road", "the bus is blue"],
            },
        },
        {
            "name": "repeated_words",
            "predictions": {
                "r1": "dog dog dog dog dog dog",
                "r2": "a a a a a a a a",
                "r3": "a dog and a dog and a dog",
            },
            "references": {
                "r1": ["a dog on the grass", "a brown dog", "dog running on grass"],
                "r2": ["a man with a hat", "a hat on a man", "man wearing a hat"],
                "r3": ["a dog and a cat", "two dogs playing", "a dog with another dog"],
            },
        },
        {
            "name": "ragged_reference_counts",
            "predictions": {
                "one": "a boat on the water",
                "two": "a train at the station",
                "five": "a child holding a kite",
                "seven": "a bowl of soup",
            },
            "references": {
                "one": ["a small boat floating on the water"],
                "two": ["a train stopped at a station", "the train is at the station"],
                "five": [
                    "a child with a kite",
                    "a kid holding a kite on the beach",
                    "a young boy flying a kite",
                    "a girl holds a colorful kite",
                    "kite flying child",
                ],
                "seven": [
                    "a bowl of soup on a table",
                    "soup in a white bowl",
                    "a bowl of hot soup",
                    "a spoon in a bowl of soup",
                    "tomato soup in a bowl",
                    "a bowl filled with soup",
                    "soup",
                ],
            },
        },
        {
            "name": "single_image",
            "predictions": {"only": "a cat on a mat"},
            "references": {"only": ["a cat on a mat", "a cat sitting on a mat"]},
        },
        {
            "name": "stream_context_abbreviations",
            "predictions": {"x": "A man from the U.S.", "y": "The dog is on St.", "z": "Jan."},
            "references": {
                "x": ["A man from the U.S.", "The American man."],
                "y": ["The dog on the St.", "A dog on the street"],
                "z": ["The month of Jan.", "January."],
            },
        },
        {
            "name": "unicode_numbers_symbols",
            "predictions": {
                "u1": "caf\u00e9 with 2 cups \u2014 \u00bd full",
                "u2": "a sign: \u201cSTOP\u201d (red)",
                "u3": "emoji \U0001f600 on a t-shirt",
            },
            "references": {
                "u1": [
                    "a caf\u00e9 with two cups",
                    "cups at a caf\u00e9, half full",
                    "2 cups in a caf\u00e9",
                ],
                "u2": ["a red stop sign", "a \u201cstop\u201d sign", "stop sign (red) on a pole"],
                "u3": ["a t-shirt with a smiley face", "a smiley on a shirt", "a shirt with an emoji"],
            },
        },
    ]
    predictions, references = _random_corpus(seed=7, images=25)
    cases.append({"name": "random_corpus", "predictions": predictions, "references": references})
    return cases


def record_cider() -> dict[str, Any]:
    from pycocoevalcap.cider.cider import Cider

    recorded = []
    for case in _cider_cases():
        ids = list(case["predictions"])
        # As COCOEvalCap.evaluate(): one tokeniser call for all references, one for all predictions.
        gts = _tokenizer().tokenize(
            {key: [{"caption": ref} for ref in case["references"][key]] for key in ids}
        )
        res = _tokenizer().tokenize({key: [{"caption": case["predictions"][key]}] for key in ids})
        corpus, per_image = Cider().compute_score(gts, res)
        recorded.append(
            {
                **case,
                "tokenized_predictions": {key: res[key][0] for key in ids},
                "tokenized_references": {key: gts[key] for key in ids},
                "corpus": float(corpus),
                "per_image": {key: float(score) for key, score in zip(ids, per_image, strict=True)},
            }
        )
    return {"cases": recorded}


VQA_NORMALIZE_CASES = [
    "two", "Two", "2", "a dog", "the dog", "an apple", "yes.", "Yes", "YES", "yes!", "yes?", "no, it isn't",
    "dont", "Dont", "don't", "it's", "its", "Im", "I'm", "ive", "1,000", "1000", "3.5", "3.", ".5", "0.5",
    "  extra   whitespace  ", "tab\there", "new\nline", "left-handed", "t-shirt", "a/b", "a / b", "(red)",
    "red (dark)", "yes, it is", "$5", "5:30", "#1", "none", "zero", "ten", "eleven", "one hundred",
    "a.b", "a.b.c", "U.S.A.", "e.g.", "\u00e9t\u00e9", "caf\u00e9", "\u65e5\u672c", "", " ", "the",
    "a an the", "...", "." * 40 + "x", "x" + ". " * 40, "@home", "[1]", "{x}", "\"quoted\"", "`tick`",
    "back\\slash", "under_score", "a=b", "a+b", "a>b", "a<b", "q;r", "1,000,000", "2,5", "1, 2", "x,y",
    "it'dve", "yall", "whats", "whos", "won't", "wont", "oclock", "o'clock",
]  # fmt: skip

TEN_YES = ["yes"] * 10
VQA_ACCURACY_CASES: list[tuple[str, list[str]]] = [
    ("yes", TEN_YES),
    ("Yes.", TEN_YES),
    ("no", TEN_YES),
    ("yes", ["yes"] * 3 + ["no"] * 7),
    ("yes", ["yes"] * 2 + ["no"] * 8),
    ("yes", ["yes"] * 1 + ["no"] * 9),
    ("yes", ["yes"] * 4 + ["no"] * 6),
    ("no", ["yes"] * 3 + ["no"] * 7),
    ("2", ["2"] * 6 + ["two"] * 4),
    ("two", ["2"] * 6 + ["two"] * 4),
    ("two", ["two"] * 10),
    ("2", ["two"] * 10),
    ("a dog", ["dog"] * 5 + ["a dog"] * 5),
    ("dog", ["a dog"] * 10),
    ("The Dog", ["dog"] * 10),
    ("yes.", ["yes", "yes.", "yes", "yes", "yes", "yes", "no", "yes", "yes", "yes"]),
    ("dont", ["dont"] * 4 + ["don't"] * 6),
    ("don't", ["dont"] * 4 + ["don't"] * 6),
    ("don't", ["don't"] * 10),
    ("it's", ["it's"] * 3 + ["its"] * 7),
    ("its", ["it's"] * 3 + ["its"] * 7),
    ("1,000", ["1000"] * 5 + ["1,000"] * 5),
    ("1000", ["1,000"] * 10),
    ("1000", ["1,000", "1000", "1000", "1,000", "one thousand", "1000", "1000", "1,000", "1000", "1000"]),
    ("3.5", ["3.5"] * 4 + ["3"] * 6),
    ("3.5", ["3.5"] * 10),
    ("3", ["3.5"] * 4 + ["3"] * 6),
    ("  Yes  ", ["yes"] * 3 + ["no"] * 7),
    ("yes\n", ["yes"] * 3 + ["no"] * 7),
    ("YES", TEN_YES),
    ("Yes", ["Yes"] * 10),
    ("yes", ["Yes"] * 10),
    ("yes", ["Yes"] * 5 + ["yes"] * 5),
    ("left handed", ["left-handed"] * 4 + ["left handed"] * 6),
    ("left-handed", ["left-handed"] * 10),
    ("red", ["red", "blue", "red", "green", "red", "red", "white", "red", "blue", "red"]),
    ("blue", ["red", "blue", "red", "green", "red", "red", "white", "red", "blue", "red"]),
    ("white", ["red", "blue", "red", "green", "red", "red", "white", "red", "blue", "red"]),
    ("yes", ["yes"]),
    ("yes", ["yes", "yes"]),
    ("yes", ["yes", "yes", "yes"]),
    ("yes", ["yes", "yes", "no", "yes", "yes"]),
    ("yes", ["yes"] * 11),
    ("yes", ["yes"] * 4 + ["no"] * 20),
    ("caf\u00e9", ["caf\u00e9"] * 3 + ["coffee"] * 7),
    ("\u65e5\u672c", ["\u65e5\u672c"] * 10),
    ("", ["yes"] * 10),
    ("   ", ["yes"] * 10),
    ("the", ["yes"] * 10),
    ("none", ["0"] * 10),
    ("0", ["none"] * 5 + ["0"] * 5),
    ("10", ["ten"] * 10),
    ("ten", ["10"] * 10),
]


def record_vqa(module: Any) -> dict[str, Any]:
    return {
        "tables": vqa_ref.official_tables(module),
        "normalize": [
            {"text": text, "normalized": vqa_ref.official_normalize(module, text)}
            for text in VQA_NORMALIZE_CASES
        ],
        "accuracy": [
            {
                "prediction": prediction,
                "answers": answers,
                "accuracy": vqa_ref.official_accuracy(module, prediction, answers),
            }
            for prediction, answers in VQA_ACCURACY_CASES
        ],
    }


def _write(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vqa-eval", type=Path, required=True, help="path to the official vqaEval.py")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    coco = {
        "pycocoevalcap": importlib.metadata.version("pycocoevalcap"),
        "tokenizer": "stanford-corenlp-3.4.1.jar PTBTokenizer -preserveLines -lowerCase (pycocoevalcap's PTBTokenizer)",
        "java": _java_version(),
    }
    _write(args.out / "ptb.json", {"recorded_with": coco, **record_ptb()})
    _write(
        args.out / "cider.json",
        {"recorded_with": {**coco, "metric": "pycocoevalcap Cider().compute_score"}, **record_cider()},
    )
    module = vqa_ref.load_official(args.vqa_eval)
    source = {
        "source": f"{vqa_ref.OFFICIAL_REPO} {vqa_ref.OFFICIAL_PATH} @ {vqa_ref.OFFICIAL_COMMIT}",
        "sha256": vqa_ref.OFFICIAL_SHA256,
        "python": sys.version.split()[0],
        "harness": "tools/vqa_official_reference.py: official evaluate() on one-question datasets",
    }
    _write(args.out / "vqa.json", {"recorded_with": source, **record_vqa(module)})


if __name__ == "__main__":
    main()
