"""What inference returns besides arrays: transcripts with word timings and their subtitle
formats (SRT, WebVTT), and speaker-verification verdicts."""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field


@dataclass
class Word:
    text: str
    start: float  # seconds from the start of the audio
    end: float
    # The geometric mean over the word's letters of each letter's mean CTC posterior on the
    # frames aligned to it: in (0, 1], low where the model was unsure what it heard.
    probability: float = 1.0


@dataclass
class Segment:
    """A run of words (a subtitle cue), with the confidence figures OpenAI's segments carry."""

    id: int
    start: float
    end: float
    text: str
    words: list[Word]

    @property
    def avg_logprob(self) -> float:
        """Mean natural log of the words' probabilities (0 is certain)."""
        return sum(math.log(max(w.probability, 1e-12)) for w in self.words) / max(len(self.words), 1)

    @property
    def compression_ratio(self) -> float:
        """Text bytes over their zlib size, as Whisper reports it: high for repetitive output."""
        data = self.text.encode()
        return round(len(data) / len(zlib.compress(data)), 4) if data else 0.0


@dataclass
class Transcript:
    text: str
    words: list[Word] = field(default_factory=list)
    duration: float = 0.0  # seconds of audio

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def join(cls, parts: list[tuple[float, "Transcript"]], duration: float) -> "Transcript":
        """One transcript from those of pieces of a recording, each with its start (seconds)."""
        words = [Word(w.text, round(w.start + offset, 3), round(w.end + offset, 3), w.probability)
                 for offset, part in parts for w in part.words]
        return cls(" ".join(part.text for _, part in parts if part.text), words, duration)

    def segments(self, max_words: int = 12, max_gap: float = 1.0) -> list[Segment]:
        """Runs of up to ``max_words`` words, broken at pauses over ``max_gap`` s."""
        runs: list[list[Word]] = []
        for word in self.words:
            if not runs or len(runs[-1]) == max_words or word.start - runs[-1][-1].end > max_gap:
                runs.append([])
            runs[-1].append(word)
        return [Segment(i, run[0].start, run[-1].end, " ".join(w.text for w in run), run) for i, run in enumerate(runs)]

    def cues(self, max_words: int = 12, max_gap: float = 1.0) -> list[tuple[float, float, str]]:
        """Subtitle cues (start, end, text): the segments."""
        return [(seg.start, seg.end, seg.text) for seg in self.segments(max_words, max_gap)]

    def logprobs(self) -> list[dict]:
        """OpenAI's ``logprobs`` for ``include[]=logprobs``: one entry per word (a space before
        all but the first, so the tokens join into ``text``), its log-probability and bytes."""
        tokens = [(" " if i else "") + w.text for i, w in enumerate(self.words)]
        return [{"token": t, "logprob": math.log(max(w.probability, 1e-12)), "bytes": list(t.encode())}
                for t, w in zip(tokens, self.words)]


@dataclass(frozen=True)
class Verification:
    score: float  # cosine of the two speaker vectors in [-1, 1], or its AS-norm ("scoring")
    threshold: float  # same speaker when score >= threshold (the validation split's EER point)
    same_speaker: bool
    scoring: str = "cosine"  # "cosine", or "as-norm": normalised against the checkpoint's cohort

    def to_dict(self) -> dict:
        return asdict(self)


def _clock(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(transcript: Transcript) -> str:
    blocks = [f"{i}\n{_clock(s, ',')} --> {_clock(e, ',')}\n{text}\n"
              for i, (s, e, text) in enumerate(transcript.cues(), start=1)]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    blocks = [f"{_clock(s, '.')} --> {_clock(e, '.')}\n{text}\n" for s, e, text in transcript.cues()]
    return "WEBVTT\n\n" + "\n".join(blocks)
