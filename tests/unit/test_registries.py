"""The backend tables and their modules kept in step: every framework and engine class in its folder has its row,
every row names its class, and a backend with an environment of its own has its pinned file."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import tasks.deploy
import tasks.finetune
from tasks import envs
from tasks.deploy import ENGINES, LazyLLMDeployBase
from tasks.deploy.auto import candidates
from tasks.finetune import FRAMEWORKS, LazyLLMFinetuneBase


def defined_in(package, base: type, key: str) -> dict[str, type]:
    """Every concrete backend class defined in ``package``'s modules: its name (``key``) -> class."""
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, base) and cls.__module__ == module.__name__ and getattr(cls, key):
                found[getattr(cls, key)] = cls
    return found


@pytest.mark.parametrize("package,base,key,table", [
    (tasks.finetune, LazyLLMFinetuneBase, "framework", FRAMEWORKS),
    (tasks.deploy, LazyLLMDeployBase, "engine", ENGINES),
])
def test_every_backend_module_has_its_row_and_every_row_its_module(package, base, key, table):
    defined = defined_in(package, base, key)
    defined.pop("ray", None)  # Distributed: a Ray cluster's processes, not a serving engine a pipeline names
    assert {name: cls for name, cls in table.items()} == defined
    for name, cls in table.items():
        assert getattr(cls, key) == name and cls.Params is not None
        if cls.environment is not None:  # its own environment: a pinned requirements file exists
            assert envs.spec_path(cls.environment).is_file()


def test_autodeploy_ranks_the_engines_by_what_they_declare():
    """A new engine joins AutoDeploy's choice by its own facts: no list of names elsewhere."""
    assert [cls.engine for cls in candidates("llm")] == ["vllm", "lightllm", "lmdeploy", "mindie", "relay"]
    assert [cls.engine for cls in candidates("stt")] == ["sensevoice", "whisper"]
    assert {cls.engine for cls in candidates("tts")} == {"piper", "bark", "musicgen", "chattts"}
    assert all(cls.gpu_key is None or cls.gpu_key in cls.auto_params(2) for cls in ENGINES.values()
               if cls.engine not in ("auto",))


def test_every_serving_platform_module_has_its_row_and_the_section_names_them_all():
    import typing

    import tasks.serving.platforms as package
    from tasks.serving.platforms import PLATFORMS, ServingPlatform, ServingSection

    defined = {name: cls for name, cls in defined_in(package, ServingPlatform, "name").items()}
    assert PLATFORMS == defined
    assert set(typing.get_args(ServingSection.model_fields["platform"].annotation)) == set(PLATFORMS)
