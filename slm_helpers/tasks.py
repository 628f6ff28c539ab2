"""Fine-tuning tasks with checkable answers, written offline by a seeded generator (lesson 13).

``json_extraction``: a sentence about a person goes in, their details come out as one line of JSON::

    Maria Lopez, 34, moved to Lyon in 2019 to work as a nurse.
    -> {"name": "Maria Lopez", "age": 34, "city": "Lyon", "job": "nurse"}

The answer is exact (one right string per sentence), so a model's output is either right or wrong,
and greedy exact match is the score. The training and test sets share no first name, no surname,
no city and no phrasing of the sentence: a model that scores well on the test set has learned the
skill (find the fields, write the format), not the examples. Jobs are shared: they are the fields'
vocabulary, not the task.

``greedy_matches`` scores a model on such pairs mostly without decoding: one teacher-forced pass per
batch, and decoding only where the model may spell the answer in other tokens.

What it leaves out: any other task; the command line's ``--task`` names this one, ``json``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import torch

from .data import IGNORE_INDEX, ChatExamples
from .errors import SLMError
from .sampling import token_stream
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
# More words for training only. The answer spells each word in other tokens than the sentence
# (" Zurich" is one token, '"Zurich' is "Z" "ur" "ich"), so the model must recall how each word is
# spelled: trained on a few dozen cities it learns those spellings, on a few hundred it learns to
# spell what it reads.
MORE_FIRST_NAMES = [
    "Abel", "Adrian", "Agnes", "Aisha", "Akira", "Alba", "Alexei", "Alice", "Amir", "Ana",
    "Andrei", "Anika", "Anton", "Aria", "Arthur", "Asha", "Ayla", "Beatriz", "Benedikt",
    "Bianca", "Boris", "Camila", "Caspar", "Celine", "Chiara", "Cyrus", "Dalia", "Damian",
    "Daria", "Diana", "Dominik", "Edgar", "Eliska", "Elif", "Emil", "Emma", "Enzo", "Erik",
    "Esther", "Farid", "Fiona", "Florian", "Gabriel", "Gemma", "Gideon", "Gloria", "Hamid",
    "Harriet", "Helena", "Henry", "Hiro", "Ilse", "Imani", "Irene", "Isaac", "Jamal", "Jana",
    "Javier", "Jonah", "Josefa", "Juan", "Kai", "Karim", "Karla", "Katya", "Kemal", "Kira",
    "Laila", "Lars", "Laura", "Leon", "Liam", "Lina", "Lorenzo", "Lotte", "Magnus", "Maja",
    "Manon", "Marek", "Marta", "Matilda", "Max", "Maya", "Miguel", "Milan", "Miriam", "Naomi",
    "Nathan", "Nils", "Noah", "Olga", "Oscar", "Petra", "Philippe", "Rahul", "Rebecca", "Renata",
    "Ruben", "Ruth", "Sami", "Sanjay", "Simone", "Sven", "Tamar", "Teresa", "Theo", "Uma",
    "Valentina", "Walter", "Xavier", "Yasmin", "Yuki", "Zeynep", "Zofia",
]
MORE_SURNAMES = [
    "Abbott", "Acosta", "Alvarez", "Andersson", "Arslan", "Bauer", "Becker", "Bianchi", "Blanco",
    "Bonnet", "Brandt", "Campbell", "Carvalho", "Cerny", "Clarke", "Conti", "Cruz", "Dalton",
    "Delgado", "Dimitrov", "Doyle", "Engel", "Esposito", "Fleming", "Fuchs", "Gallo", "Gomez",
    "Gonzalez", "Graham", "Gruber", "Hansen", "Hartmann", "Hoffmann", "Holm", "Ibrahim",
    "Jakobsen", "Janssen", "Jovanovic", "Kaiser", "Kato", "Kaur", "Kelly", "Klein", "Koch",
    "Kumar", "Lange", "Lehmann", "Lewis", "Lombardi", "Maier", "Marino", "Meyer", "Moller",
    "Moretti", "Muller", "Nakamura", "Nielsen", "Nowak", "Obi", "Owusu", "Park", "Pereira",
    "Perez", "Peters", "Pham", "Quinteros", "Ramos", "Reyes", "Rios", "Roth", "Russo", "Santos",
    "Schneider", "Schulz", "Sorensen", "Stewart", "Takahashi", "Tran", "Ueda", "Vasquez",
    "Vogel", "Wagner", "Watanabe", "Williams", "Wolf", "Yang", "Zhang", "Ziegler",
]
MORE_CITIES = [
    "Aachen", "Adana", "Agra", "Alicante", "Almaty", "Amiens", "Ankara", "Arequipa", "Asmara",
    "Aswan", "Auckland", "Avignon", "Baku", "Bamako", "Bangor", "Bari", "Basel", "Bath",
    "Belfast", "Bern", "Bonn", "Bordeaux", "Bremen", "Brest", "Brighton", "Bruges", "Budapest",
    "Cadiz", "Cairns", "Cardiff", "Cologne", "Colombo", "Como", "Darwin", "Delft", "Derby",
    "Dijon", "Dublin", "Dundee", "Durban", "Eindhoven", "Essen", "Exeter", "Faro", "Florence",
    "Fresno", "Galway", "Gdansk", "Geelong", "Gothenburg", "Hobart", "Houston", "Innsbruck",
    "Izmir", "Jaipur", "Kampala", "Kassel", "Kaunas", "Kiel", "Kingston", "Kobe", "Lahore",
    "Lausanne", "Leiden", "Limerick", "Linz", "Lisbon", "Lucerne", "Luxor", "Madrid", "Mainz",
    "Malaga", "Manila", "Marseille", "Memphis", "Milan", "Montreal", "Munich", "Nagoya",
    "Naples", "Nice", "Norwich", "Nuremberg", "Odense", "Oxford", "Padua", "Palermo", "Parma",
    "Pisa", "Poznan", "Prague", "Reno", "Rennes", "Rome", "Rotterdam", "Santiago", "Sheffield",
    "Siena", "Split", "Stuttgart", "Sydney", "Tampa", "Tbilisi", "Toledo", "Toronto", "Trieste",
    "Tromso", "Tunis", "Uppsala", "Vancouver", "Verona", "Vienna", "Warsaw", "Windsor",
    "Winnipeg", "York", "Zagreb",
]
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


def _pool(items: list, more: list, split: str) -> list:
    """The first half of ``items`` and ``more`` for training, the second half for testing."""
    return items[:len(items) // 2] + more if split == "train" else items[len(items) // 2:]


def json_extraction(n: int, split: str = "train", seed: int = 0) -> list[Example]:
    """``n`` examples of the ``split`` ("train" or "test"), the same ones for the same ``seed``."""
    if split not in ("train", "test"):
        raise SLMError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SLMError(f"the number of examples must be an integer >= 0, got {n!r}")
    rng = random.Random(f"{split}-{seed}")  # a str seed: the same sequence on every platform
    firsts, surnames, cities = (_pool(items, more, split) for items, more in (
        (FIRST_NAMES, MORE_FIRST_NAMES), (SURNAMES, MORE_SURNAMES), (CITIES, MORE_CITIES)))
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
def greedy_matches(model, tokenizer, pairs, batch_size: int = 8, pad_id: int = 0) -> list[bool]:
    """For each (prompt ids, reply ids) pair: would greedy decoding write exactly this reply's text?

    It would if every token of the reply is the most likely one given the tokens before it. So one
    forward pass over prompt + reply ("teacher forcing") decides most pairs, a whole batch at once,
    where decoding writes one token per pass. The rows are ``data.ChatExamples``' (padded at the
    end, which a causal model never looks at; targets -100 outside the replies).

    But a text has more than one spelling in tokens: the answer's ``"Zurich`` is ``"Z`` ``ur``
    ``ich``, and a model that writes ``"Zur`` ``ich`` writes the same text. So where the greedy
    token first differs from the reply's, the pair is decided on text: a miss if that token's text
    does not continue the reply's, else the rest is decoded greedily and compared, byte for byte.
    """
    device = next(model.parameters()).device
    verdicts = []
    with eval_mode(model):
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            rows = ChatExamples(chunk, max(len(p) + len(r) for p, r in chunk) - 1, pad_id=pad_id)
            x, y = rows.batch(torch.arange(len(chunk)), device)  # y: the replies, -100 elsewhere
            best = model(x)[0].argmax(dim=-1)  # (B, T): each greedy choice
            differs = (best != y) & (y != IGNORE_INDEX)  # (B, T)
            for row, (prompt, reply) in enumerate(chunk):
                if not differs[row].any():
                    verdicts.append(True)
                    continue
                at = differs[row].nonzero()[0].item()  # the first position where greedy differs
                rest = tokenizer.decode_bytes(reply[at + 1 - len(prompt):])  # what is left to write
                verdicts.append(rest.startswith(tokenizer.decode_bytes([best[row, at].item()]))
                                and _decodes_to(model, tokenizer, x[row, :at + 1], rest,
                                                end_id=reply[-1]))
    return verdicts


def _decodes_to(model, tokenizer, ids: torch.Tensor, text: bytes, end_id: int) -> bool:
    """Does greedy decoding after ``ids`` (T,) write exactly ``text``, ending with end_id?"""
    written = b""
    # a token writes at least one byte, so len(text) steps are enough
    for token in token_stream(model, ids[None], len(text), temperature=0):
        written += tokenizer.decode_bytes([token.item()])
        if not text.startswith(written):
            return False
        if token.item() == end_id:
            return written == text
    return False
