"""Diarization: the windowing, clustering, naming and turn steps on known vectors, and the
routes (JSON, RTTM, OpenAI's diarized_json) on a real uvicorn server with the tiny model.

Whether the shipped model tells real voices apart is tested in test_default_model.py."""

import base64
import re

import httpx
import numpy as np
import pytest

from server.settings import Settings
from speechssl import diarize
from speechssl.vad import SpeechSegment
from tests.test_server import AUTH, LiveServer, wav_bytes
from tests.test_server_heads import build_heads_checkpoint


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_windows_cover_each_voiced_segment():
    spans = diarize.windows([SpeechSegment(0.0, 0.3), SpeechSegment(1.0, 2.0), SpeechSegment(3.0, 6.1)])
    assert spans[0] == (1.0, 2.0)  # shorter than a window: itself; shorter than MIN_WINDOW: nothing
    long = spans[1:]
    assert long[0] == (3.0, 4.5) and long[-1] == (4.6, 6.1)  # the tail window ends with the segment
    assert all(b - a == pytest.approx(diarize.WINDOW) for a, b in long)
    assert all(q[0] - p[0] <= diarize.HOP + 1e-9 for p, q in zip(long, long[1:]))


def test_clusters_names_and_turns_from_known_vectors():
    a, b = unit([1, 0.1, 0]), unit([0, 1, 0.1])
    noise = np.random.default_rng(0).normal(0, 0.05, (7, 3))
    vectors = np.stack([unit(v + n) for v, n in zip([a, a, b, b, b, a, a], noise)])
    segments = [SpeechSegment(0.0, 3.0), SpeechSegment(3.5, 6.5), SpeechSegment(7.0, 10.0)]
    spans = [(0.0, 1.5), (1.5, 3.0), (3.5, 5.0), (4.25, 5.75), (5.0, 6.5), (7.0, 8.5), (8.5, 10.0)]
    assert diarize.cluster(vectors, threshold=0.5).tolist() == [0, 0, 1, 1, 1, 0, 0]
    assert diarize.cluster(vectors, 0.5, num_speakers=3).max() == 2
    with pytest.raises(diarize.DiarizationError, match="num_speakers=8 but the audio holds speech for only 7"):
        diarize.cluster(vectors, 0.5, num_speakers=8)
    turns = diarize.assign(segments, spans, vectors, threshold=0.5 + diarize.CLUSTER_MARGIN, num_speakers=None,
                           known=None)
    assert [(t.start, t.end, t.speaker) for t in turns] == [(0.0, 3.0, "A"), (3.5, 6.5, "B"), (7.0, 10.0, "A")]
    # Enrolled: the cluster that matches "bob" is named so; the other keeps a letter.
    named = diarize.assign(segments, spans, vectors, 0.7, None, {"bob": b, "zed": unit([0, 0, 1])})
    assert [t.speaker for t in named] == ["A", "bob", "A"]
    rttm = diarize.to_rttm(named, "talk")
    assert rttm.splitlines()[1] == "SPEAKER talk 1 3.500 3.000 <NA> <NA> bob <NA> <NA>"


def test_a_cluster_of_a_window_or_two_is_not_a_speaker():
    a, b, odd = unit([1, 0.1, 0]), unit([0, 1, 0.1]), unit([0.6, 0, 1])
    vectors = np.stack([a, a, a, odd, b, b, b])
    labels = diarize.cluster(vectors, threshold=0.9)
    assert labels.max() == 1 and labels[3] == labels[0]  # the odd window joins the cluster it is nearest
    assert diarize.cluster(vectors, 0.9, num_speakers=3).max() == 2  # unless the caller asks for it


def test_a_short_run_inside_speech_joins_its_neighbour():
    segments = [SpeechSegment(0.0, 4.0)]
    spans = [(0.0, 1.5), (0.75, 2.25), (1.5, 3.0), (2.5, 4.0)]
    # The second window alone says B: its frames (about 0.75 s) survive, a lone 0.2 s would not.
    turns = diarize.turns(segments, spans, ["A", "B", "A", "A"])
    assert [t.speaker for t in turns] == ["A", "B", "A"]
    # Window centres 1.0, 1.2, 1.4, 2.25: B is nearest for only 0.2 s, under MIN_TURN.
    tiny = diarize.turns([SpeechSegment(0.0, 3.0)], [(0.25, 1.75), (1.1, 1.3), (0.65, 2.15), (1.5, 3.0)],
                         ["A", "B", "A", "A"])
    assert [(t.start, t.end, t.speaker) for t in tiny] == [(0.0, 3.0, "A")]


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    path = build_heads_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("dia") / "heads.safetensors", speaker=True)
    with LiveServer(Settings(checkpoint=str(path), device="cpu", max_audio_seconds=30, api_key="sekret")) as live:
        yield live


@pytest.fixture(scope="module")
def talk():
    """Two bursts of real speech (the FSDD-free fixture clip) with a pause between."""
    import soundfile as sf

    from tests.test_live import FIXTURES

    clip, _ = sf.read(FIXTURES / "speech.wav", dtype="float32")
    burst = np.resize(clip, 16000 * 3)
    return np.concatenate([np.zeros(8000, np.float32), burst, np.zeros(16000, np.float32), burst,
                           np.zeros(8000, np.float32)])


def post(server, route, audio, **data):
    return httpx.post(server.url + route, headers=AUTH, timeout=60, data=data,
                      files={"file": ("talk.wav", wav_bytes(audio, 16000))})


def test_diarization_route_json_rttm_and_enrolment(server, talk):
    body = post(server, "/v1/audio/diarization", talk).json()
    assert body["duration"] == pytest.approx(len(talk) / 16000, abs=0.001)
    assert body["turns"] and body["speakers"] == list(dict.fromkeys(t["speaker"] for t in body["turns"]))
    voiced = [(0.5, 3.5), (4.5, 7.5)]
    assert all(any(a - 0.2 <= t["start"] and t["end"] <= b + 0.2 for a, b in voiced) for t in body["turns"])
    one = post(server, "/v1/audio/diarization", talk, num_speakers="1").json()
    assert one["speakers"] == ["A"]
    rttm = post(server, "/v1/audio/diarization", talk, response_format="rttm")
    assert rttm.status_code == 200 and all(re.fullmatch(r"SPEAKER talk 1 [\d.]+ [\d.]+ <NA> <NA> \S+ <NA> <NA>", line)
                                           for line in rttm.text.splitlines())
    reference = "data:audio/wav;base64," + base64.b64encode(wav_bytes(talk[8000:56000], 16000)).decode()
    named = post(server, "/v1/audio/diarization", talk, num_speakers="1",
                 **{"known_speaker_names[]": "ann", "known_speaker_references[]": reference}).json()
    assert named["speakers"] == ["ann"]  # the same audio: its vector matches the cluster's


@pytest.mark.parametrize("data, code", [
    ({"num_speakers": "50"}, "invalid_num_speakers"),
    ({"known_speaker_names[]": "ann"}, "invalid_known_speakers"),
    ({"known_speaker_names[]": "ann", "known_speaker_references[]": "http://x/a.wav"}, "invalid_known_speakers"),
    ({"known_speaker_names[]": "ann", "known_speaker_references[]": "data:audio/wav;base64,!!!"}, "invalid_known_speakers"),
    ({"known_speaker_names[]": "ann", "known_speaker_references[]": "data:audio/wav;base64," +
      base64.b64encode(b"not audio").decode()}, "invalid_known_speakers"),
])
def test_bad_diarization_requests_are_4xx(server, talk, data, code):
    response = post(server, "/v1/audio/diarization", talk, **data)
    assert 400 <= response.status_code < 500 and response.json()["error"]["code"] == code, response.text


def test_diarized_json_through_the_openai_client(server, talk):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sekret")
    result = client.audio.transcriptions.create(model="m", file=("talk.wav", wav_bytes(talk, 16000)),
                                                response_format="diarized_json")
    assert result.task == "transcribe" and result.duration == pytest.approx(len(talk) / 16000, abs=0.001)
    assert result.segments and all(s.type == "transcript.text.segment" and s.end > s.start for s in result.segments)
    assert result.text == " ".join(s.text for s in result.segments if s.text)
    refused = post(server, "/v1/audio/transcriptions", talk, **{"known_speaker_names[]": "ann"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_known_speakers"
