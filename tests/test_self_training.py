"""experiments/self_training.py's pseudo-labelling step, with the shipped model as the teacher
on real clips: the labeled draw keeps its transcripts, the rest take the teacher's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "fixtures" / "real"
TEXTS = {"LJ002-0198": "the office of marshal had been hereditary",
         "LJ002-0155": "for which the costs were six shillings ten pence",
         "an119-fmjc-b": "enter thirty five", "an117-fmjc-b": "rubout m n z l three seven seven",
         "an255-fash-b": "u m n y h six", "cen1-fash-b": "h i n i c h",
         "cen1-mcel-b": "l a m p s o n", "cen2-mcel-b": "c l a r k"}


def test_pseudo_labels_keep_the_labeled_draw_and_the_most_confident_rest(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    from self_training import pseudo_label

    from speechssl.data.manifest import read_manifest
    from speechssl.train.ctc import labeled_subset

    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"id": name, "path": str(REAL / f"{name}.flac"), "text": text,
                                            "duration": sf.info(REAL / f"{name}.flac").duration,
                                            "speaker": name.split("-")[1] if name.startswith(("an", "cen")) else "lj"})
                                + "\n" for name, text in TEXTS.items()))
    minutes = 4 / 60  # a draw of a few clips
    labeled = {u.id for u in labeled_subset(read_manifest(manifest), minutes / 60, seed=0)}
    assert 0 < len(labeled) < len(TEXTS)
    out = tmp_path / "pseudo.jsonl"
    report = pseudo_label(ROOT / "speechssl/assets/default.safetensors", [str(manifest)], minutes, 0, 0.5, out, 2)

    rows = read_manifest(out)
    rest = len(TEXTS) - len(labeled)
    assert report["labeled"] == len(labeled)
    assert report["pseudo_labeled"] + report["left_out"] == rest and report["pseudo_labeled"] <= round(rest * 0.5)
    assert len(rows) == len(labeled) + report["pseudo_labeled"]
    by_id = {r.id: r for r in rows}
    assert all(by_id[i].text == TEXTS[i] for i in labeled)
    guessed = [r for r in rows if r.id not in labeled]
    assert guessed and all(r.text and Path(r.path).is_file() for r in guessed)
    assert 0 <= report["pseudo_label_cer"] < 1  # the shipped model reads these clips, imperfectly
