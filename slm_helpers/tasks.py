"""Fine-tuning tasks with checkable answers, written offline by a seeded generator (lesson 13).

``json_extraction``: a sentence about a person goes in, their details come out as one line of JSON::

    Maria Lopez, 34, moved to Lyon in 2019 to work as a nurse.
    -> {"name": "Maria Lopez", "age": 34, "city": "Lyon", "job": "nurse"}

The answer is exact (one right string per sentence), so a model's output is either right or wrong,
and greedy exact match is the score. The training and test sets share no first name, no surname,
no city and no phrasing of the sentence: a model that scores well on the test set has learned the
skill (find the fields, write the format), not the examples. Jobs are shared: they are the fields'
vocabulary, not the task.

``greedy_matches`` scores a model on such pairs without decoding: one teacher-forced pass per batch.

What it leaves out: any other task; the command line's ``--task`` names this one, ``json``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import torch

from .data import IGNORE_INDEX, ChatExamples
from .errors import SLMError
from .utils import eval_mode

INSTRUCTION = 'Give the name, age, city and job in this text as JSON.\n\nText: '

# Each list is cut in two: the first half for training, the second for testing.
FIRST_NAMES = ["Maria", "James", "Aiko", "Lukas", "Fatima", "Diego", "Ingrid", "Kwame", "Elena",
               "Tomasz", "Priya", "Oliver", "Sofia", "Mateo", "Hannah", "Yusuf", "Clara", "Ravi",
               "Noor", "Felix", "Amara", "Jonas", "Leila", "Marco", "Anya", "Samuel", "Mei",
               "Pablo", "Zara", "Henrik", "Chloe", "Tariq", "Ines", "Viktor", "Grace", "Emeka",
               "Lucia", "Arjun", "Freya", "Hugo", "Nadia", "Carlos", "Astrid", "Kenji", "Rosa",
               "Omar", "Greta", "Malik", "Julia", "Dmitri", "Ayesha", "Thomas", "Lena", "Rafael",
               "Keiko", "Bruno", "Selin", "Patrick", "Alma", "Ivan", "Nina", "Chidi", "Sara",
               "Mikael", "Rania", "Luis", "Hana", "Stefan", "Ada", "Kofi", "Vera", "Niko",
               "Isabel", "Ahmed", "Eva", "Tobias", "Yara", "Daniel", "Mina", "Jakob", "Wanjiru",
               "Paolo"]
SURNAMES = ["Lopez", "Okafor", "Tanaka", "Schmidt", "Haddad", "Novak", "Larsen", "Mensah",
            "Rossi", "Kowalski", "Sharma", "Bennett", "Costa", "Moreau", "Fischer", "Yilmaz",
            "Dubois", "Nair", "Kim", "Walsh", "Silva", "Berg", "Hassan", "Romano", "Petrov",
            "Adeyemi", "Chen", "Garcia", "Ali", "Lindqvist", "Martin", "Khan", "Ferreira",
            "Ivanova", "Murphy", "Eze", "Torres", "Patel", "Olsen", "Laurent", "Nguyen", "Weber",
            "Sato", "Rahman", "Jensen", "Morales", "Wojcik", "Brennan", "Abdi", "Kaya",
            "Fontaine", "Varga", "Osei", "Mendes", "Horvat", "Ishikawa", "Quinn", "Salazar",
            "Dahl", "Popescu", "Mwangi", "Keller", "Barros", "Lund", "Castillo", "Suzuki",
            "Byrne", "Farah", "Novotny", "Ortega", "Hughes", "Bakker", "Rizzo", "Svensson",
            "Akhtar", "Kovacs", "Duarte", "Yamada", "Ndiaye", "Richter"]
CITIES = ["Lyon", "Osaka", "Porto", "Leeds", "Krakow", "Austin", "Nairobi", "Bergen", "Turin",
          "Quebec", "Seville", "Dresden", "Accra", "Perth", "Utrecht", "Denver", "Hanoi", "Graz",
          "Cusco", "Malmo", "Geneva", "Lagos", "Bilbao", "Tampere", "Calgary", "Valencia",
          "Kyoto", "Cork", "Brno", "Adelaide", "Bologna", "Dakar", "Ghent", "Tucson", "Lille",
          "Pune", "Salzburg", "Riga", "Halifax", "Cordoba", "Nantes", "Sapporo", "Leipzig",
          "Mombasa", "Aarhus", "Genoa", "Boston", "Busan", "Tartu", "Antwerp", "Granada",
          "Kumasi", "Oslo", "Mysore", "Zurich", "Tallinn", "Vilnius", "Toulouse", "Bristol",
          "Hamburg"]
JOBS = ["nurse", "teacher", "architect", "baker", "pilot", "engineer", "librarian", "plumber",
        "chef", "dentist", "journalist", "electrician", "accountant", "gardener", "pharmacist",
        "translator", "carpenter", "veterinarian", "photographer", "mechanic", "lawyer", "farmer",
        "designer", "surgeon"]
TRAIN_PHRASINGS = [
    "{name}, {age}, moved to {city} in {year} to work as {a_job}.",
    "{name} is {age} years old and works as {a_job} in {city}.",
    "Meet {name}: {a_job} from {city}, aged {age}.",
    "After years of study, {name} became {a_job}. At {age}, {first} lives in {city}.",
    "Our new neighbour in {city} is {name}, {a_job}, who turned {age} in spring.",
    "{name} ({age}) has been {a_job} in {city} since {year}.",
    "As {a_job} in {city}, {name} is always busy. {first} is {age}.",
    "{city}, {year}: {name}, aged {age}, starts work as {a_job}.",
    "At {age}, {name} still works as {a_job}, now in {city}.",
    "Ask anyone in {city} about {name}: the {job} is {age} and well known.",
    "Name: {name}. Age: {age}. Lives in {city}, works as {a_job}.",
    "The {age}-year-old {name} is {a_job} based in {city}.",
]
TEST_PHRASINGS = [
    "Born {age} years ago, {name} now works in {city} as {a_job}.",
    "The {job} {name}, {age}, arrived in {city} in {year}.",
    "{city} has a new {job}: {name}, who is {age}.",
    "{name} works in {city}. {first} is {a_job} and {age} years old.",
]


@dataclass(frozen=True)
class Example:
    prompt: str  # the user's message
    answer: str  # the assistant's reply, exactly
    fields: dict  # what the answer encodes


def _half(items: list, split: str) -> list:
    return items[:len(items) // 2] if split == "train" else items[len(items) // 2:]


def json_extraction(n: int, split: str = "train", seed: int = 0) -> list[Example]:
    """``n`` examples of the ``split`` ("train" or "test"), the same ones for the same ``seed``."""
    if split not in ("train", "test"):
        raise SLMError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SLMError(f"the number of examples must be an integer >= 0, got {n!r}")
    rng = random.Random(f"{split}-{seed}")  # a str seed: the same sequence on every platform
    firsts, surnames, cities = (_half(items, split) for items in (FIRST_NAMES, SURNAMES, CITIES))
    phrasings = TRAIN_PHRASINGS if split == "train" else TEST_PHRASINGS
    examples = []
    for _ in range(n):
        first, job = rng.choice(firsts), rng.choice(JOBS)
        fields = {"name": f"{first} {rng.choice(surnames)}", "age": rng.randint(19, 78),
                  "city": rng.choice(cities), "job": job}
        article = "an" if job[0] in "aeiou" else "a"
        text = rng.choice(phrasings).format(**fields, first=first, a_job=f"{article} {job}",
                                            year=rng.randint(1995, 2024))
        examples.append(Example(INSTRUCTION + text, json.dumps(fields), fields))
    return examples


TASKS = {"json": json_extraction}


@torch.no_grad()
def greedy_matches(model, pairs, batch_size: int = 8, pad_id: int = 0) -> list[bool]:
    """For each (prompt ids, reply ids) pair: would greedy decoding write exactly this reply?

    It would if, and only if, every token of the reply is the most likely one given the tokens
    before it. So one forward pass over prompt + reply ("teacher forcing") decides it, for a whole
    batch at once, where decoding writes one token per pass. The rows are ``data.ChatExamples``'
    (padded at the end, which a causal model never looks at; targets -100 outside the replies).
    """
    device = next(model.parameters()).device
    verdicts = []
    with eval_mode(model):
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            rows = ChatExamples(chunk, max(len(p) + len(r) for p, r in chunk) - 1, pad_id=pad_id)
            x, y = rows.batch(torch.arange(len(chunk)), device)  # y: the replies, -100 elsewhere
            best = model(x)[0].argmax(dim=-1)  # (B, T): each greedy choice
            verdicts += ((best == y) | (y == IGNORE_INDEX)).all(dim=1).tolist()
    return verdicts
