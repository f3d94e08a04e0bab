"""Reading a YAML config: found relative to the repository, bounded in size, duplicate keys refused, overrides merged
in, validated by its schema; every problem a ``ConfigError`` naming the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tasks.settings import REPO_ROOT

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    pass


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def with_data_path(overrides: dict | None, data_path: str | None) -> dict | None:
    """``overrides`` with ``data.path`` replaced by ``data_path`` (what a data trigger passes), when given; overrides
    that are not a mapping are left for ``load_config`` to refuse."""
    if not data_path:
        return overrides
    data = {"data": {"path": data_path}}
    return deep_merge(overrides, data) if isinstance(overrides, dict) else overrides or data


def config_file(path: str | Path) -> Path:
    path = Path(path)
    return REPO_ROOT / path if not path.is_absolute() and not path.exists() else path


MAX_CONFIG_BYTES = 1_000_000  # checked before parsing: a pipeline config is a page or two


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML where a key given twice in one mapping is an error naming both lines (the plain loader keeps the last
    silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key is refused by the loader itself
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice, on lines "
                                                                    f"{seen[key]} and {line}", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_config(path: str | Path, overrides: dict | None, schema: type[M]) -> M:
    """Read a YAML config (relative to the repo root when not found here), merge ``overrides`` into it and
    validate it as ``schema``; every problem is named with its field."""
    path = config_file(path)
    try:
        if (size := path.stat().st_size) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size:,} bytes; a pipeline config is at most {MAX_CONFIG_BYTES:,} bytes "
                              "(data goes in data.path, not in the config)")
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: file not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (name, data, finetune, deploy, "
                          f"registry, ...), not a {type(raw).__name__}")
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(f"{path}: overrides must be a mapping of sections to merge into the file, not a "
                          f"{type(overrides).__name__}")
    raw = deep_merge(raw, overrides or {})
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(": ".join(filter(None, (".".join(map(str, err["loc"])),
                                                     err["msg"].removeprefix("Value error, "))))
                             for err in e.errors())
        raise ConfigError(f"{path}: {problems}") from None
