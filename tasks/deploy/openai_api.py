"""OpenAI's wire format as the built-in server speaks it: the requests it accepts (anything else refused by name,
never ignored), its errors in OpenAI's shape (which the ``openai`` client raises as its own exceptions), and
server-sent events for streams."""

from __future__ import annotations

import json
from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """What both routes accept; anything else is refused by name."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    max_tokens: int = 32
    temperature: float = Field(0.0, ge=0, le=2)  # 0: greedy
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension: every request generates max_tokens (benchmarks)
    user: str | None = None
    presence_penalty: Literal[0] = 0  # accepted only at their neutral value: not implemented
    frequency_penalty: Literal[0] = 0

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop or [] if s]


class CompletionRequest(Sampling):
    prompt: str | list[str]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str


class ChatRequest(Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None  # what newer OpenAI clients send instead of max_tokens

    @model_validator(mode="after")
    def one_budget(self) -> "ChatRequest":
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    """An error in OpenAI's shape, which its clients read into their exceptions."""
    kind = {401: "authentication_error", 500: "server_error"}.get(status, "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)
