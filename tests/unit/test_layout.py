"""The architecture as the tree shows it: each folder of ``tasks/`` is a layer that imports only the layers below it,
no module imports itself back through others, and the servers (programs run in other frameworks' environments)
import nothing but the few pure modules they need."""

from __future__ import annotations

from tests.support import imports
from tests.support.paths import REPO

# Bottom up. The top-level modules of tasks/ are the base: settings, masking, files, net, core, launchers, envs,
# bounds. A layer imports only from itself and the layers before it.
LAYERS = ("base", "services", "prompter", "formatter", "inference", "models", "data", "evaluate", "servers",
          "finetune", "deploy", "serving", "pipeline")
# What a server may load: itself, the base modules, and the pure components it renders and parses with.
SERVER_WORLD = ("tasks.servers", "tasks.settings", "tasks.masking", "tasks.files", "tasks.net", "tasks.core",
                "tasks.launchers", "tasks.inference", "tasks.prompter", "tasks.formatter")


def layer(module: str) -> str:
    parts = module.split(".")
    return "base" if len(parts) == 2 and not (REPO / "tasks" / parts[1]).is_dir() else parts[1]


def test_every_folder_of_tasks_is_a_layer():
    folders = {p.name for p in (REPO / "tasks").iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(LAYERS) - {"base"}


def test_each_layer_imports_only_itself_and_the_layers_below():
    upward = [f"{m} ({layer(m)}) imports {t} ({layer(t)})"
              for m, targets in imports.graph().items() if m.startswith("tasks.") for t in sorted(targets)
              if t.startswith("tasks.") and LAYERS.index(layer(t)) > LAYERS.index(layer(m))]
    assert not upward, "\n".join(upward)


def test_no_module_imports_itself_back():
    assert not imports.cycles(), "\n".join(" -> ".join(c) for c in imports.cycles())


def test_servers_import_nothing_of_the_engines_or_the_services():
    servers = [m for m in imports.graph() if m.startswith("tasks.servers")]
    assert "tasks.servers.relay" in servers and "tasks.servers.media.app" in servers
    strays = {m: sorted(r for r in imports.reachable(m) if r.startswith("tasks.") and not r.startswith(SERVER_WORLD))
              for m in servers}
    assert not {m: r for m, r in strays.items() if r}
    assert not [m for m in servers if "tasks.deploy" in imports.reachable(m)]


def test_the_check_sees_a_server_that_imports_an_engine(tmp_path, monkeypatch):
    """The servers' rule holds because it is checked: a server importing ``tasks.deploy`` is caught."""
    fake = {**imports.graph(), "tasks.servers.sneaky": frozenset({"tasks.deploy"})}
    monkeypatch.setattr(imports, "graph", lambda roots=imports.PROJECT: fake)
    assert "tasks.deploy" in imports.reachable("tasks.servers.sneaky")
    assert "tasks.deploy.vllm" in imports.reachable("tasks.servers.sneaky")
