"""The built-in OpenAI-compatible server for a transformers causal LM.

    python -m tasks.deploy.relay_app --model PATH --port 8000 [--host 127.0.0.1] [--name NAME] [--prompt-style S]

Routes: ``/health``, ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.
Prompts are handled in ``--prompt-style`` (``tasks.inference``: a prompter name, or
``chat_template``), the style the model was finetuned in: a completion prompt is taken as
rendered text; chat messages (the system and the last user message) are rendered in it.
"""

from __future__ import annotations

import argparse
import time
import uuid

import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from tasks import inference


class CompletionRequest(BaseModel):
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = 32
    temperature: float = 0.0


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int = 32
    temperature: float = 0.0


def create_app(model_path: str, name: str, prompt_style: str = "alpaca") -> FastAPI:
    model, tokenizer = inference.load_model(model_path)
    app = FastAPI(title=f"fineflow relay: {name}")
    created = int(time.time())

    def complete(prompts: list[str], max_tokens: int) -> list[str]:
        if not 1 <= max_tokens <= 512:
            raise HTTPException(400, "max_tokens must be between 1 and 512")
        return inference.generate(model, tokenizer, prompts, prompt_style, max_new_tokens=max_tokens)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": name}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "fineflow"}]}

    @app.post("/v1/completions")
    def completions(req: CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        texts = complete(prompts, req.max_tokens)
        return {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion", "created": int(time.time()),
                "model": name, "choices": [{"index": i, "text": t, "finish_reason": "stop"}
                                           for i, t in enumerate(texts)]}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest):
        if not any(m.role == "user" for m in req.messages):
            raise HTTPException(400, "messages must contain a user message")
        record = {"messages": [m.model_dump() for m in req.messages]}
        text = complete([inference.render_prompt(prompt_style, record, tokenizer)], req.max_tokens)[0]
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": name, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                            "finish_reason": "stop"}]}

    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="fineflow-model")
    parser.add_argument("--prompt-style", default="alpaca")
    return parser.parse_args(argv)


def server(argv: list[str] | None = None) -> uvicorn.Server:
    """The server for the command line ``argv``, not yet running."""
    args = parse_args(argv)
    app = create_app(args.model, args.name, args.prompt_style)
    return uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info"))


def main(argv: list[str] | None = None) -> None:
    # pragma: no mutate start (runs only in the server process, which tests/test_relay.py starts and queries; a
    # mutation tester sees in-process calls only. One request at a time: more threads would only contend.)
    torch.set_num_threads(1)
    server(argv).run()
    # pragma: no mutate end


if __name__ == "__main__":
    main()
