"""LoRA adapters served on the built-in server's base model, each addressed by its name (``model`` in a request).

An adapter is *known* (its name and folder) once loaded, and *resident* (its weights in memory) while it is one
of the ``max_resident`` most recently used: a request for a known adapter that was evicted loads it again from
its folder. Rows of different adapters decode in one batch (PEFT's per-row ``adapter_names``), so a base with
many adapters costs one model's memory and batches across them.

Every change to the model (wrapping it, loading, deleting) runs on the batcher's thread, between batches: a
forward pass never sees an adapter come or go. The HTTP side only checks a load request and waits for it.
An adapter records the base it was trained on (``fineflow_base.json``: ``base_model_revision``); one trained on
another revision of the base, or recording none, is refused, naming both, before any weight is read, and so is a
folder (or a file in it) outside the server's adapter roots. Its folder is checked again each time it is read.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from tasks.files import write_atomic

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
BASE_RECORD = "fineflow_base.json"


class AdapterError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Adapter:
    name: str
    path: str


def recorded_base(adapter_dir: Path) -> str:
    """The base revision an adapter folder records it was trained on (``fineflow_base.json``)."""
    record = adapter_dir / BASE_RECORD
    try:
        revision = json.loads(record.read_text(encoding="utf-8"))["base_model_revision"]
    except FileNotFoundError:
        return ""
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise AdapterError(400, f"{record}: not a base record ({BASE_RECORD} holds base_model_revision): {e}") from e
    return str(revision)


class Adapters:
    """The base model with its adapters. ``model`` is what to call: the plain base until an adapter loads."""

    def __init__(self, model, base_name: str, base_revision: str, max_resident: int, roots: list[str]):
        """``base_revision``: what the server was told the model is (its engine computes it from the folder);
        ``roots``: the folders adapters may be read from (a load request names a path: nothing outside)."""
        if max_resident < 1:
            raise ValueError(f"max_resident must be at least 1, not {max_resident}")
        self.model, self.base_name, self.base_revision = model, base_name, base_revision
        self.roots = [Path(r).resolve() for r in roots]
        self.max_resident = max_resident
        self.known: dict[str, Adapter] = {}
        self.resident: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.loads = self.evictions = 0  # what a test or the log can read
        self.state: Path | None = None  # where the known adapters are kept (keep_in)

    def keep_in(self, state: Path, restarted: bool) -> list[str]:
        """Keep the known adapters (name and folder) in the file ``state``, written after each load and unload. A
        server started again after a crash (``restarted``) first knows the adapters listed there, each checked
        again and loaded when first asked for; one that no longer checks is left out. A fresh start begins with
        the adapters it was given (its loads come from whoever starts it). Returns why any were left out."""
        left_out = []
        if restarted and state.exists():
            for name, path in json.loads(state.read_text(encoding="utf-8")).items():
                try:
                    self.known[name] = self.check(name, path)
                except AdapterError as e:
                    left_out.append(e.message)
        self.state = state
        self._save()
        return left_out

    def _save(self) -> None:
        if self.state:
            write_atomic(self.state, json.dumps({a.name: a.path for a in self.known.values()}, indent=1))

    # -- checked on the HTTP side, and again where it loads ------------------------------------------------------
    def check(self, name: str, path: str, base_revision: str | None = None) -> Adapter:
        """A load request, checked before anything is read into memory."""
        if not name:
            raise AdapterError(400, "an adapter needs a name")
        if name in (self.base_name, BASE):
            raise AdapterError(400, f"adapter name {name!r} is taken by the base model")
        if known := self.known.get(name):
            raise AdapterError(400, f"adapter {name!r} is already loaded (from {known.path}); unload it first")
        adapter = Adapter(name, str(Path(path).resolve()))
        self._check_files(adapter)
        if base_revision and base_revision != self.base_revision:
            raise AdapterError(400, f"adapter {name!r} was trained on base revision {base_revision}; this "
                                    f"endpoint serves {self.base_name} at revision {self.base_revision}")
        return adapter

    def _check_files(self, adapter: Adapter) -> None:
        """Its folder and every file in it (a link too) under a root, a PEFT adapter, of this base."""
        folder, name = Path(adapter.path), adapter.name
        inside = [folder, *(f.resolve() for f in folder.iterdir())] if folder.is_dir() else [folder]
        outside = [f for f in inside if not any(f.is_relative_to(root) for root in self.roots)]
        if outside:
            raise AdapterError(403, f"adapter {name!r}: {outside[0]} is outside the folders adapters are loaded "
                                    f"from ({', '.join(map(str, self.roots))}; the server's --adapter-root)")
        if not (folder / "adapter_config.json").is_file():
            raise AdapterError(400, f"adapter {name!r}: {folder} holds no adapter_config.json (not a PEFT adapter)")
        recorded = recorded_base(folder)
        if not recorded:
            raise AdapterError(400, f"adapter {name!r}: {folder} records no base revision ({BASE_RECORD}): it "
                                    f"cannot be shown to be an adapter of {self.base_name} at {self.base_revision}")
        if recorded != self.base_revision:
            raise AdapterError(400, f"adapter {name!r} was trained on base revision {recorded}; this endpoint "
                                    f"serves {self.base_name} at revision {self.base_revision}")

    def row_name(self, model: str | None) -> str | None:
        """The adapter a request's ``model`` names (None: the base); an unknown name is a 404."""
        if model in (None, self.base_name):
            return None
        if model not in self.known:
            raise AdapterError(404, f"the model {model!r} does not exist here; models: "
                                    f"{', '.join([self.base_name, *list(self.known)])}")
        return model

    # -- run on the batcher's thread ----------------------------------------------------------------------------
    def add(self, adapter: Adapter) -> None:
        """Know ``adapter`` and make it resident now (its errors are the load request's)."""
        if known := self.known.get(adapter.name):  # another load of the name passed its check at the same time
            raise AdapterError(400, f"adapter {adapter.name!r} is already loaded (from {known.path}); unload it first")
        self.known[adapter.name] = adapter
        failed = self.prepare({adapter.name})
        if failed:
            del self.known[adapter.name]
            raise failed[adapter.name]
        self._save()

    def remove(self, name: str) -> None:
        if name not in self.known:
            raise AdapterError(404, f"adapter {name!r} is not loaded")
        if name in self.resident:
            self._delete(name)
        del self.known[name]
        self._save()

    def prepare(self, names: set[str]) -> dict[str, Exception]:
        """Make ``names`` resident (at most ``max_resident``), evicting the least recently used others; what
        could not be loaded (its folder changed since: checked again) with why, which fails only its rows."""
        for name in names:
            if name in self.resident:
                self.resident.move_to_end(name)
        failed: dict[str, Exception] = {}
        for name in names:
            if name in self.resident:
                continue
            while len(self.resident) >= self.max_resident:
                victim = next(n for n in self.resident if n not in names)
                self._delete(victim)
                self.evictions += 1
            try:
                self._load(self.known[name])
            except Exception as e:
                failed[name] = e
        return failed

    def forward_kwargs(self, rows: list[str | None]) -> dict:
        """What a forward pass over ``rows`` (each row's adapter, None: the base) is given."""
        return {"adapter_names": [r or BASE for r in rows]} if self.resident else {}

    def _load(self, adapter: Adapter) -> None:
        from peft import PeftConfig, PeftModel

        self._check_files(adapter)
        if not self.resident:  # the first: wrap the base (what PeftModel.from_pretrained does, undone on failure)
            config = PeftConfig.from_pretrained(adapter.path)
            config.inference_mode = True
            wrapped = PeftModel(self.model, config, adapter_name=adapter.name)
            try:
                wrapped.load_adapter(adapter.path, adapter_name=adapter.name)
            except Exception:
                self.model = wrapped.unload()  # the base without the layers it was given for the adapter
                raise
            self.model = wrapped
        else:
            try:
                self.model.load_adapter(adapter.path, adapter_name=adapter.name)
            except Exception:  # nothing of it stays in the model
                if adapter.name in self.model.peft_config:
                    self.model.delete_adapter(adapter.name)
                raise
        self.model.eval()
        self.resident[adapter.name] = None
        self.loads += 1

    def _delete(self, name: str) -> None:
        self.model.delete_adapter(name)
        if len(self.resident) == 1:  # PEFT cannot run with no adapter: back to the plain base (never changed)
            self.model = self.model.unload()
        self.resident.pop(name)
