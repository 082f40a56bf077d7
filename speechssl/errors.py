"""The base of every speechssl exception.

Each module raises its own subclass (ConfigError, CheckpointError, AudioError, ManifestError,
DecodeError, ...), whose message says what is wrong in words; callers that only report the
reason catch ``SpeechSSLError`` once: the CLI prints it and exits 2, the server answers 4xx.
Subclasses keep their older built-in base too (most are ValueErrors), so ``except ValueError``
written against an earlier version still catches them.
"""

from __future__ import annotations


class SpeechSSLError(Exception):
    """Something speechssl cannot do with what it was given; the message says why."""
