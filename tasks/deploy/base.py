"""The deploy engine interface, behind the contract's ``LazyLLMDeployBase``, and ``DummyDeploy``.

A serving engine is one module under ``tasks/deploy/`` with one class that declares:

- ``engine`` (its row in ``tasks/deploy/engines.py`` and its name in pipeline configs) and ``Params`` (its typed
  parameters);
- ``environment``: the ``infra/envs/<name>.txt`` it runs in (None: this interpreter);
- ``cmd(finetuned_model=None, base_model=None, master_ip=None)``: a ``Command`` whose last argv is the server
  (earlier argvs run first, to the end), with its ``env``, its URL as ``return_value`` and its readiness probe as
  ``checker`` (waited for up to ``ready_timeout_s``); ``server_command`` builds it. The base class owns the
  host, the port (a free one when none is given), ``url()`` and the served model's name;
- ``smoke_test(url, records, ...)``: proves the endpoint answers as a model of its type should, on validation
  records (the default, for LLMs: ``smoke_request(prompt)`` completed and read by ``extract_result``);
- ``extract_result(output, inputs)``: the answer in a raw response;
- ``preflight()``: raises ``EngineUnavailableError`` naming everything missing (hardware, programs) before
  anything starts; ``after_start()`` runs once the start has succeeded or failed (MindIE restores its config);
- ``serves``: the model types it serves (a pipeline pairing it with another type is refused);
- ``api_key_env``: the environment variable its server reads a required API key from (None: the engine
  cannot require one, and a pipeline that asks for a key refuses it);
- its facts for AutoDeploy: ``auto_types`` (the model types it may be chosen for), ``auto_rank`` (its place
  among them), ``gpu_key`` (the keyword that takes the GPU count), ``auto_accepts(model)`` (engines chosen by
  the model's name) and ``auto_params(...)`` (its keywords when chosen).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from tasks import bounds, envs, launchers, net
from tasks.core import Command, ComponentBase, check_kwargs
from tasks.models.local import WEIGHT_SUFFIXES, holds_weights


class EngineUnavailableError(RuntimeError):
    """The engine cannot start on this machine; the message says what is missing."""


class SmokeTestError(RuntimeError):
    """A started endpoint answered, but not as a model of its type should."""


def require(engine: str, missing: list[str], found: str = "") -> None:
    """Raise ``EngineUnavailableError`` listing ``missing`` (nothing missing: return)."""
    if missing:
        raise EngineUnavailableError(f"{engine} cannot start here: missing " + "; ".join(missing)
                                     + (f" (this machine has {found})" if found else ""))


def accelerators() -> str:
    """What this machine has to serve on, in words."""
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    npus = len(list(Path("/dev").glob("davinci[0-9]*")))
    return f"{cuda} CUDA device(s), {npus} Ascend NPU(s)"


def response_json(x) -> dict:
    """A server's answer as JSON, from an HTTP response, a JSON string or bytes."""
    return x.json() if hasattr(x, "json") else json.loads(x)


def openai_text(data: dict) -> str:
    """The text of the first choice of an OpenAI completions or chat answer."""
    choice = data["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def model_to_serve(engine: str, finetuned_model: str | None, base_model: str | None) -> str:
    """The finetuned model when it holds weights, else the base model; neither: a clear error."""
    for path in (finetuned_model, base_model):
        if holds_weights(path):
            return str(path)
    raise FileNotFoundError(f"{engine} has no model to serve: neither {finetuned_model!r} nor the base model "
                            f"{base_model!r} holds weights ({', '.join(WEIGHT_SUFFIXES)})")


class GenerateRoute:
    """For engines that answer TGI's ``POST /generate`` (``inputs`` and ``parameters``): LightLLM, MindIE."""

    def geturl(self, job: Any = None) -> str:
        return f"{self.url()}/generate"  # type: ignore[attr-defined]

    def smoke_request(self, prompt: str, model_path: str | None = None) -> tuple[str, dict[str, Any]]:
        return "/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 16, "do_sample": False}}


class DeployParams(BaseModel):
    """An engine's typed parameters (the pipeline's ``deploy.params``)."""

    model_config = ConfigDict(extra="forbid")
    ready_timeout_s: float = 120  # how long the readiness probe may take to answer

    @model_validator(mode="after")
    def _in_range(self) -> "DeployParams":
        bounds.check(type(self).__name__, dict(self))
        return self


class LazyLLMDeployBase(ComponentBase):
    """A serving backend: ``cmd()`` builds the launch command; the call returns the URL."""

    engine: ClassVar[str] = ""
    Params: ClassVar[type[DeployParams]] = DeployParams
    environment: ClassVar[str | None] = envs.MAIN
    api_key_env: ClassVar[str | None] = None
    serves: ClassVar[tuple[str, ...]] = ("llm", "vlm")  # the model types it serves (tasks.models.types)
    default_name: ClassVar[str] = "fineflow-model"  # the served model's name unless one is given
    auto_types: ClassVar[tuple[str, ...]] = ()  # the model types AutoDeploy may choose it for
    auto_rank: ClassVar[int] = 100  # its place among the engines of a type: the lowest installed one wins
    gpu_key: ClassVar[str | None] = None  # the keyword that takes the GPU count (tensor parallelism)
    auto_by_name: ClassVar[bool] = False  # chosen by the model's name alone (speech): not by what is installed
    serves_adapters: ClassVar[bool] = False  # serves LoRA adapters of its model, loaded at runtime (with_adapters)

    def __init__(self, *, launcher: Any = None, host: str | None = None, port: int | None = None,
                 name: str | None = None, prompt_style: str | None = None):
        super().__init__(launcher=launcher or launchers.remote())
        self.host, self.port = host or "127.0.0.1", port or None
        self.name, self.prompt_style = name or self.default_name, prompt_style or "alpaca"

    def listen_port(self) -> int:
        """The port the server listens on: the one given, or a free one, taken the first time it is asked."""
        if not self.port:
            self.port = net.free_port()
        return self.port

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address (::1) in a URL
        return f"http://{host}:{self.listen_port()}"

    def geturl(self, job: Any = None) -> str:
        return self.url()

    def server_command(self, argvs: list[str] | list[list[str]], env: dict[str, str] | None = None,
                       health: str = "/health") -> Command:
        """The command that starts this server: ``argvs`` (the server last), ``env``, its URL as the value and
        ``GET <url><health>`` as the readiness probe, given ``params.ready_timeout_s``."""
        return Command(argvs, return_value=self.url(), checker=net.ready(f"{self.url()}{health}"),
                       env={**envs.path_env(self.environment), **(env or {})},
                       ready_timeout_s=self.params.ready_timeout_s)

    def cmd(self, finetuned_model: str | None = None, base_model: str | None = None,
            master_ip: str | None = None) -> Command:
        """The command that serves ``finetuned_model`` (``base_model`` when it holds no weights); ``master_ip``:
        join the Ray cluster there (only engines that span nodes take it)."""
        raise NotImplementedError

    @classmethod
    def shared_base_params(cls, params: DeployParams) -> DeployParams:
        """The deploy section's ``params`` for a base endpoint shared by adapters (``deploy.serve: adapter``): the
        engine's defaults for that where the section set none; as given by default."""
        return params

    def with_adapters(self, max_adapters: int, base_revision: str, root: str, state: str = "") -> None:
        """Serve LoRA adapters of the model beside it, loaded and unloaded while it runs (vLLM's
        ``/v1/load_lora_adapter``), at most ``max_adapters`` in memory, each trained on ``base_revision`` of the
        model and read from under ``root``; ``state``: a file the server keeps them in across a restart by its
        supervisor, where the engine can. Only the engines with ``serves_adapters`` can."""
        raise ValueError(f"deploy engine {self.engine!r} serves no LoRA adapters (deploy.serve: adapter needs "
                         "one that does: relay or vllm)")

    def single_node(self, master_ip: str | None) -> None:
        """Refuse ``master_ip``: this engine serves from one node."""
        if master_ip:
            raise ValueError(f"{type(self).__name__} serves from one node: it takes no master_ip (vLLM spans "
                             "nodes on Ray)")

    @classmethod
    def auto_accepts(cls, model: str) -> bool:
        """Whether AutoDeploy may choose this engine for a model of this name (speech engines go by name)."""
        return True

    @classmethod
    def auto_params(cls, ngpus: int, trust_remote_code: bool = True, log_path: str | None = None) -> dict[str, Any]:
        """This engine's keyword arguments when AutoDeploy chooses it for ``ngpus`` GPUs."""
        return {"trust_remote_code": trust_remote_code, "log_path": log_path,
                **({cls.gpu_key: ngpus} if cls.gpu_key else {})}

    @classmethod
    def supports_api_key(cls, params: DeployParams | None) -> bool:
        """Whether the engine, with ``params``, can require an API key."""
        return cls.api_key_env is not None

    @classmethod
    def for_pipeline(cls, model_path: str, **kw) -> "LazyLLMDeployBase":
        """The engine a pipeline's ``deploy`` section asks for, to serve ``model_path`` (AutoDeploy chooses
        from the model; the others need only their keywords)."""
        return cls(**kw)

    def preflight(self) -> None:
        """Raise ``EngineUnavailableError`` if the engine cannot start here; the engines that can, pass."""

    def after_start(self) -> None:
        """Runs once the start has succeeded or failed."""

    def with_api_key(self, command: Command, key: str) -> Command:
        """``command`` with the server's API key in its environment (never in its argv, which people see)."""
        if self.api_key_env is None:
            raise ValueError(f"deploy engine {self.engine!r} cannot require an API key; set deploy.api_key: false "
                             "and bind 127.0.0.1")
        command.env = {**command.env, self.api_key_env: key}
        return command

    def smoke_test(self, url: str, records: list[dict], headers: dict[str, str], model_path: str,
                   prompt_style: str = "alpaca", formatter: Callable[[Any], Any] | None = None) -> tuple[Any, str]:
        """(answer, what it shows): the first validation record, rendered in ``prompt_style``, completed by the
        endpoint at ``url``, read by ``extract_result`` and shaped by ``formatter``."""
        import httpx

        from tasks import inference

        prompt = inference.render_prompts(prompt_style, records[:1], model_path)[0]
        path, payload = self.smoke_request(prompt, model_path)
        reply = httpx.post(f"{url}{path}", json=payload, headers=headers, timeout=30)
        reply.raise_for_status()
        answer = self.extract_result(reply, prompt)
        answer = formatter(answer) if formatter else answer
        ex = inference.example(records[0])
        return answer, f"{ex['instruction']} {ex['input']!r} -> {answer!r} (expected {ex['output']!r})"

    def smoke_request(self, prompt: str, model_path: str | None = None) -> tuple[str, dict[str, Any]]:
        """The path and JSON body of a request that shows the endpoint answers ``prompt`` (rendered in the
        engine's prompt style); ``model_path`` is the model it serves, for engines that need its tokenizer."""
        raise NotImplementedError

    @staticmethod
    def extract_result(output, inputs):
        """The final result from a raw model output; backends override this."""
        return output


class DummyDeploy(LazyLLMDeployBase):
    """A stand-in deployment for tests and examples: it answers a request in ``message_format`` with
    ``reply for <inputs>, and parameters is <parameters>``, whole or (``stream=True``) piece by piece."""

    keys_name_handle = {"inputs": "inputs"}
    message_format = {"inputs": "", "parameters": {"do_sample": False, "temperature": 0.1}}
    allowed = ("port",)

    def __init__(self, launcher: Any = None, *, stream: bool = False, **kw):
        check_kwargs(type(self).__name__, kw, self.allowed)
        super().__init__(launcher=launcher or launchers.remote(sync=False), port=kw.get("port"))
        self.stream = stream

    def _request(self, x: Any) -> dict:
        request = copy.deepcopy(self.message_format)
        if isinstance(x, dict):
            request.update(x)
        else:
            request[self.keys_name_handle["inputs"]] = x
        return request

    def apply(self, x: Any) -> str | Iterator[str]:
        r = self._request(x)
        pieces = ["reply", " for", f" {r['inputs']}", ", and", " parameters", " is", f" {r['parameters']}"]
        return iter(pieces) if self.stream else "".join(pieces)
