"""The benchmark scripts run end to end on tiny settings (their figures are in docs/, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_serve_load_reports_both_servers_and_the_offline_run(tiny_checkpoint, tmp_path):
    """Three real servers (batched, max_batch_1 and a --variant with its own environment), real
    clips (a folder of WAVs), a second of load each: every figure the docs quote is in the
    JSON, nothing failed, and the variant ran with its environment (an upload limit below the
    clips' size: every answer a 413)."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("speech.wav", "speech_8k.wav"):
        (clips / name).write_bytes((ROOT / "tests/fixtures" / name).read_bytes())
    out = tmp_path / "load.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/serve_load.py"), "--checkpoint", str(tiny_checkpoint),
                           "--route", "embeddings", "--clients", "2", "--seconds", "1", "--rounds", "1",
                           "--audio", str(clips), "--variant", "SPEECHSSL_MAX_UPLOAD_BYTES=1000", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    variant = report["runs"].pop("SPEECHSSL_MAX_UPLOAD_BYTES=1000")
    assert report["clips"] == 2 and set(report["runs"]) == {"batched", "max_batch_1"}
    for run in report["runs"].values():
        assert run["requests"] > 0 and run["errors"] == 0 and run["server_peak_rss_mb"] > 0
    assert report["runs"]["max_batch_1"]["mean_batch_size"] == 1
    assert variant["requests"] == 0 and set(variant["statuses"]) == {"413"} and variant["errors"] > 0
    assert variant["server_fraction_of_offline"] == 0
    assert report["offline"]["audio_s_per_s"] > 0 and report["server_fraction_of_offline"] > 0


def test_pretrain_throughput_times_the_configurations_it_is_asked_for(tmp_path):
    out = tmp_path / "throughput.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/pretrain_throughput.py"), "--repeats", "1",
                           "--threads", "1", "--only", "log-mel + hubert, 4 x 256", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["configuration"] for r in rows] == ["log-mel + hubert, 4 x 256"]
    assert rows[0]["audio_s_per_wall_s"] > 0 and rows[0]["vs_today"] is None  # no baseline row was timed


def test_streaming_benchmark_reports_sse_and_websocket_figures(tmp_path):
    """The shipped model on a real server, 5 s of real speech, once each way."""
    out = tmp_path / "streaming.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/streaming.py"), "--seconds", "5", "--repeats", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["sse"]["first_delta_s"] <= report["sse"]["done_s"]
    assert report["websocket"]["first_delta_s"] > 0 and report["websocket"]["end_to_done_s"] > 0


def test_encoder_accuracy_check_scores_every_cpu_path(tmp_path):
    """`encoder.py --cer-only`: the shipped model on the two LJ fixture sentences, each path's
    CER and its change from fp32 (the bf16 and int8 costs docs/benchmarks.md quotes)."""
    from speechssl.data.manifest import Utterance, write_manifest
    from tests.test_default_model import LJ_CLIPS, REAL

    manifest = tmp_path / "lj.jsonl"
    write_manifest([Utterance(name, str(REAL / name), 1.0, text) for name, text in LJ_CLIPS.items()], manifest)
    out = tmp_path / "encoder.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/encoder.py"), "--cer-only", "--threads", "1",
                           "--cer-checkpoint", str(ROOT / "speechssl/assets/default.safetensors"),
                           "--cer-manifest", str(manifest), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["accuracy"]["manifests"][str(manifest)]
    assert rows["utterances"] == 2 and set(rows) == {"utterances", "fp32", "bf16", "int8", "int8+bf16"}
    assert all(0 <= rows[p]["cer"] <= 1 for p in ("fp32", "bf16", "int8", "int8+bf16"))
    assert rows["bf16"]["cer_change_points"] == pytest.approx(100 * (rows["bf16"]["cer"] - rows["fp32"]["cer"]))


def test_lm_sweep_decodes_every_pair_and_picks_the_lowest_objective(tiny_checkpoint, tmp_path):
    """experiments/lm_sweep.py on a tiny CTC checkpoint that carries a word 2-gram, on a
    manifest of real clips: one row per (lm_weight, word_score), the pick is the row with the
    lowest objective, and the checkpoint's own settings are not changed."""
    from speechssl.checkpoint import load_checkpoint
    from tests.test_server_heads import build_heads_checkpoint

    ckpt = build_heads_checkpoint(tiny_checkpoint, tmp_path / "lm.safetensors", speaker=False, lm=True)
    manifest = tmp_path / "valid.jsonl"
    manifest.write_text("".join(json.dumps({"id": name, "path": str(ROOT / "tests/fixtures" / name), "text": "the cat sat",
                                            "duration": 1.0}) + "\n" for name in ("speech.wav", "speech_8k.wav")))
    out = tmp_path / "sweep.json"
    done = subprocess.run([sys.executable, str(ROOT / "experiments/lm_sweep.py"), "--checkpoint", str(ckpt),
                           "--sets", f"tiny={manifest}", "--objective", "tiny=cer", "--lm-weights", "0.5", "2",
                           "--word-scores", "0", "1", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    pairs = [(r["lm_weight"], r["word_score"]) for r in report["rows"]]
    assert pairs == [(0.5, 0.0), (0.5, 1.0), (2.0, 0.0), (2.0, 1.0)]
    assert all(r["objective"] == round(r["tiny"]["cer"], 4) for r in report["rows"])
    best = min(report["rows"], key=lambda r: r["objective"])
    assert report["best"] == {"lm": "checkpoint", "lm_weight": best["lm_weight"], "word_score": best["word_score"]}
    assert load_checkpoint(ckpt).metadata["lm"]["lm_weight"] == 2.0

    # --backgrounds rebuilds the LM from a recipe run's training transcripts, once per background.
    run = tmp_path / "run"
    for name in ("real/an4-train", "real/lj-train", "real/fsdd-train", "corpus/train"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / f"{name}.jsonl").write_text(manifest.read_text())
    done = subprocess.run([sys.executable, str(ROOT / "experiments/lm_sweep.py"), "--checkpoint", str(ckpt),
                           "--sets", f"tiny={manifest}", "--objective", "tiny=cer", "--lm-weights", "0.5",
                           "--word-scores", "0", "--run", str(run), "--backgrounds", "0:0", "50:0.3", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["lm"] for r in json.loads(out.read_text())["rows"]] == ["0:0", "50:0.3"]
