"""Text-to-speech engines: ``TTSBase``, ``PiperDeploy`` (runs here: piper + the bundled voice), ``ChatTTSDeploy``,
``BarkDeploy``, ``MusicGenDeploy``, and ``TTSDeploy(name)``, which picks one by model name.

    TTSDeploy('en_US-joe-medium')          # a PiperDeploy
    TTSDeploy.get_deploy_cls('bark')       # BarkDeploy

The server answers ``<lazyllm-query>{"query": "", "files": ["data:audio/wav;base64,..."]}`` (the audio travels
with the answer, as the reference package sends it); ``extract_result`` writes the files under the temp dir
(``FINEFLOW_TEMP_DIR``/``<engine>``, see ``tasks/servers/media/files.py``) and returns the same query with their paths.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any, ClassVar

from tasks.deploy.base import SmokeTestError
from tasks.deploy.media import MediaDeploy
from tasks.formatter.files import decode_query_with_filepaths
from tasks.servers.media.files import materialize

SMOKE_SENTENCE = "Fineflow turns text into speech."
MIN_SMOKE_SECONDS = 0.5


def wav_seconds(path: str | Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / float(w.getframerate())


def model_key(name: str) -> str:
    return Path(str(name)).name.lower()


class TTSBase(MediaDeploy):
    """A text-to-speech server (the contract's ``TTSBase``): text in, a WAV file out. Which engine serves a TTS
    model goes by the model's name (``auto_accepts``), as the reference package picks."""

    serves: ClassVar[tuple[str, ...]] = ("tts",)
    auto_types: ClassVar[tuple[str, ...]] = ("tts",)
    auto_by_name: ClassVar[bool] = True  # a Bark model is served by Bark or not at all

    @classmethod
    def auto_accepts(cls, model: str) -> bool:
        return False
    keys_name_handle = {"inputs": "inputs"}
    message_format = {"inputs": "Who are you ?"}

    def extract_result(self, output, inputs):
        return materialize(output.text if hasattr(output, "text") else output, self.media_engine)

    def smoke_test(self, url: str, records: list[dict], headers: dict[str, str], model_path: str,
                   **_: Any) -> tuple[str, str]:
        answer = self.request(url, SMOKE_SENTENCE, headers)
        files = decode_query_with_filepaths(answer)
        files = files.get("files", []) if isinstance(files, dict) else []
        if len(files) != 1 or not Path(files[0]).is_file():
            raise SmokeTestError(f"TTS endpoint {url} answered {answer[:200]!r}, not one audio file")
        try:
            seconds = wav_seconds(files[0])
        except (wave.Error, EOFError) as e:
            raise SmokeTestError(f"TTS endpoint {url} sent a file that is not a WAV: {e}") from None
        if seconds < MIN_SMOKE_SECONDS:
            raise SmokeTestError(f"TTS endpoint {url} said {SMOKE_SENTENCE!r} in {seconds:.2f}s of audio")
        return files[0], f"{SMOKE_SENTENCE!r} -> {files[0]} ({seconds:.2f}s of audio)"


class PiperDeploy(TTSBase):
    """Piper voices (VITS in ONNX): the TTS engine that runs on these machines (bundled ``en_US-joe-medium``)."""

    engine: ClassVar[str] = "piper"
    media_engine: ClassVar[str] = "piper"

    @classmethod
    def auto_accepts(cls, model: str) -> bool:
        """``piper*``, or a voice named ``<lang>_<REGION>-<voice>-<quality>`` (``en_US-joe-medium``)."""
        key = model_key(model)
        return key.startswith("piper") or (len(key) > 6 and key[2] == "_" and key.count("-") >= 2)


class ChatTTSDeploy(TTSBase):
    engine: ClassVar[str] = "chattts"
    media_engine: ClassVar[str] = "chattts"
    message_format = {"inputs": "Who are you ?",
                      "refinetext": {"prompt": "[oral_2][laugh_0][break_6]", "top_P": 0.7, "top_K": 20,
                                     "temperature": 0.7, "repetition_penalty": 1.0, "max_new_token": 384,
                                     "min_new_token": 0, "show_tqdm": True, "ensure_non_empty": True},
                      "infercode": {"prompt": "[speed_5]", "spk_emb": None, "temperature": 0.3,
                                    "repetition_penalty": 1.05, "max_new_token": 2048}}


class BarkDeploy(TTSBase):
    engine: ClassVar[str] = "bark"
    media_engine: ClassVar[str] = "bark"
    message_format = {"inputs": "Who are you ?", "voice_preset": None}

    @classmethod
    def auto_accepts(cls, model: str) -> bool:
        return model_key(model) == "bark"


class MusicGenDeploy(TTSBase):
    engine: ClassVar[str] = "musicgen"
    media_engine: ClassVar[str] = "musicgen"

    @classmethod
    def auto_accepts(cls, model: str) -> bool:
        return model_key(model).startswith("musicgen")


class TTSDeploy:
    """``TTSDeploy(name, **kw)`` is the TTS engine for model ``name`` (``get_deploy_cls``)."""

    def __new__(cls, name: str, **kw) -> TTSBase:
        return cls.get_deploy_cls(name)(**kw)

    @classmethod
    def get_deploy_cls(cls, name: str) -> type[TTSBase]:
        """By model name, as the reference picks: ``bark`` -> Bark, ``musicgen*`` -> MusicGen; ChatTTS is
        refused (the reference dropped it: ``ChatTTSDeploy`` is still there to use directly); piper voices
        (``en_US-joe-medium``, ``piper*``, a ``<lang>_<REGION>-<voice>-<quality>`` name) -> Piper."""
        if model_key(name) in ("chattts", "chattts-new"):
            raise RuntimeError("ChatTTS is deprecated and no longer supported.")
        for engine in (BarkDeploy, MusicGenDeploy, PiperDeploy):
            if engine.auto_accepts(name):
                return engine
        raise RuntimeError(f"Not support model: {name}")

