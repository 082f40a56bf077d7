"""English sentences for the synthetic corpus.

Two sources, merged, de-duplicated and shuffled with a seed:
- a small template grammar (several hundred words, numbers spelt out), always present,
  so the corpus can be built on any machine;
- Debian text when installed: `fortunes` (plain files split on ``%``) and WordNet
  glosses and example sentences.

Every sentence is returned normalised (`manifest.normalize_text`: lower-case letters,
apostrophe, space). The synthesizers read this same normalised string, so the audio
says exactly what the transcript says.
"""
from __future__ import annotations

import functools
import random
import re
from pathlib import Path

from speechssl.data.manifest import normalize_text

FORTUNE_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
MIN_WORDS, MAX_WORDS = 3, 20
# WordNet has ~117k glosses; cap them so definitions do not swamp real sentences.
MAX_GLOSSES = 40_000
# Fortune files that are pictures or code rather than prose.
_SKIP_FORTUNES = {"ascii-art", "perl", "translate-me"}

# ---------------------------------------------------------------- numbers
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def number_to_words(n: int) -> str:
    """Spell a non-negative integer: 342 -> 'three hundred forty two'."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            words = f"{number_to_words(head)} {name}"
            return words if rest == 0 else f"{words} {number_to_words(rest)}"
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- cleaning
# Prose only: anything with markup, code or maths symbols is rejected outright.
_PROSE = re.compile(r"^[A-Za-z0-9 ,.;:!?'\"()\-]+$")
_ACRONYM = re.compile(r"\b[A-Z]{2,}\b")
_DICTIONARY_TAGS = {"n", "v", "vt", "vi", "adj", "adv", "pp"}
_LOOSE_APOSTROPHE = re.compile(r"(?<![A-Za-z])'|'(?![A-Za-z])")


def clean_sentence(raw: str) -> str | None:
    """Normalise one candidate sentence, or None if it is not plain English prose."""
    text = " ".join(raw.split())
    if not text or not _PROSE.match(text):
        return None
    # Synthesizers spell acronyms letter by letter; the transcript would not match.
    if _ACRONYM.search(text):
        return None
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    if re.search(r"\d[A-Za-z]|[A-Za-z]\d|\d[.:]\d", text):  # 3rd, A4, 1.5: no single reading
        return None
    text = re.sub(r"\d+", lambda m: f" {number_to_words(int(m.group()))} ", text)
    text = re.sub(r"\([^()]*\)", " ", text)  # asides: "(Aristotle) the state of ..."
    text = _LOOSE_APOSTROPHE.sub(" ", re.sub(r"[-()\"]", " ", text))
    words = normalize_text(text).split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or max(len(w) for w in words) > 18:
        return None
    if words[1] in _DICTIONARY_TAGS:  # "lawsuit, n.: a machine which ..."
        return None
    text = " ".join(words)
    return text


def split_sentences(paragraph: str) -> list[str]:
    paragraph = " ".join(paragraph.split())
    return re.split(r"(?<=[.!?])\s+(?=[A-Z\"(])", paragraph)


# ---------------------------------------------------------------- Debian text
@functools.lru_cache(maxsize=4)
def fortune_sentences(root: Path = FORTUNE_DIR) -> tuple[str, ...]:
    """Sentences from the plain-text fortune files (those without a suffix)."""
    out: list[str] = []
    root = Path(root)
    files = sorted(p for p in root.glob("*") if p.is_file() and not p.suffix) if root.is_dir() else []
    for path in files:
        if path.name in _SKIP_FORTUNES:
            continue
        for entry in path.read_text(encoding="latin-1").split("\n%"):
            # Drop attribution lines ("-- Mark Twain") and list markers ("(3) ").
            lines = [ln for ln in entry.splitlines() if not ln.strip().startswith("--")]
            body = re.sub(r"(^|\s)\(\d+\)\s", " ", " ".join(lines))
            out.extend(s for s in map(clean_sentence, split_sentences(body)) if s)
    return tuple(out)


@functools.lru_cache(maxsize=4)
def wordnet_sentences(root: Path = WORDNET_DIR, max_glosses: int = MAX_GLOSSES) -> tuple[str, ...]:
    """WordNet example sentences (quoted parts of glosses) plus definitions from at most
    `max_glosses` glosses."""
    examples: list[str] = []
    glosses: list[str] = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = Path(root) / f"data.{pos}"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or " | " not in line:  # licence header
                continue
            for part in line.split(" | ", 1)[1].split(";"):
                part = part.strip()
                if part.startswith('"'):
                    examples.append(part.strip('"'))
                elif part:
                    glosses.append(part)
    # Take glosses spread over all parts of speech, not just the first file's nouns.
    stride = max(1, len(glosses) // max_glosses) if max_glosses else len(glosses) + 1
    picked = glosses[::stride][:max_glosses]
    return tuple(s for s in map(clean_sentence, examples + picked) if s)


# ---------------------------------------------------------------- grammar
_W = str.split
NAMES = _W("anna ben carla david emma frank grace henry isabel jack karen leo maria nathan "
           "olivia peter quinn rachel samuel tina victor wendy xavier yvonne zachary alice "
           "brian chloe daniel eleanor felix georgia harold irene james julia kevin laura "
           "martin nora oscar paula robert sophie thomas ursula walter")
PRONOUNS = _W("i you he she we they")
RELATIVES = _W("mother father sister brother aunt uncle cousin grandmother grandfather "
               "neighbour friend teacher doctor boss colleague")
ADJECTIVES = _W("big small old young quiet noisy bright dark heavy light warm cold wet dry "
                "clean dirty cheap expensive strange famous tiny huge yellow green purple "
                "orange silver golden wooden broken shiny rusty gentle angry happy sleepy "
                "hungry clever lazy busy careful careless brave proud polite rude friendly "
                "lonely lucky modern ancient fresh rotten sweet bitter sour smooth rough "
                "narrow wide empty crowded strong weak pale curious nervous calm fancy plain")
NOUNS = _W("apple basket bicycle blanket bottle bucket button camera candle carpet castle "
           "chair cheese chicken clock cloud coat computer cookie cushion desk diamond "
           "dinner dragon drawer engine envelope feather fence finger flower forest garden "
           "giraffe guitar hammer helmet island jacket jungle kettle kitten ladder lamp "
           "lemon letter lizard magnet market melon mirror monkey mountain needle nest "
           "notebook ocean onion orchard packet paddle parrot pencil penguin piano pillow "
           "pirate planet pocket potato puzzle rabbit radio river robot rocket saddle "
           "sandwich scarf shadow shovel singer spider spoon squirrel stone sugar suitcase "
           "sweater table teapot ticket tiger tomato tower tractor trumpet tunnel turtle "
           "umbrella valley violin wagon wallet window wizard yacht zebra banana cabinet "
           "dolphin falcon hedgehog lantern meadow muffin pebble postcard pumpkin sailor "
           "soldier statue teacup thunder trolley village whistle")
# (base, past) pairs; templates never need the third person singular.
VERBS = [tuple(p.split("/")) for p in _W(
    "paint/painted carry/carried find/found lose/lost buy/bought sell/sold borrow/borrowed "
    "repair/repaired break/broke wash/washed hide/hid open/opened close/closed throw/threw "
    "catch/caught push/pushed pull/pulled watch/watched draw/drew build/built bring/brought "
    "steal/stole count/counted measure/measured weigh/weighed polish/polished wrap/wrapped "
    "deliver/delivered order/ordered cook/cooked chase/chased follow/followed forget/forgot "
    "remember/remembered describe/described photograph/photographed sketch/sketched "
    "examine/examined inspect/inspected visit/visited feed/fed lift/lifted drop/dropped "
    "shake/shook fold/folded mend/mended fetch/fetched kick/kicked touch/touched "
    "admire/admired ignore/ignored guard/guarded hang/hung decorate/decorated")]
PLACES = _W("in/the/kitchen in/the/garden on/the/roof under/the/bridge near/the/station "
            "behind/the/library beside/the/lake at/the/museum inside/the/barn across/the/street "
            "by/the/harbour at/the/airport in/the/attic on/the/beach at/the/bakery "
            "in/the/cellar near/the/cathedral outside/the/theatre on/the/platform in/the/hallway")
TIMES = _W("yesterday today tomorrow last/night this/morning every/evening on/monday "
           "on/tuesday on/wednesday on/thursday on/friday on/saturday on/sunday in/january "
           "in/april in/july in/october in/december at/dawn at/midnight after/lunch "
           "before/breakfast during/the/storm")
ADVERBS = _W("quickly slowly carefully quietly loudly happily sadly gently suddenly "
             "eagerly calmly nervously proudly secretly rarely always never often "
             "patiently clumsily")
UNITS = _W("minute hour day week month year")
TEMPLATES = (
    "{subj} {past} {obj} {place} {time}",
    "{subj} will {verb} {obj} {time}",
    "{subj} {adv} {past} {obj} {place}",
    "did {subj} {verb} {obj} {place}",
    "{name} said that {subj} {past} {obj}",
    "there are {num} {adj} {nouns} {place}",
    "{subj} can't {verb} {obj} because {subj2} {past2} {obj2}",
    "the {noun} is {adj} but the {noun2} is {adj2}",
    "{time} {subj} {past} {num} {nouns} at {hour} o'clock",
    "my {rel} has {num} {nouns} and {num2} {adj} {nouns2}",
    "please {verb} {obj} before {subj} {past2} {obj2}",
    "we waited {num} {unit}s for {obj} {place}",
    "{subj} wouldn't {verb} {obj} {adv}",
    "why did the {adj} {noun} {verb} {obj} {time}",
    "{name} and {name2} {past} {obj} {place}",
    "the {noun} cost {big} pounds {time}",
)


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")) or noun in ("potato", "tomato"):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _grammar_sentence(rng: random.Random) -> str:
    def np_() -> str:
        choice = rng.random()
        if choice < 0.25:
            return rng.choice(NAMES)
        if choice < 0.5:
            return rng.choice(PRONOUNS)
        if choice < 0.75:
            return f"my {rng.choice(RELATIVES)}"
        return f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"

    def obj() -> str:
        adj, noun = rng.choice(ADJECTIVES), rng.choice(NOUNS)
        det = rng.choice(("the", "a", "her", "his", "their", "our", "num"))
        if det == "num":
            return f"{number_to_words(rng.randint(2, 12))} {adj} {_plural(noun)}"
        if det == "a" and adj[0] in "aeiou":
            det = "an"
        return f"{det} {adj} {noun}"

    (verb, past), (_, past2) = rng.choice(VERBS), rng.choice(VERBS)
    slots = dict(
        subj=np_(), subj2=np_(), obj=obj(), obj2=obj(), verb=verb, past=past, past2=past2,
        place=rng.choice(PLACES).replace("/", " "), time=rng.choice(TIMES).replace("/", " "),
        adv=rng.choice(ADVERBS), name=rng.choice(NAMES), name2=rng.choice(NAMES),
        adj=rng.choice(ADJECTIVES), adj2=rng.choice(ADJECTIVES), noun=rng.choice(NOUNS),
        noun2=rng.choice(NOUNS), nouns=_plural(rng.choice(NOUNS)), nouns2=_plural(rng.choice(NOUNS)),
        rel=rng.choice(RELATIVES), unit=rng.choice(UNITS), hour=number_to_words(rng.randint(1, 12)),
        num=number_to_words(rng.randint(2, 99)), num2=number_to_words(rng.randint(2, 999)),
        big=number_to_words(rng.choice((rng.randint(100, 999), rng.randint(1000, 99999)))),
    )
    return normalize_text(rng.choice(TEMPLATES).format(**slots))


@functools.lru_cache(maxsize=4)
def grammar_sentences(n: int, seed: int = 0) -> tuple[str, ...]:
    """`n` distinct sentences from the template grammar, deterministic for `seed`."""
    rng = random.Random(f"grammar-{seed}")
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen.setdefault(_grammar_sentence(rng))
    return tuple(seen)


@functools.lru_cache(maxsize=4)
def _distinct_sentences(n_grammar: int, use_debian: bool) -> tuple[str, ...]:
    pool = list(grammar_sentences(n_grammar))
    if use_debian:
        pool += list(fortune_sentences()) + list(wordnet_sentences())
    return tuple(sorted(set(pool)))  # sorted: set order must not leak into the shuffle


def sentence_pool(seed: int = 0, *, n_grammar: int = 30_000, use_debian: bool = True) -> list[str]:
    """All distinct normalised sentences (grammar + Debian text), shuffled with `seed`.

    The set of sentences is the same for every seed; the seed only orders it (and so
    decides which sentences a corpus uses and which land in the held-out pools).
    Falls back to the grammar alone when the Debian text packages are absent.
    """
    pool = list(_distinct_sentences(n_grammar, use_debian))
    random.Random(f"pool-{seed}").shuffle(pool)
    return pool
