"""What inference returns besides arrays: transcripts with word timings and their subtitle
formats (SRT, WebVTT), and speaker-verification verdicts."""

from __future__ import annotations

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
class Transcript:
    text: str
    words: list[Word] = field(default_factory=list)
    duration: float = 0.0  # seconds of audio

    def to_dict(self) -> dict:
        return asdict(self)

    def cues(self, max_words: int = 12, max_gap: float = 1.0) -> list[tuple[float, float, str]]:
        """Subtitle cues: runs of up to ``max_words`` words, broken at pauses over ``max_gap`` s."""
        cues: list[tuple[float, float, str]] = []
        run: list[Word] = []
        for word in self.words:
            if run and (len(run) == max_words or word.start - run[-1].end > max_gap):
                cues.append((run[0].start, run[-1].end, " ".join(w.text for w in run)))
                run = []
            run.append(word)
        if run:
            cues.append((run[0].start, run[-1].end, " ".join(w.text for w in run)))
        return cues


@dataclass(frozen=True)
class Verification:
    score: float  # cosine of the two speaker vectors, in [-1, 1]
    threshold: float  # same speaker when score >= threshold (the validation split's EER point)
    same_speaker: bool

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
