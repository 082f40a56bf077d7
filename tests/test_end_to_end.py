"""The whole path through the CLI, as a user runs it: synthesise, pretrain, fine-tune, transcribe.

Slow (a minute or two on 2 cores): CI runs it in its second stage.
"""

import json
import shutil
import subprocess
import sys

import pytest

from speechssl.transcript import Transcript, Word, to_srt

pytestmark = pytest.mark.slow


def cli(*args: str, cwd=None) -> str:
    done = subprocess.run([sys.executable, "-m", "speechssl.cli", *args], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, f"speechssl {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def test_synth_pretrain_finetune_transcribe(tmp_path):
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed (make test installs it)")
    corpus = tmp_path / "corpus"
    cli("data", "synth", "--out", str(corpus), "--hours", "0.03", "--seed", "0")
    for split in ("train", "valid", "test"):
        assert (corpus / f"{split}.jsonl").stat().st_size > 0

    pre = tmp_path / "pretrain"
    out = json.loads(cli("pretrain", "configs/pretrain/tiny.yaml", f"data.train=[{corpus}/train.jsonl]",
                         f"data.valid=[{corpus}/valid.jsonl]", "optim.max_steps=6", "optim.warmup_steps=2",
                         "run.valid_every=3", "run.checkpoint_every=3", f"run.out_dir={pre}", "run.progress=false"))
    assert out["step"] == 6 and (pre / "best.safetensors").exists() and (pre / "curves.png").exists()

    ctc = tmp_path / "ctc"
    out = json.loads(cli("finetune-ctc", "configs/ctc/small.yaml", f"init_from={pre}/best.safetensors",
                         f"data.train=[{corpus}/train.jsonl]", f"data.valid=[{corpus}/valid.jsonl]",
                         "optim.max_steps=6", "optim.warmup_steps=2", "optim.hold_steps=2", "data.max_batch_seconds=30",
                         "run.valid_every=3", "run.checkpoint_every=3", f"run.out_dir={ctc}", "run.progress=false"))
    assert out["step"] == 6 and {"wer", "cer"} <= set(out["best"])

    test_rows = [json.loads(line) for line in (corpus / "test.jsonl").read_text().splitlines()]
    wav = corpus / test_rows[0]["path"]
    srt = cli("transcribe", "--checkpoint", f"{ctc}/best.safetensors", "--format", "srt", str(wav))
    words = json.loads(cli("transcribe", "--checkpoint", f"{ctc}/best.safetensors", "--format", "json", str(wav)))
    assert words["duration"] == pytest.approx(test_rows[0]["duration"], abs=0.01)
    # A model of 6 updates may say nothing: whatever it says, every word is timed inside the
    # audio and the SRT holds exactly those words' cues.
    assert " ".join(w["text"] for w in words["words"]) == words["text"]
    assert all(0 <= w["start"] <= w["end"] <= words["duration"] for w in words["words"])
    transcript = Transcript(words["text"], [Word(**w) for w in words["words"]], words["duration"])
    assert srt == to_srt(transcript) + "\n"
    # The shipped model does say something about the same file: real cues, in order.
    shipped = cli("transcribe", "--format", "srt", str(wav))
    starts = [line.split(" --> ")[0] for line in shipped.splitlines() if " --> " in line]
    assert starts and starts == sorted(starts) and shipped.startswith("1\n")
    scores = json.loads(cli("evaluate", "asr", "--checkpoint", f"{ctc}/best.safetensors",
                            "--manifest", str(corpus / "test.jsonl"), "--beam"))
    assert scores["utterances"] == len(test_rows) and scores["decoder"] == "beam"

    # Kill-free resume: a second call with --resume at the same max_steps has nothing left to do.
    again = json.loads(cli("finetune-ctc", "configs/ctc/small.yaml", f"init_from={pre}/best.safetensors",
                           f"data.train=[{corpus}/train.jsonl]", f"data.valid=[{corpus}/valid.jsonl]",
                           "optim.max_steps=6", "data.max_batch_seconds=30", f"run.out_dir={ctc}",
                           "run.progress=false", "--resume"))
    assert again["step"] == 6
