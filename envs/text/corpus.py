"""A procedurally generated review corpus: prompts (openings) and responses (continuations).

No dataset can be downloaded on these machines, so the text task makes its own: short
reviews of restaurants, hotels, gadgets and films. A review's sentiment is drawn first
(positive, negative or mixed), then sentences are drawn from templates whose adjectives,
verbs and verdicts carry that sentiment. The SFT policy learns this mixture, so it starts
near neutral on average and RL has room to move it towards positive reviews.

The grammar also defines what "fluent" means for the gold scorer: the word vocabulary and
the set of word bigrams (within a sentence) the grammar can produce (see `fluency_tables`).
"""
from __future__ import annotations

import random
import re
from functools import lru_cache

# Openings are "template with {place} and {when}" so that the prompt set is large enough to
# hold out unseen prompts for evaluation (the env splits them into train/eval).
TOPICS: dict[str, dict[str, list[str]]] = {
    "restaurant": {
        "openings": ["we had dinner at {place} {when}.", "i ordered the lunch special at {place} {when}.",
                     "my review of {place}, visited {when}:"],
        "places": ["the bistro", "the diner", "the new cafe", "the steakhouse", "the noodle bar",
                   "the pizza place", "the taco stand", "the sushi bar"],
        "aspects": ["the food", "the pasta", "the soup", "the service", "the staff", "the waiter",
                    "the dessert", "the coffee", "the bread", "the menu"],
    },
    "hotel": {
        "openings": ["we stayed at {place} {when}.", "i booked a room at {place} {when}.",
                     "my review of {place}, visited {when}:"],
        "places": ["the hotel", "the beach resort", "the inn", "the lodge", "the hostel",
                   "the motel", "the guest house", "the spa hotel"],
        "aspects": ["the room", "the bed", "the view", "the pool", "the breakfast", "the staff",
                    "the location", "the shower", "the lobby"],
    },
    "gadget": {
        "openings": ["i bought {place} {when}.", "we got {place} {when}.",
                     "my review of {place}, bought {when}:"],
        "places": ["this phone", "the new headphones", "this blender", "the robot vacuum",
                   "this laptop", "the smart watch", "this camera", "the coffee machine"],
        "aspects": ["the battery", "the screen", "the price", "the design", "the sound",
                    "the motor", "the case", "the charger", "the app"],
    },
    "film": {
        "openings": ["we watched {place} {when}.", "i saw {place} {when}.",
                     "my review of {place}, seen {when}:"],
        "places": ["the new thriller", "the comedy", "the documentary", "the musical",
                   "the horror movie", "the cartoon", "the war film", "the drama"],
        "aspects": ["the plot", "the acting", "the ending", "the music", "the cast", "the story",
                    "the dialogue", "the pacing"],
    },
}
WHEN = ["last night", "on friday", "last week", "in may", "with friends", "for my birthday"]

ADJECTIVES = {
    "pos": ["good", "great", "nice", "lovely", "excellent", "friendly", "delicious", "amazing",
            "wonderful", "perfect", "fresh", "pleasant", "fantastic", "comfortable", "clean", "fun"],
    "neg": ["bad", "terrible", "awful", "horrible", "rude", "boring", "dirty", "poor",
            "disappointing", "ugly", "annoying", "weak", "sad", "broken", "stupid", "dull"],
    "neu": ["okay", "average", "small", "big", "quiet", "simple", "new", "long", "short",
            "cheap", "expensive", "slow", "fast", "late", "warm", "plain"],
}
ADVERBS = ["very", "really", "quite", "so", "pretty", "a bit", "extremely", "rather"]
VERBS = {"pos": ["loved", "liked", "enjoyed", "appreciated"],
         "neg": ["hated", "disliked", "regretted", "missed"]}
VERDICTS = {
    "pos": ["i would recommend it.", "i will come back.", "overall it was worth it.",
            "we were happy with it.", "i would buy it again."],
    "neg": ["i would not recommend it.", "i will not come back.", "overall it was a waste.",
            "we were unhappy with it.", "i would not buy it again."],
    "neu": ["it was what we expected.", "nothing more to say.", "it did the job."],
}
# How a review's sentiment translates into the sentiment of each adjective it uses.
MOODS = {"pos": {"pos": 0.75, "neu": 0.25}, "neg": {"neg": 0.75, "neu": 0.25},
         "mixed": {"pos": 0.35, "neg": 0.35, "neu": 0.3}, "plain": {"neu": 0.85, "pos": 0.075, "neg": 0.075}}
MOOD_WEIGHTS = {"pos": 0.3, "neg": 0.3, "mixed": 0.4}
# Which reviews the demonstrations hold (env.reviews): `mixed` is the corpus above; `plain` has
# mostly neutral adjectives (a rare praising or complaining one, so that RL can still find
# praise), no verbs of liking and neutral verdicts -- reviews that state facts (the SFT policy
# of the constrained-RLHF task, docs/constrained_rlhf.md).
REVIEW_STYLES = {"mixed": MOOD_WEIGHTS, "plain": {"plain": 1.0}}


def all_prompts() -> list[str]:
    """Every opening the task can show, in a fixed order (split into train/eval by the env)."""
    return [f"review: {opening.format(place=place, when=when)}"
            for topic in TOPICS.values() for opening in topic["openings"]
            for place in topic["places"] for when in WHEN]


def topic_of(prompt: str) -> str:
    for name, topic in TOPICS.items():
        if any(f" {place}" in prompt for place in topic["places"]):
            return name
    raise ValueError(f"prompt {prompt!r} is not one of this corpus' openings")


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _adjective(rng: random.Random, mood: str) -> str:
    return rng.choice(ADJECTIVES[_pick(rng, MOODS[mood])])


def _adjective_phrase(rng: random.Random, mood: str) -> str:
    adj = _adjective(rng, mood)
    return f"{rng.choice(ADVERBS)} {adj}" if rng.random() < 0.4 else adj


def _sentence(rng: random.Random, topic: str, mood: str) -> str:
    aspects = TOPICS[topic]["aspects"]
    a, b = rng.sample(aspects, 2)
    kind = rng.randrange(6)
    if kind == 0:
        return f"{a} was {_adjective_phrase(rng, mood)}."
    if kind == 1:
        return f"{a} was {_adjective_phrase(rng, mood)} and {b} was {_adjective(rng, mood)}."
    if kind == 2:
        return f"{a} was {_adjective(rng, mood)} but {b} was {_adjective(rng, mood)}."
    if kind == 3:
        # negation: "not great" is negative for VADER, "not bad" mildly positive.
        flipped = {"pos": "neg", "neg": "pos"}.get(mood, mood)
        return f"{a} was not {_adjective(rng, flipped)}."
    if kind == 4 and mood == "plain":  # no verb of liking or disliking in a plain review
        return f"{a} was {_adjective(rng, mood)}."
    if kind == 4:
        verb_mood = mood if mood in VERBS else rng.choice(["pos", "neg"])
        return f"i {rng.choice(VERBS[verb_mood])} {a}."
    return f"{a} was {_adjective(rng, mood)}, {b} was {_adjective(rng, mood)}."


def review(rng: random.Random, topic: str, moods: dict[str, float] = MOOD_WEIGHTS) -> str:
    """One response: 1-2 sentences in the review's mood (drawn from `moods`), sometimes
    followed by a verdict."""
    mood = _pick(rng, moods)
    sentences = [_sentence(rng, topic, mood) for _ in range(rng.choice([1, 1, 2]))]
    if rng.random() < 0.5:
        verdict_mood = mood if mood in VERDICTS else "neu"
        sentences.append(rng.choice(VERDICTS[verdict_mood]))
    return " ".join(sentences)


def demonstrations(prompts: list[str], n: int, seed: int, style: str = "mixed") -> list[tuple[str, str]]:
    """(prompt, response) pairs; the response starts with the space that follows the prompt.
    `style`: a key of REVIEW_STYLES."""
    if style not in REVIEW_STYLES:
        raise ValueError(f"review style {style!r} unknown; valid choices: {', '.join(REVIEW_STYLES)}")
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        prompt = rng.choice(prompts)
        pairs.append((prompt, " " + review(rng, topic_of(prompt), REVIEW_STYLES[style])))
    return pairs


WORD_RE = re.compile(r"[a-z']+")


def words(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


@lru_cache(maxsize=1)
def fluency_tables() -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """The grammar's vocabulary and the word bigrams it produces (from a large sample).

    The sample is large enough that every bigram the templates can produce appears
    (checked in tests: doubling the sample adds no new bigram)."""
    return _tables_from_sample(40_000)


def _tables_from_sample(n: int) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    rng = random.Random(1234)
    vocab: set[str] = set()
    bigrams: set[tuple[str, str]] = set()
    for i in range(n):
        topic = list(TOPICS)[i % len(TOPICS)]
        for sentence in sentences(review(rng, topic)):
            vocab.update(sentence)
            bigrams.update(zip(sentence, sentence[1:]))
    return frozenset(vocab), frozenset(bigrams)


def sentences(text: str) -> list[list[str]]:
    """Words of each sentence (bigrams are counted within sentences, not across them)."""
    return [ws for part in text.lower().split(".") if (ws := words(part))]
