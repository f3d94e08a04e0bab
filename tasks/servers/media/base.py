"""What every media engine is: a model folder checked for its weights before anything loads (``needs``), loaded
once (``load``), called per request; its ``GET /info`` route; and the helpers the engines share.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path
from typing import ClassVar

from tasks.formatter.files import decode_query_with_filepaths, encode_query_with_filepaths
from tasks.servers.media.files import to_data_url
from tasks.servers.media.routes import FastapiApp


class MissingModelError(FileNotFoundError):
    """The model folder lacks what the engine loads; the message names the model and the files."""


def wav_bytes(samples, sample_rate: int) -> bytes:
    """Float or int16 mono samples as a 16-bit WAV file, peak-normalised as the reference writes it."""
    import numpy as np

    audio = np.asarray(samples, dtype=np.float32).reshape(-1)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    pcm = np.int16(audio / peak * 32767) if peak > 0 else audio.astype(np.int16)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def text_of(inputs) -> str:
    """The text of a TTS/image request: ``{"inputs": text}``, a plain string or an encoded query's ``query``."""
    if isinstance(inputs, dict):
        inputs = inputs.get("inputs", "")
    decoded = decode_query_with_filepaths(inputs) if isinstance(inputs, str) else inputs
    text = decoded.get("query", "") if isinstance(decoded, dict) else decoded
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the request has no text: send {\"inputs\": \"...\"}")
    return text


class MediaEngine:
    """``needs``: (description, glob) pairs the model folder must hold; ``task``: what it does, in words."""

    name: ClassVar[str] = ""
    task: ClassVar[str] = ""
    model_hint: ClassVar[str] = ""  # what the model is and where it comes from, for the missing-model error
    needs: ClassVar[tuple[tuple[str, str], ...]] = ()
    trust_remote_code: bool = False  # whether a model's own code may run as it loads (the hub engines)

    def __init__(self, model_dir: str):
        self.model_dir = Path(model_dir)
        self.check()

    def check(self) -> None:
        where = self.model_dir
        if not where.is_dir():
            raise MissingModelError(f"{self.name}: model folder {where} does not exist; {self.model_hint}")
        missing = [what for what, pattern in self.needs if not any(where.glob(pattern))]
        if missing:
            raise MissingModelError(f"{self.name}: model folder {where} lacks {', '.join(missing)}; {self.model_hint}")

    def load(self) -> None:
        raise NotImplementedError

    def __call__(self, inputs) -> str:
        raise NotImplementedError

    @FastapiApp.get("/info")
    def info(self) -> dict:
        """What the endpoint serves: the engine, its task and the model's files with their sizes."""
        files = {str(p.relative_to(self.model_dir)): p.stat().st_size
                 for p in sorted(self.model_dir.rglob("*")) if p.is_file()}
        return {"engine": self.name, "task": self.task, "model": str(self.model_dir), "files": files}


def first(folder: Path, pattern: str) -> str:
    return str(sorted(folder.glob(pattern))[0])


class Speech(MediaEngine):
    """An engine that answers with generated audio: ``synthesize(text) -> (samples, sample_rate)``."""

    def __call__(self, inputs) -> str:
        samples, rate = self.synthesize(text_of(inputs))
        return encode_query_with_filepaths(files=[to_data_url(wav_bytes(samples, rate), "audio/wav")])

    def synthesize(self, text: str):
        raise NotImplementedError
