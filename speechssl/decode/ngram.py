"""A word n-gram language model from plain text, written as ARPA for KenLM/flashlight.

KenLM's own builder (``lmplz``) is a C++ tool that pip does not ship; this writes the
same file format with interpolated absolute discounting, which is exact in ARPA form:
a seen n-gram stores its interpolated probability, and a history h stores the backoff
weight D * N1+(h .) / c(h) that an unseen continuation is scaled by.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from speechssl.data.manifest import normalize_text

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def count_ngrams(sentences: Iterable[str], order: int) -> list[Counter]:
    """counts[n-1][(w1..wn)] over sentences padded with <s> and </s>."""
    counts = [Counter() for _ in range(order)]
    for sentence in sentences:
        words = [BOS, *normalize_text(sentence).split(), EOS]
        if len(words) == 2:
            continue
        for n in range(1, order + 1):
            for i in range(len(words) - n + 1):
                gram = tuple(words[i : i + n])
                if gram != (BOS,):
                    counts[n - 1][gram] += 1
    return counts


def build_arpa(sentences: Iterable[str], order: int = 3, discount: float = 0.7,
               background: dict[str, float] | None = None, background_weight: float = 0.0) -> str:
    """ARPA text of the sentences' n-gram; ``background`` (word -> relative frequency, e.g. a
    general English word list) mixes into the unigrams with ``background_weight``, so the
    decoder can spell words the sentences never used, at the odds a general text gives them."""
    if order < 1:
        raise ValueError("order must be >= 1")
    if not 0 < discount < 1:
        raise ValueError("discount must be in (0, 1)")
    if not 0 <= background_weight < 1 or (background_weight > 0 and not background):
        raise ValueError("background_weight must be in [0, 1), and above 0 only with background words")
    counts = count_ngrams(sentences, order)
    if not counts[0]:
        raise ValueError("no words in the text")
    probs: list[dict[tuple, float]] = []
    # Unigrams: discounted counts, the freed mass spread evenly over the vocabulary and <unk>.
    total = sum(counts[0].values())
    vocab = len(counts[0]) + 1
    freed = discount * len(counts[0]) / total
    uni = {g: (c - discount) / total + freed / vocab for g, c in counts[0].items()}
    uni[(UNK,)] = freed / vocab
    if background_weight > 0:
        # Every higher order backs off to these, so the model stays normalised as it is.
        words = {w: f for w, f in (background or {}).items() if w not in (BOS, EOS, UNK) and f > 0}
        norm = sum(words.values())
        uni = {g: (1 - background_weight) * p for g, p in uni.items()}
        for w, f in words.items():
            uni[(w,)] = uni.get((w,), 0.0) + background_weight * f / norm
    probs.append(uni)
    backoff: list[dict[tuple, float]] = [{} for _ in range(order)]
    for n in range(2, order + 1):
        history_total: dict[tuple, int] = defaultdict(int)
        history_types: dict[tuple, int] = defaultdict(int)
        for gram, c in counts[n - 1].items():
            history_total[gram[:-1]] += c
            history_types[gram[:-1]] += 1
        level = {}
        for gram, c in counts[n - 1].items():
            h = gram[:-1]
            alpha = discount * history_types[h] / history_total[h]
            level[gram] = (c - discount) / history_total[h] + alpha * lower_prob(probs, gram[1:])
        for h in history_total:
            backoff[n - 2][h] = discount * history_types[h] / history_total[h]
        probs.append(level)
    lines = ["\\data\\"] + [f"ngram {n}={len(probs[n - 1]) + (n == 1)}" for n in range(1, order + 1)] + [""]
    for n in range(1, order + 1):
        lines.append(f"\\{n}-grams:")
        entries = list(probs[n - 1].items()) + ([((BOS,), None)] if n == 1 else [])
        for gram, p in sorted(entries, key=lambda e: e[0]):
            logp = -99.0 if p is None else math.log10(p)
            row = f"{logp:.6f}\t{' '.join(gram)}"
            if n < order and gram in backoff[n - 1]:
                row += f"\t{math.log10(backoff[n - 1][gram]):.6f}"
            lines.append(row)
        lines.append("")
    lines.append("\\end\\")
    return "\n".join(lines) + "\n"


def lower_prob(probs: list[dict[tuple, float]], gram: tuple) -> float:
    """p(w | shorter history), through the lower orders already built (backing off as ARPA does)."""
    n = len(gram)
    if n == 1:
        return probs[0].get(gram, probs[0][(UNK,)])
    if gram in probs[n - 1]:
        return probs[n - 1][gram]
    return lower_prob(probs, gram[1:])  # within build_arpa every lower-order n-gram was seen


def english_words(count: int) -> dict[str, float]:
    """The ``count`` most frequent English words of the ``wordfreq`` package (the optional ``lm``
    extra; its word lists are CC BY-SA 4.0), normalised like the CTC alphabet, with their
    frequencies: a general-text background for ``build_arpa``."""
    try:
        import wordfreq
    except ImportError:
        raise ImportError("general English word frequencies need the optional wordfreq package: "
                          "pip install -e '.[lm]'") from None
    words: dict[str, float] = {}
    for word in wordfreq.top_n_list("en", 2 * count):
        text = normalize_text(word)
        if text and " " not in text and text not in words:
            words[text] = wordfreq.word_frequency(word, "en")
            if len(words) == count:
                break
    return words


def write_arpa(sentences: Iterable[str], path: str | Path, order: int = 3, discount: float = 0.7,
               background: dict[str, float] | None = None, background_weight: float = 0.0) -> None:
    Path(path).write_text(build_arpa(sentences, order, discount, background, background_weight), encoding="utf-8")
