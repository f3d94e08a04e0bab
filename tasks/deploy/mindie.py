"""``Mindie``: Huawei's MindIE service on Ascend NPUs (``$LAZYLLM_MINDIE_HOME/mindie-service``).

    export LAZYLLM_MINDIE_HOME=/usr/local/Ascend/mindie/latest
    engine = Mindie(port=1025, npuDeviceIds=[[0, 1]], worldSize=2)
    command = engine.cmd("runs/merged")    # writes the service's config.json (a backup first), then the daemon

MindIE reads one ``conf/config.json`` at start. ``cmd()`` loads it (or the file given as ``config``), sets the
model, the server address and the sizes below, backs up the original once (``config.json.backup``) and writes
it; ``after_start()`` puts the original back once the daemon has read it (or failed to start). No NPU here:
``preflight()`` names what is missing at once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from tasks.core import Command, check_kwargs
from tasks.deploy.base import (DeployParams, GenerateRoute, LazyLLMDeployBase, accelerators, model_to_serve, require,
                               response_json)
from tasks.settings import env

HOME_VAR = "LAZYLLM_MINDIE_HOME"


class MindieParams(DeployParams):
    """The contract's keywords (MindIE's own camelCase names) and defaults."""

    ready_timeout_s: float = 900
    npuDeviceIds: list[list[int]] = Field(default_factory=lambda: [[0]])  # noqa: N815 (MindIE's names)
    worldSize: int = Field(1, ge=1)  # noqa: N815
    maxSeqLen: int = Field(64000, ge=1)  # noqa: N815
    maxInputTokenLen: int = Field(4096, ge=1)  # noqa: N815
    maxPrefillTokens: int = Field(8192, ge=1)  # noqa: N815
    config: str | None = None  # a config.json to start from instead of the installed one


class Mindie(GenerateRoute, LazyLLMDeployBase):
    engine: ClassVar[str] = "mindie"
    Params: ClassVar[type[DeployParams]] = MindieParams
    auto_types: ClassVar[tuple[str, ...]] = ("llm",)
    auto_rank: ClassVar[int] = 40
    gpu_key: ClassVar[str | None] = "worldSize"

    def __init__(self, trust_remote_code: bool = True, launcher: Any = None, log_path: str | None = None, **kw):
        check_kwargs(type(self).__name__, kw, ("host", "port", "name", "prompt_style", *MindieParams.model_fields))
        super().__init__(launcher=launcher, host=kw.get("host"), port=kw.get("port"), name=kw.get("name"),
                         prompt_style=kw.get("prompt_style"))
        self.params = MindieParams(**{k: v for k, v in kw.items() if k in MindieParams.model_fields})
        self.trust_remote_code, self.log_path = trust_remote_code, log_path
        self.mindie_home = env(HOME_VAR)
        self.config_path = Path(self.mindie_home or ".") / "mindie-service" / "conf" / "config.json"
        self.daemon = Path(self.mindie_home or ".") / "mindie-service" / "bin" / "mindieservice_daemon"

    @classmethod
    def auto_params(cls, ngpus: int, trust_remote_code: bool = True, log_path: str | None = None) -> dict[str, Any]:
        return {**super().auto_params(ngpus, trust_remote_code, log_path), "npuDeviceIds": [list(range(ngpus))]}

    @property
    def backup_path(self) -> Path:
        return self.config_path.with_name("config.json.backup")

    def preflight(self) -> None:
        missing = []
        if not self.mindie_home:
            missing.append(f"{HOME_VAR} (the MindIE installation directory)")
        elif not os.access(self.daemon, os.X_OK):
            missing.append(f"the MindIE daemon {self.daemon}")
        if not list(Path("/dev").glob("davinci[0-9]*")):
            missing.append("an Ascend NPU (/dev/davinci*)")
        require("MindIE", missing, accelerators())

    def load_config(self, config_path: str | Path) -> dict:
        path = Path(config_path)
        if not path.is_file():
            raise FileNotFoundError(f"no MindIE config at {path} (set {HOME_VAR}, or pass config=...)")
        return json.loads(path.read_text())

    def update_config(self, config: dict, model: str) -> dict:
        """``config`` with this deployment's model, address and sizes (the rest of MindIE's settings kept)."""
        p = self.params
        server = config.setdefault("ServerConfig", {})
        server.update(ipAddress=self.host, port=self.listen_port(), httpsEnabled=False)
        backend = config.setdefault("BackendConfig", {})
        backend["npuDeviceIds"] = p.npuDeviceIds
        deploy = backend.setdefault("ModelDeployConfig", {})
        deploy.update(maxSeqLen=p.maxSeqLen, maxInputTokenLen=p.maxInputTokenLen)
        models = deploy.setdefault("ModelConfig", [{}]) or [{}]
        models[0].update(modelName=Path(model).name, modelWeightPath=str(model), worldSize=p.worldSize,
                         trust_remote_code=self.trust_remote_code)
        deploy["ModelConfig"] = models
        backend.setdefault("ScheduleConfig", {})["maxPrefillTokens"] = p.maxPrefillTokens
        return config

    def save_config(self, config: dict) -> None:
        """Write ``config`` where MindIE reads it, after backing up the original (once: a second deployment
        never overwrites the true original with a generated one)."""
        if self.config_path.exists() and not self.backup_path.exists():
            shutil.copy2(self.config_path, self.backup_path)
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=2))

    def after_start(self) -> None:
        """Put the original config back: the daemon has read it by now."""
        if self.backup_path.exists():
            os.replace(self.backup_path, self.config_path)

    def cmd(self, finetuned_model: str | None = None, base_model: str | None = None,
            master_ip: str | None = None) -> Command:
        model = model_to_serve("MindIE", finetuned_model, base_model)
        self.single_node(master_ip)
        if not self.mindie_home:
            raise FileNotFoundError(f"set {HOME_VAR} to the MindIE installation directory")
        config = self.load_config(self.params.config or self.config_path)
        self.save_config(self.update_config(config, str(model)))
        return self.server_command([str(self.daemon)])

    @staticmethod
    def extract_result(x, inputs):
        data = response_json(x)
        return data["text"][0] if isinstance(data.get("text"), list) else data.get("generated_text", data.get("text"))
