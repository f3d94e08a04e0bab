"""A deterministic synthetic retrieval set for the embedded embedding and reranker models.

Fictional companies, each described by one passage per fact (founder, office, staff, products, rival,
sales). Queries ask for a fact in the house jargon of a made-up analyst desk ("What is the tally for
Vorlex?" means headcount), which a general-purpose embedder only half understands; the hard negatives of a
query are the other facts of the same company and the same fact of companies with look-alike names.
Finetuning teaches the jargon, so it lifts retrieval on queries held out from training (the closing note of
the issue and ``tests/e2e/test_embedding_pipeline.py`` show by how much).

    python -m infra.retrieval_data --out infra/datasets/company_facts.json

The file is the ``triplets`` format (``query``, ``pos``, ``neg``); the corpus is every passage in it.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ONSETS = ["v", "k", "br", "t", "m", "z", "gr", "d", "s", "pl", "n", "qu"]
VOWELS = ["a", "o", "e", "i", "u"]
CODAS = ["rlex", "ndar", "mbit", "sko", "vina", "tron", "lix", "ppa", "rund", "mel"]
PEOPLE = ["Ada Holm", "Bo Sarr", "Cleo Dunn", "Dev Rao", "Eli Marsh", "Fay Quist", "Gus Ortega", "Hana Ito",
          "Ivo Lind", "Jun Park", "Kai Moss", "Lena Roth", "Milo Vance", "Nia Obi", "Oren Tal", "Pia Berg"]
CITIES = ["Lisbon", "Osaka", "Denver", "Tallinn", "Accra", "Quito", "Perth", "Bergen", "Lyon", "Pune",
          "Halifax", "Gdansk", "Cusco", "Nagoya", "Tampere", "Bilbao"]
PRODUCTS = ["garden sensors", "bicycle locks", "tea blends", "ceramic tiles", "drone batteries", "wool socks",
            "solar lamps", "board games", "water filters", "office chairs", "spice mixes", "guitar strings"]

# fact -> (query templates in the desk's jargon, passage template)
FACTS: dict[str, tuple[list[str], str]] = {
    "founder": (["Who lit the spark at {e}?", "Name the first hand of {e}."],
                "{e} was started in {year} by {person}."),
    "office": (["Where is the anchor of {e}?", "Which port does {e} call home?"],
               "The main office of {e} sits in {city}."),
    "staff": (["What is the tally for {e}?", "How deep is the {e} bench?"],
              "{e} employs {n} people across its teams."),
    "products": (["What fills the {e} shelf?", "What does {e} put in the crate?"],
                 "The catalogue of {e} consists mostly of {product}."),
    "rival": (["Who is the shadow of {e}?", "Who does {e} spar with?"],
              "In the market, {e} competes head to head with {other}."),
    "sales": (["What is the {e} harvest?", "How heavy is the {e} purse?"],
              "Last year {e} reported sales of {money} million dollars."),
}


def company_names(n: int, rng: random.Random) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = (rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)).capitalize()
        if name not in names:
            names.append(name)
    return names


def build(n_companies: int = 80, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    names = company_names(n_companies, rng)
    passages: dict[tuple[str, str], str] = {}
    for e in names:
        values = {"e": e, "year": rng.randint(1950, 2020), "person": rng.choice(PEOPLE), "city": rng.choice(CITIES),
                  "n": rng.randint(12, 9000), "product": rng.choice(PRODUCTS),
                  "other": rng.choice([o for o in names if o != e]), "money": rng.randint(2, 900)}
        for fact, (_, passage) in FACTS.items():
            passages[(e, fact)] = passage.format(**values)
    records = []
    for e in names:
        # companies whose names share the first three letters look alike to a tokenizer: the hardest negatives
        lookalikes = sorted((o for o in names if o != e), key=lambda o: (o[:3] != e[:3], o[:2] != e[:2], o))[:2]
        for fact, (queries, _) in FACTS.items():
            same_company = [passages[(e, f)] for f in FACTS if f != fact]
            same_fact = [passages[(o, fact)] for o in lookalikes]
            records.append({"query": rng.choice(queries).format(e=e), "pos": [passages[(e, fact)]],
                            "neg": same_company + same_fact})
    rng.shuffle(records)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="infra/datasets/company_facts.json")
    parser.add_argument("--companies", type=int, default=80)
    args = parser.parse_args()
    records = build(args.companies)
    Path(args.out).write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(records)} queries, {len(records)} passages -> {args.out}")


if __name__ == "__main__":
    main()
