"""Small English classification datasets made offline, for the quickstart and the examples.

Why generate instead of download: the quickstart must run on a machine with no hub access, and its result must
still *say something* — if every freezing strategy scored 100%, the sweep would show nothing. So the sentiment task
here is built to defeat bag-of-words shortcuts: negation ("not bad", "hardly worth it"), contrast where the label
follows the clause after "but" / the main clause of "although", expectations overturned ("I expected it to be dull,
but ..."), intensifiers, three domains of vocabulary, and seeded label noise (~8%) on the labelled splits. A frozen
encoder with a linear head reads "not good" much like "good"; a fine-tuned one can learn the difference — which is
exactly the gap a freezing sweep measures.

Everything is seeded: the same arguments write byte-identical files, so the shipped copies in
``studies/data/quickstart`` and ``studies/data/kaggle_example`` can be regenerated and checked::

    python scripts/datagen.py studies/data/quickstart
    python scripts/datagen.py --kaggle studies/data/kaggle_example
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = [
    "LABEL_NOISE",
    "Example",
    "generate_sentiment",
    "generate_topics",
    "main",
    "make_kaggle_example",
    "make_quickstart_dataset",
]

LABEL_NOISE = 0.08
"""Share of labelled rows whose label is flipped (train and validation): real data is noisy, and a ceiling below
100% keeps strategies from all tying at the top."""

POS, NEG = 1, 0
SENTIMENT_NAMES = {NEG: "negative", POS: "positive"}

# --------------------------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------------------------

# domain -> (what the review is about, aspects as (phrase, is_plural))
_DOMAINS: dict[str, tuple[list[str], list[tuple[str, bool]]]] = {
    "movie": (
        ["the film", "this movie", "the sequel", "the documentary", "this thriller", "the comedy"],
        [
            ("the acting", False),
            ("the plot", False),
            ("the script", False),
            ("the soundtrack", False),
            ("the pacing", False),
            ("the dialogue", False),
            ("the cinematography", False),
            ("the ending", False),
            ("the villain", False),
            ("the jokes", True),
            ("the special effects", True),
            ("the characters", True),
        ],
    ),
    "product": (
        ["this phone", "the blender", "this laptop", "the headphones", "this kettle", "the vacuum cleaner"],
        [
            ("the battery", False),
            ("the screen", False),
            ("the build quality", False),
            ("the price", False),
            ("the customer service", False),
            ("the packaging", False),
            ("the sound", False),
            ("the camera", False),
            ("the keyboard", False),
            ("the delivery", False),
            ("the instructions", True),
            ("the buttons", True),
        ],
    ),
    "place": (
        ["the hotel", "this restaurant", "the cafe", "this guesthouse", "the bistro", "the resort"],
        [
            ("the room", False),
            ("the staff", True),
            ("the breakfast", False),
            ("the location", False),
            ("the food", False),
            ("the service", False),
            ("the view", False),
            ("the wifi", False),
            ("the desserts", True),
            ("the prices", True),
            ("the beds", True),
            ("the music", False),
        ],
    ),
}

_ADJ = {
    POS: [
        "great", "excellent", "wonderful", "superb", "solid", "delightful", "impressive", "charming", "reliable",
        "sharp", "gripping", "brilliant", "lovely", "fantastic", "enjoyable", "sturdy", "smooth", "memorable",
        "clever", "pleasant", "top-notch", "spot on",
    ],
    NEG: [
        "awful", "dull", "terrible", "flimsy", "boring", "disappointing", "clumsy", "mediocre", "sloppy", "weak",
        "painful", "bland", "sluggish", "cheap", "forgettable", "tedious", "annoying", "poor", "messy", "lifeless",
        "overpriced", "a mess",
    ],
}
# Words that read as one polarity but, negated, mean a mild version of the other ("not bad" ≈ fine).
_MILD = {POS: ["bad", "terrible", "awful", "boring", "a disaster"], NEG: ["great", "special", "perfect", "impressive"]}
_INTENS = ["really", "truly", "extremely", "remarkably", "incredibly", "absolutely", "quite", "rather", "so", "very"]
_NEGATORS = ["not", "hardly", "far from", "never", "not at all", "anything but", "by no means"]
_VERB = {
    POS: ["loved", "enjoyed", "liked", "adored", "appreciated", "was impressed by"],
    NEG: ["hated", "disliked", "was bored by", "was let down by", "could not stand", "was annoyed by"],
}
_VERB_PLAIN = {
    POS: ["loved", "enjoyed", "liked", "adored"],
    NEG: ["hated", "disliked", "was bored by", "was let down by"],
}
_VERB_BASE = {POS: ["love", "enjoy", "like", "recommend"], NEG: ["hate", "dislike", "regret", "mind"]}
_VERDICT = {
    POS: [
        "well worth the money", "worth every penny", "I would buy it again", "five stars from me",
        "I would happily recommend it", "a pleasant surprise", "better than I expected", "a real treat",
        "I will definitely be back", "it exceeded my expectations",
    ],
    NEG: [
        "hardly worth it", "not worth the price", "I would not buy it again", "one star, and that is generous",
        "I cannot recommend it", "a waste of time", "worse than I expected", "what a letdown", "never again",
        "I returned it after a week",
    ],
}
_OPENERS = ["", "", "", "Honestly, ", "Overall, ", "To be fair, ", "In short, ", "Frankly, ", "Well, ", "So, "]


def _be(plural: bool) -> str:
    return "were" if plural else "was"


def _adj(rng: random.Random, label: int, intensify: float = 0.35) -> str:
    word = rng.choice(_ADJ[label])
    if " " not in word and rng.random() < intensify:
        word = f"{rng.choice(_INTENS)} {word}"
    return word


def _clause(rng: random.Random, domain: str, label: int, negation_rate: float = 0.3) -> str:
    """An aspect clause of the given polarity, sometimes reached by negating the opposite adjective."""
    _, aspects = _DOMAINS[domain]
    phrase, plural = rng.choice(aspects)
    roll = rng.random()
    if roll < negation_rate / 2:
        return f"{phrase} {_be(plural)} {rng.choice(_NEGATORS)} {rng.choice(_ADJ[1 - label])}"
    if roll < negation_rate:
        return f"{phrase} {_be(plural)} not {rng.choice(_MILD[label])}"
    return f"{phrase} {_be(plural)} {_adj(rng, label)}"


# --------------------------------------------------------------------------------------------------------------------
# Sentence kinds
# --------------------------------------------------------------------------------------------------------------------


def _simple(rng: random.Random, domain: str, label: int) -> str:
    subjects, _ = _DOMAINS[domain]
    if rng.random() < 0.5:
        return f"{_clause(rng, domain, label, negation_rate=0.0)}."
    return f"{rng.choice(subjects)} is {_adj(rng, label)}."


def _negation(rng: random.Random, domain: str, label: int) -> str:
    subjects, aspects = _DOMAINS[domain]
    phrase, _ = rng.choice(aspects)
    form = rng.randrange(5)
    if form == 0:
        return f"{rng.choice(subjects)} is {rng.choice(_NEGATORS)} {rng.choice(_ADJ[1 - label])}."
    if form == 1:
        return f"{rng.choice(subjects)} is not {rng.choice(_MILD[label])} at all."
    if form == 2:
        return f"I did not {rng.choice(_VERB_BASE[1 - label])} {phrase}."
    if form == 3:
        return f"I can't say I {rng.choice(_VERB_PLAIN[1 - label])} {phrase}."
    return f"{_clause(rng, domain, label, negation_rate=1.0)}."


def _contrast(rng: random.Random, domain: str, label: int) -> str:
    """Two clauses of opposite polarity; the label follows the one that carries the weight."""
    first = _clause(rng, domain, 1 - label)
    second = _clause(rng, domain, label)
    form = rng.randrange(5)
    if form == 0:
        return f"{first}, but {second}."
    if form == 1:
        return f"although {first}, {second}."
    if form == 2:
        return f"{second}, even though {first}."
    if form == 3:
        return f"{first}; however, {second}."
    return f"{first}, but overall {rng.choice(_VERDICT[label])}."


def _expectation(rng: random.Random, domain: str, label: int) -> str:
    subjects, _ = _DOMAINS[domain]
    form = rng.randrange(4)
    if form == 0:
        return f"I expected {rng.choice(subjects)} to be {_adj(rng, 1 - label, 0)}, but it was {_adj(rng, label)}."
    if form == 1:
        return f"I expected {rng.choice(subjects)} to be {_adj(rng, label, 0)}, and it was."
    if form == 2:
        return f"everyone said {rng.choice(subjects)} was {_adj(rng, 1 - label, 0)}; they were wrong."
    return f"the reviews called it {_adj(rng, label, 0)}, and for once they were right."


def _verdict(rng: random.Random, domain: str, label: int) -> str:
    subjects, aspects = _DOMAINS[domain]
    phrase, _ = rng.choice(aspects)
    form = rng.randrange(3)
    if form == 0:
        return f"{rng.choice(subjects)}: {rng.choice(_VERDICT[label])}."
    if form == 1:
        return f"I {rng.choice(_VERB[label])} {phrase}, {rng.choice(_VERDICT[label])}."
    return f"{rng.choice(_VERDICT[label])}, even if {_clause(rng, domain, 1 - label, 0.0)}."


_KINDS: list[tuple[str, float, Callable[[random.Random, str, int], str]]] = [
    ("simple", 0.22, _simple),
    ("negation", 0.26, _negation),
    ("contrast", 0.30, _contrast),
    ("expectation", 0.10, _expectation),
    ("verdict", 0.12, _verdict),
]


@dataclass(frozen=True)
class Example:
    """One generated example: the text, the label as written (after noise), the true label and how it was made."""

    text: str
    label: int
    clean_label: int
    kind: str
    noisy: bool


def _finish(rng: random.Random, text: str) -> str:
    text = rng.choice(_OPENERS) + text
    text = text[0].upper() + text[1:]
    if rng.random() < 0.1:
        text = text[:-1] + "!"
    return text


def generate_sentiment(n: int, rng: random.Random, seen: set[str], noise: float = LABEL_NOISE) -> list[Example]:
    """``n`` unique review sentences (none in ``seen``, which is updated), balanced labels, ``noise`` share flipped."""
    kinds, weights, makers = zip(*_KINDS)
    out: list[Example] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise RuntimeError("could not generate enough unique sentences; vocabulary too small")
        label = POS if len(out) % 2 == 0 else NEG  # exact balance; order is shuffled below
        index = rng.choices(range(len(kinds)), weights=weights)[0]
        text = _finish(rng, makers[index](rng, rng.choice(sorted(_DOMAINS)), label))
        if text.lower() in seen:
            continue
        seen.add(text.lower())
        out.append(Example(text, label, label, kinds[index], False))
    rng.shuffle(out)
    flips = set(rng.sample(range(n), round(noise * n))) if noise > 0 else set()
    return [Example(e.text, 1 - e.label, e.clean_label, e.kind, True) if i in flips else e for i, e in enumerate(out)]


def make_quickstart_dataset(
    out_dir: str | Path, n_train: int = 800, n_validation: int = 300, n_test: int = 200, seed: int = 0
) -> dict[str, Path]:
    """Write the quickstart's 2-class sentiment task: ``train.csv``/``validation.csv`` (``text,label`` with labels
    ``positive``/``negative``, ~8% flipped) and ``test.csv`` (``id,text``, unlabelled). Returns the paths.

    Splits never share a sentence (case-insensitive), so validation accuracy is not inflated by memorisation.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()
    train = generate_sentiment(n_train, rng, seen)
    validation = generate_sentiment(n_validation, rng, seen)
    test = generate_sentiment(n_test, rng, seen, noise=0.0)
    paths = {name: out / f"{name}.csv" for name in ("train", "validation", "test")}
    for name, rows in (("train", train), ("validation", validation)):
        frame = pd.DataFrame({"text": [e.text for e in rows], "label": [SENTIMENT_NAMES[e.label] for e in rows]})
        frame.to_csv(paths[name], index=False, lineterminator="\n")
    frame = pd.DataFrame({"id": range(1, n_test + 1), "text": [e.text for e in test]})
    frame.to_csv(paths["test"], index=False, lineterminator="\n")
    return paths


# --------------------------------------------------------------------------------------------------------------------
# Kaggle-style topics
# --------------------------------------------------------------------------------------------------------------------

_TOPICS: dict[str, dict[str, list[str]]] = {
    "sports": {
        "who": ["the home team", "the champions", "the young striker", "the veteran goalkeeper", "the coach",
                "the relay squad", "the league leaders", "the tennis star", "the captain", "the rookie"],
        "did": ["won the final", "lost on penalties", "signed a new contract", "broke the season record",
                "was injured in training", "scored twice", "beat their rivals", "qualified for the playoffs",
                "announced retirement", "was suspended for two matches"],
        "where": ["at the stadium", "in the derby", "after extra time", "in front of a sell-out crowd",
                  "at the world cup", "in the league opener", "during the marathon", "on the final lap"],
    },
    "technology": {
        "who": ["the startup", "the chip maker", "the app developer", "the search giant", "the phone maker",
                "the security researchers", "the cloud provider", "the open-source project", "engineers",
                "the robotics lab"],
        "did": ["released a software update", "unveiled a faster processor", "fixed a critical bug",
                "launched a new app", "reported a data breach", "open-sourced its model", "raised new funding",
                "delayed its product launch", "patched the security flaw", "cut prices on its laptops"],
        "where": ["at the developer conference", "in a blog post", "ahead of the holiday season",
                  "for millions of users", "after a beta test", "in the app store", "on its servers",
                  "during the keynote"],
    },
    "food": {
        "who": ["the chef", "the bakery", "the food critic", "the new bistro", "the street vendor",
                "the cookbook author", "the family restaurant", "the pastry team", "the vineyard", "the cafe"],
        "did": ["shared a recipe for sourdough", "added a vegan menu", "won a michelin star",
                "recalled a batch of cheese", "opened a second kitchen", "cut prices on lunch",
                "launched a seasonal dessert", "served a record number of guests", "switched to local produce",
                "published a new cookbook"],
        "where": ["at the farmers market", "in the old town", "for the holiday season", "after a long renovation",
                  "at the food festival", "in a blog post", "on the new menu", "during the tasting"],
    },
}
# Cross-topic sentences keep the CV example from being solvable by one keyword: the label is the main subject.
_MIXED = [
    ("the stadium cafe {did} before the match", "food", "did"),
    ("the team's new fitness app {did}", "technology", "did"),
    ("the chef {did} for the tennis star's wedding", "food", "did"),
    ("the coach used a tracking app as the squad {did}", "sports", "did"),
    ("the phone maker sponsored the final, where the champions {did}", "sports", "did"),
    ("the bakery {did} with a robot-made cake", "food", "did"),
]
_TOPIC_SHARES = {"sports": 0.4, "technology": 0.35, "food": 0.25}


def generate_topics(n: int, rng: random.Random, seen: set[str], noise: float) -> list[tuple[str, str]]:
    """``n`` unique (headline, topic) rows, topics 40/35/25%, ~10% cross-topic, ``noise`` share mislabelled."""
    topics = sorted(_TOPIC_SHARES)
    rows: list[tuple[str, str]] = []
    while len(rows) < n:
        topic = rng.choices(topics, weights=[_TOPIC_SHARES[t] for t in topics])[0]
        parts = _TOPICS[topic]
        if rng.random() < 0.1:
            template, topic, _ = rng.choice(_MIXED)
            text = template.format(did=rng.choice(_TOPICS[topic]["did"]))
        else:
            text = f"{rng.choice(parts['who'])} {rng.choice(parts['did'])} {rng.choice(parts['where'])}"
        text = text[0].upper() + text[1:] + "."
        if text.lower() in seen:
            continue
        seen.add(text.lower())
        rows.append((text, topic))
    flips = set(rng.sample(range(n), round(noise * n)))
    return [(text, rng.choice([t for t in topics if t != topic]) if i in flips else topic) for i, (text, topic) in
            enumerate(rows)]


def make_kaggle_example(out_dir: str | Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> dict[str, Path]:
    """Write a Kaggle-style competition folder: ``train.csv`` (``id,text,label``; labels ``food``, ``sports``,
    ``technology``, imbalanced, ~5% noise) and ``test.csv`` (``id,text``), for the cross-validation example study."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()
    train = generate_topics(n_train, rng, seen, noise=0.05)
    test = generate_topics(n_test, rng, seen, noise=0.0)
    ids = rng.sample(range(10_000, 100_000), n_train + n_test)  # Kaggle ids: unique, not in row order
    paths = {"train": out / "train.csv", "test": out / "test.csv"}
    pd.DataFrame({"id": ids[:n_train], "text": [t for t, _ in train], "label": [lab for _, lab in train]}).to_csv(
        paths["train"], index=False, lineterminator="\n"
    )
    pd.DataFrame({"id": ids[n_train:], "text": [t for t, _ in test]}).to_csv(
        paths["test"], index=False, lineterminator="\n"
    )
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python scripts/datagen.py OUT_DIR [--kaggle] [--seed N]``: write a dataset and print where."""
    parser = argparse.ArgumentParser(prog="python scripts/datagen.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--kaggle", action="store_true", help="write the 3-topic Kaggle-style example instead")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.kaggle:
        paths = make_kaggle_example(args.out_dir, seed=args.seed)
    else:
        paths = make_quickstart_dataset(args.out_dir, seed=args.seed)
    for name, path in paths.items():
        print(f"{name}: {path} ({sum(1 for _ in path.open()) - 1} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
