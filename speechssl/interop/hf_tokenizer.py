"""The CTC vocabulary of a transformers folder: read on import, written on export.

transformers keeps a CTC model's tokens in ``vocab.json`` (+ ``added_tokens.json``) and its
roles in ``tokenizer_config.json`` / ``special_tokens_map.json``: the pad token is the CTC
blank, ``word_delimiter_token`` separates words, and bos/eos/unk and added special tokens
are never text. speechssl stores the same facts in checkpoint metadata (``vocab``,
``blank_id``, ``special_tokens``) and spells the word delimiter ``|`` whatever the folder
called it, so decoding and word alignment need nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from speechssl.interop.hf_config import HfInteropError
from speechssl.models.heads import WORD_BOUNDARY

ROLES = ("pad_token", "bos_token", "eos_token", "unk_token")


@dataclass
class CtcVocabulary:
    tokens: list[str]
    blank_id: int
    special_tokens: list[str] = field(default_factory=list)  # never emitted as text (the blank aside)


def _token(value) -> str | None:
    """A token as the files write it: a string, or an AddedToken-style {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HfInteropError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HfInteropError(f"{path}: expected a JSON object")
    return data


def read_vocabulary(hf_dir: Path, size: int, pad_token_id: int | None) -> CtcVocabulary | None:
    """The folder's CTC vocabulary for an ``lm_head`` of ``size`` outputs; None without a vocab.json."""
    path = hf_dir / "vocab.json"
    if not path.is_file():
        return None
    token_ids = _read_json(path)
    if token_ids and all(isinstance(v, dict) for v in token_ids.values()):
        raise HfInteropError(f"{path}: a multi-language vocabulary (one per adapter) is not supported")
    tokens = [f"<unused{i}>" for i in range(size)]  # ids the files leave out (never trained)
    for token, i in token_ids.items():
        if not isinstance(i, int) or not 0 <= i < size:
            raise HfInteropError(f"{path}: token {token!r} has id {i!r}, but lm_head has {size} outputs")
        tokens[i] = token
    for token, i in _read_json(hf_dir / "added_tokens.json").items():
        # transformers appends special tokens the vocabulary lacks (a default <s>, </s>) past
        # the head's outputs: the model can never emit those.
        if isinstance(i, int) and 0 <= i < size:
            tokens[i] = token

    settings = {**_read_json(hf_dir / "tokenizer_config.json"), **_read_json(hf_dir / "special_tokens_map.json")}
    roles = {role: _token(settings.get(role)) for role in ROLES}
    special = {t for t in roles.values() if t}
    special |= {t for t in map(_token, settings.get("additional_special_tokens") or []) if t}
    for entry in (settings.get("added_tokens_decoder") or {}).values():
        if isinstance(entry, dict) and entry.get("special") and _token(entry):
            special.add(_token(entry))
    if not any(k in settings for k in ROLES):  # no tokenizer files: transformers' defaults
        special |= {"<pad>", "<s>", "</s>", "<unk>"}

    pad = roles["pad_token"] or "<pad>"
    if pad in tokens:
        blank_id = tokens.index(pad)
    elif pad_token_id is not None and 0 <= pad_token_id < size:
        blank_id = pad_token_id
    else:
        raise HfInteropError(f"{hf_dir}: the pad token {pad!r} (the CTC blank) is not in vocab.json")

    delimiter = _token(settings.get("word_delimiter_token")) or WORD_BOUNDARY
    if delimiter != WORD_BOUNDARY and delimiter in tokens:
        if WORD_BOUNDARY in tokens:
            raise HfInteropError(f"{hf_dir}: word delimiter {delimiter!r} and a separate {WORD_BOUNDARY!r} token")
        tokens[tokens.index(delimiter)] = WORD_BOUNDARY
    silent = sorted(t for t in special if t in tokens and t != tokens[blank_id] and t != WORD_BOUNDARY)
    return CtcVocabulary(tokens, blank_id, silent)


def write_vocabulary(out_dir: Path, tokens: list[str], blank_id: int) -> None:
    """vocab.json + the tokenizer files with which ``Wav2Vec2Processor.from_pretrained`` and the
    ASR pipeline decode what speechssl decodes: the blank as pad token, ``|`` between words."""
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False, indent=1))
    blank = tokens[blank_id]
    roles = {"pad_token": blank, "word_delimiter_token": WORD_BOUNDARY,
             # transformers needs an unknown token; a vocabulary without one maps unknowns to the blank.
             "unk_token": "<unk>" if "<unk>" in tokens else blank,
             "bos_token": "<s>" if "<s>" in tokens else None, "eos_token": "</s>" if "</s>" in tokens else None}
    config = {"tokenizer_class": "Wav2Vec2CTCTokenizer", "do_lower_case": False, "replace_word_delimiter_char": " ",
              **roles}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1))
    specials = {k: v for k, v in roles.items() if v is not None and k != "word_delimiter_token"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, ensure_ascii=False, indent=1))
