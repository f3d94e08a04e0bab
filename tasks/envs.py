"""Per-framework Python environments, built on demand from pinned requirement files.

    python -m tasks.envs build llamafactory     # build one (make envs builds all)
    python -m tasks.envs list                   # each environment: where it is, built or not

A framework that pins versions the main environment cannot hold (LLaMA-Factory needs
transformers<=5.6, ...) runs as a subprocess with the interpreter of its own environment.
The requirements are data, ``infra/envs/<name>.txt`` (read here by path; tasks never import
infra). Each file pins every package and is installed with ``--no-deps``, so what is built is
exactly the file. Comment directives in the file:

- ``# fineflow-stub: torchaudio`` writes an importable stub for a module the framework imports
  at load time but this machine's wheels cannot provide (PyPI's torchaudio is CUDA-linked);
  the stub raises ImportError on first use and has no dist-info, so libraries that probe for
  the package see it as absent.
- ``# fineflow-check: llamafactory-cli version`` runs once in the new environment before it is
  accepted.

Environments live in a cache shared by every checkout on the machine (``FINEFLOW_ENVS``,
default ``$XDG_CACHE_HOME/fineflow/envs`` or ``~/.cache/fineflow/envs``), keyed by the file's
hash and the Python version. A build happens under a lock, aside in ``<dir>.building``, and
is renamed into place only when complete, so a half-built environment is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tasks.files import locked
from tasks.settings import REPO_ROOT, env

SPEC_DIR = REPO_ROOT / "infra" / "envs"
MAIN = None  # the environment this process runs in
RAY = "ray"  # Ray and Ray Serve: the cluster's processes, and the drivers that use it (serving, training)
STUB = '''"""A stub written by fineflow (tasks/envs.py): {name} cannot be installed in this environment."""


def __getattr__(attr):
    raise ImportError("{name} is a stub in this fineflow environment (PyPI's build is CUDA-linked); "
                      "{name}." + attr + " is unavailable")
'''
# Packages whose PyPI wheels are CUDA-linked and break imports beside the CPU torch.
CUDA_LINKED = ("torchvision", "torchaudio", "torchcodec")


class EnvironmentBuildError(RuntimeError):
    """Building a framework environment failed; the message holds the command and its output's tail."""


def root() -> Path:
    if env("FINEFLOW_ENVS"):
        return Path(env("FINEFLOW_ENVS")).expanduser()
    return Path(env("XDG_CACHE_HOME")).expanduser() / "fineflow" / "envs"


def spec_path(name: str) -> Path:
    path = SPEC_DIR / f"{name}.txt"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.txt")))
        raise ValueError(f"no environment named {name!r}: {path} does not exist (known: {known})")
    return path


def directives(name: str, key: str) -> list[str]:
    prefix = f"# fineflow-{key}:"
    return [line[len(prefix):].strip() for line in spec_path(name).read_text().splitlines()
            if line.startswith(prefix)]


def env_dir(name: str) -> Path:
    """Where environment ``name`` lives once built (whether or not it is built yet)."""
    digest = hashlib.sha256(spec_path(name).read_bytes() + sys.version.split()[0].encode()).hexdigest()
    return root() / f"{name}-py{sys.version_info.major}{sys.version_info.minor}-{digest[:12]}"


def bin_path(name: str | None, program: str) -> str:
    """A program (``python``, ``llamafactory-cli``, ``torchrun``) of environment ``name``; None is this one."""
    base = Path(sys.executable).parent if name is MAIN else env_dir(name) / "bin"
    return str(base / program)


def path_env(name: str | None) -> dict[str, str]:
    """PATH with the environment's bin first, so tools a framework spawns (torchrun) come from it; the torch
    extensions it compiles on first use (DeepSpeed's ops, ~200 s on 2 cores) kept with the environment."""
    return {"PATH": os.pathsep.join([str(Path(bin_path(name, "python")).parent), env("PATH")]),
            "TORCH_EXTENSIONS_DIR": str(torch_extensions(name))}


def torch_extensions(name: str | None) -> Path:
    """Where environment ``name``'s JIT-compiled torch extensions live: in its folder of this machine's environment
    cache, so each machine compiles them once per build of the environment (and never for another torch)."""
    return (Path(sys.prefix) if name is MAIN else env_dir(name)) / "torch-extensions"


def is_built(name: str | None) -> bool:
    return name is MAIN or (env_dir(name) / "fineflow-env.json").is_file()


def _run(argv: list[str], log) -> None:
    log(f"  $ {shlex.join(argv)}")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-30:]
        if line and not line.startswith(("WARNING: Location", "Processing ", "Collecting ", "Downloading ",
                                          "Using cached", "Requirement already", " ")):
            log(f"    {line}")
    if proc.wait() != 0:
        raise EnvironmentBuildError(f"`{shlex.join(argv)}` failed ({proc.returncode}):\n" + "\n".join(tail))


def _build(name: str, target: Path, log) -> None:
    tmp = target.with_name(target.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.monotonic()
    _run([sys.executable, "-m", "venv", str(tmp)], log)
    python = str(tmp / "bin" / "python")
    _run([python, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-r", str(spec_path(name))],
         log)
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    for pkg in CUDA_LINKED:  # never wanted here, whatever the file says
        if (site / pkg).exists():
            _run([python, "-m", "pip", "uninstall", "-y", "-q", pkg], log)
    for stub in (s for line in directives(name, "stub") for s in line.split()):
        (site / stub).mkdir(exist_ok=True)
        (site / stub / "__init__.py").write_text(STUB.format(name=stub))
    for check in directives(name, "check"):
        argv = shlex.split(check)
        _run([str(tmp / "bin" / argv[0]), *argv[1:]], log)
    # Scripts carry the absolute path of the interpreter they were installed with: point them at the final place.
    for script in (tmp / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            head = script.read_bytes()[:256]
            if head.startswith(b"#!") and str(tmp).encode() in head:
                script.write_bytes(script.read_bytes().replace(str(tmp).encode(), str(target).encode()))
    (tmp / "fineflow-env.json").write_text(json.dumps({"name": name, "spec": str(spec_path(name)),
                                                       "python": sys.version.split()[0],
                                                       "built_s": round(time.monotonic() - start, 1)}))
    tmp.rename(target)


def ensure(name: str | None, log=None) -> Path | None:
    """Build environment ``name`` unless it is built; returns its directory (None for the main environment).

    Two processes asking at once take turns on a lock: the second finds it built.
    """
    if name is MAIN:
        return None
    log = log or (lambda line: print(line, flush=True))
    target = env_dir(name)
    if is_built(name):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent / f"{target.name}.lock"):
        if not is_built(name):
            # A directory without the marker is a build that died half-way, or an older layout: never use it.
            shutil.rmtree(target, ignore_errors=True)
            log(f"building environment {name} in {target} (once per machine; progress below) ...")
            start = time.monotonic()
            _build(name, target, log)
            log(f"environment {name} ready in {time.monotonic() - start:.0f}s")
    return target


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    names = sorted(p.stem for p in SPEC_DIR.glob("*.txt"))
    if args[:1] == ["build"]:
        for name in (names if args[1:] in ([], ["--all"]) else args[1:]):
            ensure(name)
            print(f"{name}\t{env_dir(name)}")
        return
    for name in names:
        print(f"{name}\t{'built' if is_built(name) else 'not built'}\t{env_dir(name)}")


if __name__ == "__main__":
    main()
