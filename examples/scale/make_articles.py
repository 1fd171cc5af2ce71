#!/usr/bin/env python3
"""Write N article-like JSON Lines ({"id", "title", "text"}) for the scale-out demos.

The articles are made up from templates (people, organisations, places, a topic), 60-220
words each, so NER finds entities and sentiment has something to say. Deterministic for a
given --seed, so a rerun gives the same file and the same results.

    python3 examples/scale/make_articles.py --count 3000 --output .scale/articles.jsonl
"""

import argparse
import json
import random
import sys

PEOPLE = [
    "Angela Merkel", "Emmanuel Macron", "Barack Obama", "Jacinda Ardern", "Olaf Scholz",
    "Ursula von der Leyen", "Christine Lagarde", "Tim Cook", "Satya Nadella", "Mary Barra",
    "Pedro Sanchez", "Giorgia Meloni", "Antonio Guterres", "Narendra Modi", "Lula da Silva",
    "Kristalina Georgieva", "Jens Stoltenberg", "Sundar Pichai", "Serena Williams", "Lionel Messi",
]
ORGS = [
    "the United Nations", "the European Central Bank", "Deutsche Bank", "Airbus", "Toyota",
    "the World Health Organization", "Microsoft", "Reuters", "the IMF", "Siemens",
    "the Red Cross", "NATO", "Volkswagen", "Apple", "the World Bank", "Greenpeace",
]
PLACES = [
    "Berlin", "Paris", "Washington", "Tokyo", "Brussels", "Geneva", "Madrid", "Rome",
    "New Delhi", "Brasilia", "Nairobi", "Ottawa", "Canberra", "Seoul", "Warsaw", "Lisbon",
]
TOPICS = [
    ("trade talks", "tariffs", "exports"), ("a storm", "flooding", "evacuations"),
    ("interest rates", "inflation", "markets"), ("an election", "voters", "polls"),
    ("a vaccine rollout", "clinics", "doses"), ("a new factory", "jobs", "investment"),
    ("a climate summit", "emissions", "targets"), ("a football final", "fans", "the stadium"),
]
GOOD = ["welcomed", "praised", "celebrated", "hailed", "applauded"]
BAD = ["criticised", "condemned", "warned against", "rejected", "questioned"]
SENTENCES = [
    "{person} {verb} the plan on {day} during a visit to {place}.",
    "Officials from {org} said {topic0} would continue in {place} next week.",
    "{org} expects {topic1} to shape the coming months, a spokesperson told reporters in {place}.",
    "Critics argued that {topic2} had been {adj} since the spring.",
    "{person} met representatives of {org} to discuss {topic0}.",
    "The talks in {place} ended without a joint statement, according to {org}.",
    "Analysts at {org} described the outlook for {topic2} as {adj}.",
    "Residents of {place} said they were {feeling} about {topic1}.",
    "{person} told the parliament that {topic0} was a priority for the government.",
    "A report published by {org} on {day} looked at {topic1} and {topic2}.",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ADJ_GOOD = ["strong", "encouraging", "remarkably stable", "better than expected"]
ADJ_BAD = ["weak", "disappointing", "alarmingly volatile", "worse than feared"]
FEEL_GOOD = ["hopeful", "delighted", "relieved"]
FEEL_BAD = ["angry", "worried", "frustrated"]


def article(rng: random.Random, n: int) -> dict:
    topic = rng.choice(TOPICS)
    positive = rng.random() < 0.5
    words = rng.randint(60, 220)
    place = rng.choice(PLACES)
    title = f"{rng.choice(PEOPLE)} {rng.choice(GOOD if positive else BAD)} {topic[0]} in {place}"
    body = []
    count = 0
    while count < words:
        s = rng.choice(SENTENCES).format(
            person=rng.choice(PEOPLE),
            org=rng.choice(ORGS),
            place=rng.choice([place, rng.choice(PLACES)]),
            day=rng.choice(DAYS),
            verb=rng.choice(GOOD if positive else BAD),
            topic0=topic[0], topic1=topic[1], topic2=topic[2],
            adj=rng.choice(ADJ_GOOD if positive else ADJ_BAD),
            feeling=rng.choice(FEEL_GOOD if positive else FEEL_BAD),
        )
        s = s[0].upper() + s[1:]
        body.append(s)
        count += len(s.split())
    return {"id": f"art-{n:07d}", "title": title, "text": title + ". " + " ".join(body)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--output", default="-", help="file to write ('-': stdout)")
    a = p.parse_args()
    rng = random.Random(a.seed)
    out = sys.stdout if a.output == "-" else open(a.output, "w", encoding="utf-8")
    with out:
        for n in range(1, a.count + 1):
            out.write(json.dumps(article(rng, n), ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
