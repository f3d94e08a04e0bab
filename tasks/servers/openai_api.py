"""OpenAI's wire format as the built-in server speaks it: the requests it accepts (anything else refused by name,
never ignored), its errors in OpenAI's shape (which the ``openai`` client raises as its own exceptions), and
server-sent events for streams."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


# Sampling values that would break the arithmetic of a whole decoding batch are refused with the request's 400.
MIN_TEMPERATURE = 0.01
MAX_STOPS, MAX_STOP_CHARS = 16, 256


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """What both routes accept; anything else is refused by name."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    max_tokens: int = 32  # bounded by the server (1..its --max-tokens)
    temperature: float = Field(0.0, ge=0, le=2)  # 0: greedy; (0, MIN_TEMPERATURE) refused (logits overflow)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)  # what torch's generator takes
    stop: str | list[str] | None = Field(None, max_length=MAX_STOPS)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension: every request generates max_tokens (benchmarks)
    user: str | None = None
    presence_penalty: Literal[0] = 0  # accepted only at their neutral value: not implemented
    frequency_penalty: Literal[0] = 0

    @field_validator("temperature")
    @classmethod
    def _no_overflow(cls, t: float) -> float:
        if 0 < t < MIN_TEMPERATURE:
            raise ValueError(f"{t} is below {MIN_TEMPERATURE}: dividing the logits by it overflows; use 0 for "
                             "greedy decoding")
        return t

    @field_validator("stop")
    @classmethod
    def _short_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if any(len(s) > MAX_STOP_CHARS for s in ([stop] if isinstance(stop, str) else stop or [])):
            raise ValueError(f"a stop sequence is over {MAX_STOP_CHARS} characters")
        return stop

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


class LoadAdapter(BaseModel):
    """vLLM's runtime LoRA loading request (``base_revision``: the base revision the adapter was trained on)."""
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=200)
    lora_path: str = Field(min_length=1, max_length=4096)
    base_revision: str | None = Field(None, max_length=200)


class UnloadAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=200)


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    """An error in OpenAI's shape, which its clients read into their exceptions."""
    kind = {401: "authentication_error", 500: "server_error"}.get(status, "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")  # FastAPI's own pages: behind the key too


class NoQueryStrings(logging.Filter):
    """uvicorn's access log with each query string replaced by ``?[query hidden]``: a key a client puts in one
    (refused, since keys go in the Authorization header) must not land in a log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].partition("?")[0] + "?[query hidden]", *args[3:])
        return True


def uvicorn_server(app: FastAPI, host: str, port: int):
    """The server of a built-in app, logging each request (without its query string), closing a connection that
    does not send a whole request head in time."""
    import uvicorn

    from tasks.servers.header_deadline import HeaderDeadline

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info",  # configures logging
                                           http=HeaderDeadline))  # a half-sent request head is not held forever
    logging.getLogger("uvicorn.access").addFilter(NoQueryStrings())
    return server


def guard(app: FastAPI, api_key: str | None, max_body_bytes: int) -> None:
    """Every ``/v1`` route and the API's documentation behind the API key (when there is one), bodies bounded
    before they are read, and errors in OpenAI's shape: the built-in servers' common front door."""

    @app.middleware("http")
    async def front_door(request: Request, call_next):
        path = request.url.path
        if api_key is not None and (path.startswith("/v1") or path in DOC_PATHS):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), api_key.encode()):
                return error_response(401, "a valid API key is required: Authorization: Bearer <key>")
        length = request.headers.get("content-length")
        if length is not None and int(length) > max_body_bytes:
            return error_response(413, f"request body of {int(length)} bytes is over the limit of "
                                       f"{max_body_bytes} bytes")
        if length is None and request.method == "POST":
            return error_response(411, "a Content-Length header is required")
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return error_response(e.status, e.message, e.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return error_response(400, f"{param}: {first['msg']}" if param else first["msg"], param)
