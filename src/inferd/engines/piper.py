"""Speech synthesis with Piper voices (ONNX, CPU): fast enough on one core to speak faster than
real time."""

from __future__ import annotations

import asyncio
import io
import wave
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from inferd.engines.base import Engine, Json

# OpenAI's response formats, and what PyAV calls their encoders and containers.
_ENCODED = {
    "mp3": ("mp3", "mp3", "audio/mpeg"),
    "flac": ("flac", "flac", "audio/flac"),
    "opus": ("libopus", "ogg", "audio/ogg"),
    "aac": ("aac", "adts", "audio/aac"),
}


class PiperEngine(Engine):
    name = "piper"
    model_types = frozenset({"audio"})
    formats = frozenset({"onnx"})
    requires = ("piper",)
    extra = "audio"
    uses_gpu = False  # Piper voices run on onnxruntime's CPU build

    def load(self) -> None:
        from piper import PiperVoice

        options = dict(self.config.options)
        use_cuda = bool(options.pop("use_cuda", False))
        options.pop("device", None)  # the CPU is where Piper runs unless use_cuda is given
        self._refuse_unknown(options)
        self._voice = PiperVoice.load(self.config.model_path, use_cuda=use_cuda)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="piper")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def slots(self) -> int:
        return 2  # its two synthesis threads

    async def speech(self, request: Json) -> tuple[bytes, str]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._speak, request)

    def _speak(self, request: Json) -> tuple[bytes, str]:
        from piper import SynthesisConfig

        speed = float(request.get("speed") or 1.0)
        config = SynthesisConfig(length_scale=1.0 / speed)  # a longer phoneme is slower speech
        wav = io.BytesIO()
        with wave.open(wav, "wb") as out:
            self._voice.synthesize_wav(request["input"], out, syn_config=config)
        fmt = request.get("response_format") or "wav"
        if fmt == "wav":
            return wav.getvalue(), "audio/wav"
        wav.seek(0)
        with wave.open(wav, "rb") as src:
            rate, pcm = src.getframerate(), src.readframes(src.getnframes())
        if fmt == "pcm":  # raw 16-bit little-endian mono, as OpenAI's pcm
            return pcm, f"audio/pcm;rate={rate}"
        return _encode(pcm, rate, fmt)


def _encode(pcm: bytes, rate: int, fmt: str) -> tuple[bytes, str]:
    """16-bit mono PCM as mp3, flac, opus or aac, through PyAV's bundled FFmpeg."""
    import av
    import numpy as np

    codec, container, media_type = _ENCODED[fmt]
    out = io.BytesIO()
    with av.open(out, "w", format=container) as file:
        stream: Any = file.add_stream(codec, rate=48000 if codec == "libopus" else rate)
        stream.layout = "mono"
        if codec != "flac":
            stream.bit_rate = 64_000  # the encoders' defaults are too thin for speech
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            file.mux(packet)
        for packet in stream.encode(None):
            file.mux(packet)
    return out.getvalue(), media_type
