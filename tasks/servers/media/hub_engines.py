"""The media engines whose weights these machines cannot get (ChatTTS, Bark, MusicGen, SenseVoice, Stable
Diffusion): each checks its model folder first, so without weights a server stops at once naming the model, and
imports its library only to load them (the library must be installed where it is served).
"""

from __future__ import annotations

import io
from typing import ClassVar

from tasks.formatter.files import encode_query_with_filepaths
from tasks.servers.media.base import MediaEngine, Speech, text_of
from tasks.servers.media.files import input_files, to_data_url


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

        trust = self.trust_remote_code
        self.processor = transformers.AutoProcessor.from_pretrained(self.model_dir, trust_remote_code=trust)
        self.model = getattr(transformers, self.model_class).from_pretrained(self.model_dir, trust_remote_code=trust)


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
    """SenseVoiceSmall through FunASR: audio in, text out. The contract's ``SenseVoice(base_path, source, init)``:
    the model loads on first use (``load_stt``; ``init=True`` loads it at once), on ``cuda:0`` when there is one,
    with the fsmn-vad voice-activity model (segments of at most 30 s) when the folder holds it (``fsmn-vad/``);
    ``rebuild`` / pickling carry the path and whether it was loaded."""

    name, task = "sensevoice", "speech -> text"
    model_hint = "SenseVoiceSmall weights (model.pt and config.yaml, from iic/SenseVoiceSmall)"
    needs = (("model.pt", "model.pt"), ("config.yaml", "config.yaml"))

    def __init__(self, base_path: str, source: str | None = None, init: bool = False):
        super().__init__(base_path)
        self.base_path, self.source, self.model, self.init_flag = str(self.model_dir), source, None, False
        if init:
            self.load_stt()

    def load_stt(self) -> None:
        if self.init_flag:
            return
        from funasr import AutoModel

        try:
            import torch

            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        except ImportError:
            device = "cpu"
        vad = self.model_dir / "fsmn-vad"
        extra = {"vad_model": str(vad), "vad_kwargs": {"max_single_segment_time": 30000}} if vad.is_dir() else {}
        self.model = AutoModel(model=self.base_path, device=device, disable_update=True,
                               trust_remote_code=self.trust_remote_code, **extra)
        self.init_flag = True

    load = load_stt

    @classmethod
    def rebuild(cls, base_path: str, init: bool) -> "SenseVoice":
        return cls(base_path, init=init)

    def __reduce__(self):
        return SenseVoice.rebuild, (self.base_path, self.init_flag)

    def __call__(self, inputs) -> str:
        from funasr.utils.postprocess_utils import rich_transcription_postprocess

        self.load_stt()
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
