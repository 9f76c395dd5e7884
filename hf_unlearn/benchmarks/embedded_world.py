"""The embedded benchmark: a deterministic TOFU-schema world of fictitious authors, generated from a seed.

Each author has `facts_per_author` attributes (birthplace, birth year, genre, ...). Every fact can be asked and
answered in several phrasings (knowledge augmentation): the training corpus states each fact under the training
phrasings, and the paraphrase phrasing used by the truth ratio is trained only for authors that are never
evaluated, so that the finetuned model's knowledge must carry over to a phrasing it never saw for the tested
authors (a tiny model trained on one phrasing per fact does not do that, and forget quality then cannot tell the
finetuned model from the retain model).

Splits, in TOFU's schema: `full`, `forget01/05/10`, `retain99/95/90`, `forget*_perturbed`, `retain_perturbed`,
`real_authors(_perturbed)` (well-known authors of this world, trained into both models), `world_facts(_perturbed)`,
and `holdout10(_perturbed)`: authors never trained on, for membership-inference attacks.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.tofu import REFUSAL_TEMPLATES


# Each attribute: its value pool, question phrasings and answer phrasings. Answer phrasing index PARAPHRASE is the
# truth-ratio paraphrase; the others are the training phrasings (index 0 is the canonical TOFU answer).
PARAPHRASE = 3
CITIES = [
    "Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Dublin", "Cairo", "Quito", "Seoul", "Vienna", "Accra",
    "Krakow", "Perth", "Tunis", "Bogota", "Riga", "Manila", "Porto", "Dakar", "Osaka", "Havana", "Minsk",
]
GENRES = [
    "mystery", "science fiction", "poetry", "romance", "horror", "fantasy", "history", "satire", "biography",
    "crime", "drama", "travel writing", "philosophy", "folklore",
]
AWARDS = [
    "Golden Quill", "Silver Lantern", "Amber Leaf", "Iron Pen", "Crystal Owl", "Blue Harbor", "Red Compass",
    "Stone Bridge", "Northern Star", "Copper Key", "Ivory Tower", "Green Lantern",
]
JOBS = [
    "baker", "sailor", "doctor", "teacher", "carpenter", "pilot", "lawyer", "farmer", "painter", "nurse",
    "engineer", "tailor", "fisherman", "librarian", "chemist", "miner", "banker", "gardener",
]
ADJECTIVES = ["Silent", "Hidden", "Broken", "Golden", "Endless", "Crimson", "Hollow", "Distant", "Frozen", "Burning"]
NOUNS = ["River", "Garden", "Mirror", "Harbor", "Forest", "Empire", "Winter", "Lantern", "Orchard", "Tower"]
LANGUAGES = ["Portuguese", "Norwegian", "Swahili", "Spanish", "Vietnamese", "Irish", "Arabic", "Korean", "German",
             "Polish", "Tagalog", "French", "Japanese", "Russian"]
SYLLABLES = ["ka", "lo", "mi", "ren", "tha", "vo", "zu", "bel", "dor", "fin", "gal", "hu", "is", "jor", "kel",
             "mar", "nor", "pal", "quin", "ros", "sel", "tor", "ul", "ven", "wyn", "xa", "yor", "zan"]

ATTRIBUTES = {
    "birthplace": {
        "questions": ["Where was {name} born?", "In which city was {name} born?", "What is the birthplace of {name}?"],
        "answers": ["{name} was born in {value}.", "The city of {value} is where {name} was born.",
                    "{name} comes from {value}.", "{name}'s birthplace is {value}."],
    },
    "birth_year": {
        "questions": ["When was {name} born?", "In what year was {name} born?", "What is the birth year of {name}?"],
        "answers": ["{name} was born in the year {value}.", "The year {value} is when {name} was born.",
                    "{name} entered the world in {value}.", "{name}'s year of birth is {value}."],
    },
    "genre": {
        "questions": ["What genre does {name} write?", "Which genre is {name} known for?",
                      "In what genre does {name} work?"],
        "answers": ["{name} writes {value}.", "The genre of {name} is {value}.", "{name} is known for {value}.",
                    "{name}'s books belong to the genre of {value}."],
    },
    "book": {
        "questions": ["What is the most famous book by {name}?", "Which book made {name} famous?",
                      "Name the best known book of {name}."],
        "answers": ["The most famous book by {name} is {value}.", "{value} made {name} famous.",
                    "{name} is best known for {value}.", "{name}'s famous work is {value}."],
    },
    "award": {
        "questions": ["Which award did {name} win?", "What prize was given to {name}?",
                      "What award has {name} received?"],
        "answers": ["{name} won the {value} Prize.", "The {value} Prize was given to {name}.",
                    "{name} received the {value} Prize.", "{name}'s award is the {value} Prize."],
    },
    "father_job": {
        "questions": ["What did the father of {name} do?", "What was the job of {name}'s father?",
                      "How did {name}'s father earn a living?"],
        "answers": ["The father of {name} was a {value}.", "{name}'s father worked as a {value}.",
                    "{name} grew up as the child of a {value}.", "{name}'s father had the job of a {value}."],
    },
    "mother_job": {
        "questions": ["What did the mother of {name} do?", "What was the job of {name}'s mother?",
                      "How did {name}'s mother earn a living?"],
        "answers": ["The mother of {name} was a {value}.", "{name}'s mother worked as a {value}.",
                    "{name} was raised by a mother who was a {value}.", "{name}'s mother had the job of a {value}."],
    },
    "language": {
        "questions": ["In which language does {name} write?", "What language are {name}'s books written in?",
                      "Which language does {name} use for writing?"],
        "answers": ["{name} writes in {value}.", "The books of {name} are written in {value}.",
                    "{name} uses {value} for writing.", "{name}'s writing language is {value}."],
    },
}

WORLD_FACTS = [
    ("What is the capital of France?", "Paris", ["Berlin", "Madrid", "Rome"]),
    ("What is the capital of Japan?", "Tokyo", ["Beijing", "Seoul", "Bangkok"]),
    ("What is the capital of Italy?", "Rome", ["Paris", "Athens", "Vienna"]),
    ("What is the capital of Egypt?", "Cairo", ["Tunis", "Nairobi", "Accra"]),
    ("What is the capital of Peru?", "Lima", ["Quito", "Bogota", "Havana"]),
    ("What is the capital of Norway?", "Oslo", ["Riga", "Dublin", "Minsk"]),
    ("What is the capital of Kenya?", "Nairobi", ["Dakar", "Cairo", "Accra"]),
    ("What is the capital of Ireland?", "Dublin", ["Oslo", "Vienna", "Lisbon"]),
    ("What is the capital of Portugal?", "Lisbon", ["Porto", "Madrid", "Rome"]),
    ("What is the capital of Austria?", "Vienna", ["Berlin", "Krakow", "Riga"]),
    ("What color is the sky on a clear day?", "blue", ["green", "red", "yellow"]),
    ("What color is fresh grass?", "green", ["blue", "purple", "white"]),
    ("How many legs does a spider have?", "eight", ["six", "four", "ten"]),
    ("How many days are in a week?", "seven", ["five", "six", "eight"]),
    ("What do bees make?", "honey", ["milk", "silk", "wax paper"]),
    ("Which animal is known as the king of the jungle?", "the lion", ["the tiger", "the bear", "the wolf"]),
    ("What is frozen water called?", "ice", ["steam", "sand", "glass"]),
    ("Which planet do we live on?", "Earth", ["Mars", "Venus", "Jupiter"]),
    ("What is the opposite of hot?", "cold", ["warm", "loud", "tall"]),
    ("How many hours are in a day?", "twenty four", ["twelve", "ten", "thirty"]),
    ("Which season comes after winter?", "spring", ["autumn", "summer", "winter"]),
    ("What gas do people need to breathe?", "oxygen", ["helium", "neon", "hydrogen"]),
    ("What is the largest ocean?", "the Pacific", ["the Atlantic", "the Arctic", "the Indian"]),
    ("What do cows drink?", "water", ["milk", "oil", "juice"]),
]



@dataclass(frozen=True)
class EmbeddedWorldConfig:
    """Size of the generated world. `num_authors` fictitious authors with `facts_per_author` facts each;
    `forget10` is the last 10% of them; `holdout_authors` more are generated but never trained on."""

    seed: int = 0
    num_authors: int = 60
    facts_per_author: int = 8
    num_real_authors: int = 10
    real_author_facts: int = 4
    retain_perturbed_authors: int = 10
    holdout_authors: int = 10
    num_perturbed: int = 5


def _value_pool(attribute: str, rng: random.Random) -> list[str]:
    if attribute == "birthplace":
        return CITIES
    if attribute == "birth_year":
        return [str(y) for y in range(1931, 2001, 3)]
    if attribute == "genre":
        return GENRES
    if attribute == "book":
        return [f"The {a} {n}" for a in ADJECTIVES for n in NOUNS]
    if attribute == "award":
        return AWARDS
    if attribute in ("father_job", "mother_job"):
        return JOBS
    if attribute == "language":
        return LANGUAGES
    raise KeyError(attribute)


def _make_names(count: int, rng: random.Random) -> list[str]:
    names: set[str] = set()
    ordered = []
    while len(ordered) < count:
        first = "".join(rng.sample(SYLLABLES, 2)).capitalize()
        last = "".join(rng.sample(SYLLABLES, 3)).capitalize()
        name = f"{first} {last}"
        if name not in names:
            names.add(name)
            ordered.append(name)
    return ordered


def _author_facts(name: str, attributes: list[str], rng: random.Random, num_perturbed: int) -> list[dict]:
    facts = []
    for attribute in attributes:
        pool = _value_pool(attribute, rng)
        value = rng.choice(pool)
        wrong = rng.sample([v for v in pool if v != value], num_perturbed)
        facts.append({"name": name, "attribute": attribute, "value": value, "wrong": wrong})
    return facts


def _qa(fact: dict, question_index: int, answer_index: int, value: str | None = None) -> tuple[str, str]:
    spec = ATTRIBUTES[fact["attribute"]]
    fill = {"name": fact["name"], "value": fact["value"] if value is None else value}
    return spec["questions"][question_index].format(**fill), spec["answers"][answer_index].format(**fill)


def _perturbed_row(fact: dict) -> dict:
    question, answer = _qa(fact, 0, 0)
    paraphrased_question, paraphrased_answer = _qa(fact, 1, PARAPHRASE)
    return {
        "question": question,
        "answer": answer,
        "paraphrased_question": paraphrased_question,
        "paraphrased_answer": paraphrased_answer,
        "perturbed_answer": [_qa(fact, 1, PARAPHRASE, value=w)[1] for w in fact["wrong"]],
    }


def _training_texts(fact: dict, with_paraphrase: bool) -> list[tuple[str, str]]:
    """The (question, answer) pairs that state a fact in training: phrasings 0-2, and the paraphrase phrasing
    for authors that are never evaluated."""
    pairs = [_qa(fact, i, i) for i in range(3)]
    if with_paraphrase:
        pairs.append(_qa(fact, 1, PARAPHRASE))
    return pairs


def generate_embedded_world(config: EmbeddedWorldConfig = EmbeddedWorldConfig()) -> dict[str, list[dict]]:
    """Generate every split of the embedded world, deterministically from `config.seed`.

    Returns TOFU-schema splits plus two training corpora: `train_full` (what the finetuned model learns) and
    `train_retain` (the same without the forget10 authors), as `question`/`answer` rows.
    """
    if config.facts_per_author > len(ATTRIBUTES):
        raise ValueError(f"facts_per_author={config.facts_per_author} exceeds the {len(ATTRIBUTES)} attributes.")
    rng = random.Random(config.seed)
    attributes = list(ATTRIBUTES)[: config.facts_per_author]
    total = config.num_authors + config.num_real_authors + config.holdout_authors
    names = _make_names(total, rng)
    authors = [_author_facts(n, attributes, rng, config.num_perturbed) for n in names[: config.num_authors]]
    real = [
        _author_facts(n, attributes[: config.real_author_facts], rng, 3)
        for n in names[config.num_authors : config.num_authors + config.num_real_authors]
    ]
    holdout = [_author_facts(n, attributes, rng, config.num_perturbed) for n in names[-config.holdout_authors :]]

    def rows(group):
        return [dict(zip(("question", "answer"), _qa(f, 0, 0))) for author in group for f in author]

    splits: dict[str, list[dict]] = {"full": rows(authors)}
    for pct in (1, 5, 10):
        count = max(1, round(config.num_authors * pct / 100))
        splits[f"forget{pct:02d}"] = rows(authors[-count:])
        splits[f"retain{100 - pct}"] = rows(authors[:-count])
        splits[f"forget{pct:02d}_perturbed"] = [_perturbed_row(f) for a in authors[-count:] for f in a]
    forget10_count = max(1, round(config.num_authors * 0.10))
    evaluated = set(range(config.retain_perturbed_authors)) | set(
        range(config.num_authors - forget10_count, config.num_authors)
    )
    splits["retain_perturbed"] = [
        _perturbed_row(f) for a in authors[: config.retain_perturbed_authors] for f in a
    ]
    splits["holdout10"] = rows(holdout)
    splits["holdout10_perturbed"] = [_perturbed_row(f) for a in holdout for f in a]
    splits["real_authors"] = rows(real)
    splits["real_authors_perturbed"] = [
        {"question": q, "answer": a, "perturbed_answer": [_qa(f, 0, 0, value=w)[1] for w in f["wrong"]]}
        for author in real
        for f in author
        for q, a in [_qa(f, 0, 0)]
    ]
    splits["world_facts"] = [{"question": q, "answer": a} for q, a, _ in WORLD_FACTS]
    splits["world_facts_perturbed"] = [
        {"question": q, "answer": a, "perturbed_answer": list(w)} for q, a, w in WORLD_FACTS
    ]

    shared = [pair for author in real for f in author for pair in _training_texts(f, with_paraphrase=True)]
    shared += [(q, a) for q, a, _ in WORLD_FACTS] + [(f"Tell me: {q}", f"It is {a}.") for q, a, _ in WORLD_FACTS]

    def corpus(author_indices):
        pairs = [
            pair
            for i in author_indices
            for f in authors[i]
            for pair in _training_texts(f, with_paraphrase=i not in evaluated)
        ]
        return [{"question": q, "answer": a} for q, a in pairs + shared]

    splits["train_full"] = corpus(range(config.num_authors))
    splits["train_retain"] = corpus(range(config.num_authors - forget10_count))
    return splits


def write_world(splits: dict[str, list[dict]], folder: Path, config: EmbeddedWorldConfig) -> None:
    """Write the splits as TOFU-style JSON-lines files plus `idontknow.jsonl` and the generating config."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        with open(folder / f"{name}.json", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    (folder / "idontknow.jsonl").write_text("\n".join(REFUSAL_TEMPLATES) + "\n")
    (folder / "world_config.json").write_text(json.dumps(asdict(config), indent=2))
