"""CTC decoding over a character vocabulary whose word boundary is "|".

Emissions are (frames, vocab) log-probabilities of one utterance. Greedy decoding takes
the best label per frame, merges repeats and drops blanks; beam search goes through
torchaudio's flashlight-text decoder, with an optional word n-gram LM (KenLM ARPA or
binary) and an optional lexicon. Without an LM the search is lexicon-free. With an ARPA
LM and no lexicon, the lexicon is the LM's own vocabulary (flashlight scores words only
through a lexicon; lexicon-free it would treat the LM as one over characters).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from speechssl.models.heads import BLANK, WORD_BOUNDARY
from speechssl.errors import SpeechSSLError


class DecodeError(SpeechSSLError, ValueError):
    """Bad decoder settings: a missing LM file, a vocabulary without blank or word boundary."""


def encode_text(text: str, vocab: list[str]) -> list[int]:
    """Normalized text -> label ids; spaces become the word boundary. A letter missing from the
    vocabulary is looked up in upper case (transformers' English vocabularies). Unknown characters raise."""
    index = {token: i for i, token in enumerate(vocab)}
    ids = []
    for c in text:
        token = WORD_BOUNDARY if c == " " else c if c in index else c.upper()
        if token not in index:
            raise DecodeError(f"character {c!r} is not in the vocabulary")
        ids.append(index[token])
    return ids


def labels_to_text(labels: list[int], vocab: list[str], blank_id: int, silent: set[int] | None = None,
                   lower: bool = True) -> str:
    """Collapse a frame-level label path: merge repeats, then drop the blank and the ``silent`` ids
    (special tokens), "|" -> space; lower case (the project's convention) unless ``lower=False``.

    Repeats merge before anything is dropped, as in CTC and in transformers' ``decode`` without
    ``skip_special_tokens`` (with it, transformers drops the blanks first and so merges the two
    letters of "ll" across the blank between them)."""
    text = " ".join(split_words(collapse(labels, vocab, blank_id, silent)))
    return text.lower() if lower else text


def split_words(tokens: str) -> list[str]:
    """The words of a collapsed token string ("|" between words, any number of them)."""
    return tokens.replace(WORD_BOUNDARY, " ").split()


def collapse(labels: list[int], vocab: list[str], blank_id: int, silent: set[int] | None = None,
             previous: int | None = None) -> str:
    """The tokens of a label path with repeats merged and the blank and ``silent`` ids dropped,
    word boundaries kept as "|"; ``previous`` is the label before the path (a stream's last one)."""
    silent = {blank_id} | (silent or set())
    chars = []
    for label in labels:
        if label != previous and label not in silent:
            chars.append(vocab[label])
        previous = label
    return "".join(chars)


def greedy_decode(emissions: Tensor, vocab: list[str], blank_id: int = 0, silent: set[int] | None = None) -> str:
    return labels_to_text(emissions.argmax(-1).tolist(), vocab, blank_id, silent)


class GreedyTextStream:
    """Greedy decoding of emissions that arrive in order (a long file's windows), as text deltas.

    A word is sent once a word boundary follows it, since later frames can only extend the last
    word; ``finish`` sends the rest. The deltas joined are exactly ``greedy_decode`` of all the
    emissions at once.
    """

    def __init__(self, vocab: list[str], blank_id: int = 0, silent: set[int] | None = None):
        self.vocab, self.blank_id, self.silent = vocab, blank_id, silent
        self.tokens = ""  # collapsed so far, "|" between words
        self.last: int | None = None  # the final label so far: a repeat across the seam merges
        self.sent = 0  # words sent

    def feed(self, emissions: Tensor) -> str:
        labels = emissions.argmax(-1).tolist()
        self.tokens += collapse(labels, self.vocab, self.blank_id, self.silent, self.last)
        self.last = labels[-1] if labels else self.last
        boundary = self.tokens.rfind(WORD_BOUNDARY)
        return self._send(self.tokens[:boundary] if boundary >= 0 else "")

    def finish(self) -> str:
        return self._send(self.tokens)

    def _send(self, finished: str) -> str:
        new = split_words(finished.lower())[self.sent:]
        if not new:
            return ""
        delta = (" " if self.sent else "") + " ".join(new)
        self.sent += len(new)
        return delta


@dataclass
class BeamSettings:
    beam_size: int = 50
    lm: str | None = None  # KenLM ARPA or binary file
    lexicon: str | None = None  # "word c h a r s |" per line; None: lexicon-free
    lm_weight: float = 0.5
    word_score: float = 0.0
    beam_threshold: float = 25.0
    # Hypotheses kept at the end: an empty best one is replaced by the best one with words when
    # the acoustics emit letters (see BeamDecoder.__call__).
    nbest: int = 20


class BeamDecoder:
    """Beam search over emissions; built once (loading an LM takes a while), used per utterance."""

    def __init__(self, vocab: list[str], settings: BeamSettings | None = None):
        from torchaudio.models.decoder import ctc_decoder

        settings = settings or BeamSettings()
        if BLANK not in vocab or WORD_BOUNDARY not in vocab:
            raise DecodeError(f"beam search needs {BLANK!r} and {WORD_BOUNDARY!r} in the vocabulary")
        for name in ("lm", "lexicon"):
            path = getattr(settings, name)
            if path is not None and not Path(path).is_file():
                raise DecodeError(f"{name} file not found: {path}")
        lexicon = settings.lexicon
        if settings.lm is not None and lexicon is None:
            lexicon = lexicon_from_arpa(settings.lm, vocab)
        with quiet_stderr():  # KenLM prints a progress bar and advice to fd 2 while it reads the LM
            self.decoder = ctc_decoder(
                lexicon=lexicon, tokens=vocab, lm=settings.lm, nbest=settings.nbest, beam_size=settings.beam_size,
                beam_threshold=settings.beam_threshold, lm_weight=settings.lm_weight if settings.lm else 0.0,
                word_score=settings.word_score, blank_token=BLANK, sil_token=WORD_BOUNDARY,
                unk_word="<unk>", log_add=True,
            )
        self.vocab = vocab
        self.blank_id = vocab.index(BLANK)
        self.letters = torch.tensor([t not in (BLANK, WORD_BOUNDARY) for t in vocab])
        self.lock = threading.Lock()  # flashlight's decoder keeps per-call state: one call at a time

    def __call__(self, emissions: Tensor) -> str:
        with self.lock:
            hyps = self.decoder(emissions.float().cpu().unsqueeze(0).contiguous())[0]
        best = self.text(hyps[0].tokens.tolist()) if hyps else ""
        if not best and bool(self.letters[emissions.argmax(-1).cpu()].any()):
            # A lexicon beam drops a word the acoustics only half spell ("ix" for "six"): the
            # empty sentence then outscores every real word. When the greedy path does emit
            # letters, a guess with words is better than nothing (FSDD held-out speaker: WER
            # 0.212 -> 0.178); silence still decodes to "".
            best = next((t for t in (self.text(h.tokens.tolist()) for h in hyps[1:]) if t), "")
        return best

    def text(self, tokens: list[int]) -> str:
        # hyp.tokens is already collapsed (repeats merged, blanks dropped): joining it must not
        # merge again, or "ll" in "hello" would become one letter.
        chars = "".join(self.vocab[t] for t in tokens if t != self.blank_id)
        return " ".join(chars.replace(WORD_BOUNDARY, " ").split())


@contextlib.contextmanager
def quiet_stderr():
    """File descriptor 2 to /dev/null for a while: C++ code writes there past Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def lm_decoder(vocab: list[str], arpa_gzip: bytes, settings: dict | None = None) -> BeamDecoder:
    """A BeamDecoder on an ARPA word n-gram held in memory (gzip'd, as a checkpoint carries it);
    ``settings``: BeamSettings fields (beam_size, lm_weight, word_score, ...)."""
    import dataclasses
    import gzip
    import os
    import tempfile

    known = {f.name for f in dataclasses.fields(BeamSettings)} - {"lm", "lexicon"}
    try:
        text = gzip.decompress(arpa_gzip)
    except (OSError, EOFError) as exc:
        raise DecodeError(f"the checkpoint's language model is not a gzip'd ARPA file ({exc})") from None
    fd, path = tempfile.mkstemp(suffix=".arpa")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
        # KenLM reads the whole file while the decoder is built; the file is not needed after.
        return BeamDecoder(vocab, BeamSettings(lm=path, **{k: v for k, v in (settings or {}).items() if k in known}))
    finally:
        os.unlink(path)


def lexicon_from_arpa(lm: str, vocab: list[str]) -> str:
    """Write "word w o r d |" for each unigram of an ARPA file that the vocabulary can spell."""
    import tempfile

    spellable = set(vocab) - {BLANK, WORD_BOUNDARY}
    words, in_unigrams = [], False
    with open(lm, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("\\"):
                in_unigrams = line.strip() == "\\1-grams:"
                continue
            parts = line.split()
            if in_unigrams and len(parts) >= 2 and set(parts[1]) <= spellable:
                words.append(parts[1])
    if not words:
        raise DecodeError(f"{lm}: no words to build a lexicon from (a binary LM needs --lexicon)")
    out = tempfile.NamedTemporaryFile("w", suffix=".lexicon", delete=False, encoding="utf-8")
    with out:
        out.writelines(f"{w} {' '.join(w)} {WORD_BOUNDARY}\n" for w in words)
    return out.name
