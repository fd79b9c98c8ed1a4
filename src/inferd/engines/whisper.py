"""Speech recognition on faster-whisper (Whisper in CTranslate2, CPU or CUDA).

Requests run one at a time on the model's thread: CTranslate2 already spreads one transcription
over every core, and the long-form decoder keeps its own state per call.
"""

from __future__ import annotations

import asyncio
import base64
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from inferd.engines import nvidia_libs
from inferd.engines.base import Engine, Json
from inferd.errors import InvalidRequest


class WhisperEngine(Engine):
    name = "faster_whisper"
    model_types = frozenset({"audio"})
    formats = frozenset({"ct2"})
    requires = ("faster_whisper",)
    extra = "audio"
    cpu_options = {"device": "cpu"}

    def load(self) -> None:
        from faster_whisper import WhisperModel

        options = dict(self.config.options)
        device = options.pop("device", "auto")
        if device != "cpu":
            # CTranslate2 opens cuBLAS 12 by name on its first GPU pass; the engine's CUDA
            # environment has it from NVIDIA's wheel.
            nvidia_libs.load("cublas", "libcublas.so.12")
        compute_type = options.pop("compute_type", "default")
        threads = int(options.pop("cpu_threads", 0))
        self._refuse_unknown(options)
        self._model = WhisperModel(
            self.config.model_path,
            device=device,
            compute_type=compute_type,
            cpu_threads=threads,
            local_files_only=True,
        )
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def transcribe(self, request: Json) -> Json:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._transcribe, request)

    def _transcribe(self, request: Json) -> Json:
        audio = io.BytesIO(base64.b64decode(request["audio"]))
        task = request.get("task", "transcribe")
        words = "word" in (request.get("timestamp_granularities") or [])
        try:
            segments, info = self._model.transcribe(
                audio,
                task=task,
                language=request.get("language") or None,
                initial_prompt=request.get("prompt") or None,
                temperature=float(request.get("temperature") or 0.0),
                word_timestamps=words,
            )
            segments = list(segments)  # decoding happens as the generator is read
        except Exception as exc:
            if type(exc).__module__.startswith("av"):  # the container could not be decoded
                raise InvalidRequest(
                    f"the file is not audio this server can decode: {exc}", param="file"
                ) from exc
            raise
        return {
            "task": task,
            "language": info.language,
            "duration": round(float(info.duration), 3),
            "text": "".join(s.text for s in segments).strip(),
            "segments": [_segment(s) for s in segments],
            **({"words": [_word(w) for s in segments for w in s.words or []]} if words else {}),
        }


def _segment(s: Any) -> Json:
    return {
        "id": s.id,
        "seek": s.seek,
        "start": round(float(s.start), 3),
        "end": round(float(s.end), 3),
        "text": s.text,
        "tokens": list(s.tokens),
        "temperature": s.temperature,
        "avg_logprob": s.avg_logprob,
        "compression_ratio": s.compression_ratio,
        "no_speech_prob": s.no_speech_prob,
    }


def _word(w: Any) -> Json:
    return {"word": w.word, "start": round(float(w.start), 3), "end": round(float(w.end), 3)}
