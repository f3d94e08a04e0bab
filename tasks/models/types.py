"""Model names: the short-name table, model types and the chat tokens a prompter needs."""

from __future__ import annotations

import re
from enum import Enum
from functools import lru_cache
from pathlib import Path


class LLMType(str, Enum):
    """A model's type; compares equal to its name in any case (``LLMType.LLM == 'llm'``)."""

    LLM = "llm"
    VLM = "vlm"
    EMBED = "embed"
    RERANK = "rerank"
    CROSS_MODAL_EMBED = "cross_modal_embed"
    STT = "stt"
    TTS = "tts"
    SD = "sd"
    OCR = "ocr"

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            for member in cls:
                if member.value == value.lower():
                    return member
        return None

    def __eq__(self, other) -> bool:
        return isinstance(other, str) and self.value == other.lower()

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value


CHATML = {"soh": "<|im_start|>user\n", "eoh": "<|im_end|>\n", "soa": "<|im_start|>assistant\n",
          "eoa": "<|im_end|>\n", "sos": "<|im_start|>system\n", "eos": "<|im_end|>\n",
          "soe": "<|im_start|>tool\n", "eoe": "<|im_end|>\n"}
LLAMA3 = {"sos": "<|start_header_id|>system<|end_header_id|>\n\n", "eos": "<|eot_id|>",
          "soh": "<|start_header_id|>user<|end_header_id|>\n\n", "eoh": "<|eot_id|>",
          "soa": "<|start_header_id|>assistant<|end_header_id|>\n\n", "eoa": "<|eot_id|>"}
CHATGLM3 = {"sos": "<|system|>\n", "soh": "<|user|>\n", "soa": "<|assistant|>\n"}

# short name -> hub ids, type and prompt keys. Every model the contract's examples name is here.
def _entry(huggingface: str, modelscope: str, kind: str, prompt_keys: dict | None = None) -> dict:
    return {"huggingface": huggingface, "modelscope": modelscope, "type": kind, "prompt_keys": prompt_keys or {}}


MODELS: dict[str, dict] = {
    "internlm2-chat-7b": _entry("internlm/internlm2-chat-7b",
          "Shanghai_AI_Laboratory/internlm2-chat-7b", "llm", CHATML),
    "internlm2-chat-20b": _entry("internlm/internlm2-chat-20b",
          "Shanghai_AI_Laboratory/internlm2-chat-20b", "llm", CHATML),
    "internlm2_5-7b-chat": _entry("internlm/internlm2_5-7b-chat",
          "Shanghai_AI_Laboratory/internlm2_5-7b-chat", "llm", CHATML),
    "chatglm3-6b": _entry("THUDM/chatglm3-6b", "ZhipuAI/chatglm3-6b", "llm", CHATGLM3),
    "qwen2.5-0.5b-instruct": _entry("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "llm", CHATML),
    "qwen2.5-7b-instruct": _entry("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "llm", CHATML),
    "llama-3-8b-instruct": _entry("meta-llama/Meta-Llama-3-8B-Instruct",
          "LLM-Research/Meta-Llama-3-8B-Instruct", "llm", LLAMA3),
    "internvl3_5-1b": _entry("OpenGVLab/InternVL3_5-1B", "OpenGVLab/InternVL3_5-1B", "vlm", CHATML),
    "bge-m3": _entry("BAAI/bge-m3", "BAAI/bge-m3", "embed"),
    "bge-large-zh-v1.5": _entry("BAAI/bge-large-zh-v1.5", "BAAI/bge-large-zh-v1.5", "embed"),
    "bge-reranker-large": _entry("BAAI/bge-reranker-large", "BAAI/bge-reranker-large", "rerank"),
    "all-minilm-l6-v2": _entry("sentence-transformers/all-MiniLM-L6-v2",
          "sentence-transformers/all-MiniLM-L6-v2", "embed"),
    "sensevoicesmall": _entry("FunAudioLLM/SenseVoiceSmall", "iic/SenseVoiceSmall", "stt"),
    "chattts": _entry("2Noise/ChatTTS", "AI-ModelScope/ChatTTS", "tts"),
    "bark": _entry("suno/bark", "mapjack/bark", "tts"),
    "musicgen-small": _entry("facebook/musicgen-small", "AI-ModelScope/musicgen-small", "tts"),
    "stable-diffusion-3-medium": _entry("stabilityai/stable-diffusion-3-medium",
          "AI-ModelScope/stable-diffusion-3-medium", "sd"),
    "tiny-llama": {"type": "llm"},  # the embedded base (infra/models), never downloaded
}

# Name rules, first match wins; anything else is an llm.
TYPE_RULES: list[tuple[str, str]] = [
    (r"rerank", "rerank"),
    (r"clip|siglip|colqwen|colpali|visualized", "cross_modal_embed"),
    (r"bge|gte-|(^|[-_/])e5[-_]|embed|minilm|m3e|text2vec|mpnet", "embed"),
    (r"whisper|sensevoice|paraformer|asr", "stt"),
    (r"tts|bark|musicgen|piper|cosyvoice|speecht5", "tts"),
    (r"stable-diffusion|sdxl|(^|[-_/])sd[-_\d]|flux|cogview", "sd"),
    (r"ocr", "ocr"),
    (r"vl\b|vl[-_]|internvl|llava|minicpm-v|-vision|glm-4v|cogvlm", "vlm"),
]


def short_name(model: str) -> str:
    return Path(model.rstrip("/")).name.lower()


@lru_cache(maxsize=1024)
def get_model_type(model: str) -> str:
    """``llm``, ``vlm``, ``embed``, ``rerank``, ``cross_modal_embed``, ``stt``, ``tts``, ``sd`` or ``ocr``."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError("model must be a non-empty string")
    name = short_name(model)
    if name in MODELS:
        return MODELS[name]["type"]
    for pattern, kind in TYPE_RULES:
        if re.search(pattern, name):
            return kind
    return "llm"


@lru_cache(maxsize=1024)
def get_model_prompt_keys(model: str) -> dict:
    """The chat tokens (``soh``, ``eoa``, ...) of a known model, for ``set_model_configs``; ``{}`` otherwise."""
    return dict(MODELS.get(short_name(model), {}).get("prompt_keys", {}))


def hub_repo(model: str, source: str) -> str:
    """The hub repository id for ``model`` (a short name or ``org/name``) on ``source``."""
    entry = MODELS.get(short_name(model)) if "/" not in model else None
    if entry and source in entry:
        return entry[source]
    if "/" in model:
        return model
    raise ValueError(f"{model!r} is not in the short-name table; give the full {source} repository id (org/name)")
