"""``make image``: fineflow's container image, built on this machine without any registry.

    python -m infra.image.build                              # fineflow:<commit>: the pipelines, no framework env
    python -m infra.image.build --frameworks llamafactory    # fineflow:<commit>-llamafactory: with that environment

The steps of ``infra/image/Containerfile``, for a machine that reaches Debian's and PyPI's mirrors but no image
registry: a Debian bookworm root filesystem from ``debootstrap`` (its Python is 3.11, as the Containerfile's base
image's), the wheels of ``requirements.lock`` fetched by pip on this machine (inside the root filesystem nothing
is fetched: ``PIP_NO_INDEX``), the checkout's tracked files at the commit (``git archive``) in ``/opt/fineflow``,
its ``.venv`` installed as ``make env`` installs it, each framework environment asked for built by
``tasks.envs`` into ``/opt/fineflow-envs``, then the tree imported by podman, tagged with the commit. The base
filesystem and the wheels are cached (``$XDG_CACHE_HOME/fineflow/image``); no credential enters the image.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tasks.settings import REPO_ROOT, env

SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "ca-certificates", "git", "libgomp1")  # git: the envs' checks; gomp: torch
APP, ENVS = "/opt/fineflow", "/opt/fineflow-envs"
# How the image runs (podman import --change): the project's interpreter first, its state in a scratch folder,
# nothing sent anywhere; the Containerfile's ENV and WORKDIR.
CHANGES = [f"WORKDIR {APP}", f"ENV PATH={APP}/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           f"ENV FINEFLOW_ENVS={ENVS}", "ENV FINEFLOW_HOME=/var/fineflow/home", "ENV PYTHONUNBUFFERED=1",
           "ENV FINEFLOW_TELEMETRY=off", "ENV PREFECT_SERVER_ANALYTICS_ENABLED=false"]


def log(message: str) -> None:
    print(message, flush=True)


def run(argv: list[str], **kw) -> None:
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, **kw)
    if done.returncode:
        raise SystemExit(f"`{' '.join(argv[:6])} ...` failed ({done.returncode}):\n{done.stdout[-2000:]}"
                         f"{done.stderr[-3000:]}")
    log(f"  {' '.join(argv[:4])} ... ({time.monotonic() - start:.0f} s)")


def cache_dir() -> Path:
    return Path(env("XDG_CACHE_HOME")).expanduser() / "fineflow" / "image"


def base_rootfs(cache: Path) -> Path:
    """The Debian root filesystem as a tarball, made once."""
    tar = cache / f"{SUITE}-{'-'.join(PACKAGES)}.tar"
    if not tar.is_file():
        for tool in ("debootstrap", "podman"):
            if not shutil.which(tool):
                raise SystemExit(f"make image needs {tool}: apt-get install debootstrap podman runc")
        root = cache / "base.building"
        shutil.rmtree(root, ignore_errors=True)
        log(f"debootstrap {SUITE} ({', '.join(PACKAGES)}) ...")
        run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), MIRROR])
        run(["tar", "-C", str(root), "-cf", str(tar.with_suffix(".partial")), "."])
        tar.with_suffix(".partial").rename(tar)
        shutil.rmtree(root)
    return tar


def wheels(cache: Path, frameworks: list[str], python: str) -> Path:
    """Every wheel the image installs, for its Python ``python``, fetched here (pip skips the ones it has)."""
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    log("fetching wheels (pip download) ...")
    pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(folder)]
    run([*pip, "-r", str(REPO_ROOT / "requirements.lock")])
    run([*pip, "--no-deps", "-r", str(REPO_ROOT / "requirements-nodeps.lock")])
    for name in frameworks:
        run([*pip, "--no-deps", "-r", str(REPO_ROOT / "infra" / "envs" / f"{name}.txt")])
    for requirement in missing(folder, python):  # markers true for the image's Python, not for this one
        run([*pip, "--no-deps", requirement])
    return folder


def missing(folder: Path, python: str) -> list[str]:
    """The requirements of the wheels in ``folder`` that no wheel there meets, evaluated for the image's Python
    (``python_full_version < "3.11.3"`` is true there and false here, so pip on this machine skips them)."""
    import zipfile

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    have = {canonicalize_name(parse_wheel_filename(w.name)[0]): w for w in folder.glob("*.whl")}
    target = {**default_environment(), "python_full_version": python, "python_version": python.rsplit(".", 1)[0]}
    # The wheels installed with --no-deps bring none of their requirements.
    lines = (line.split("#")[0].strip() for line in (REPO_ROOT / "requirements-nodeps.lock").read_text().splitlines())
    nodeps = {canonicalize_name(Requirement(line).name) for line in lines if line}
    wanted = set()
    for wheel in (w for name, w in have.items() if name not in nodeps):
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            for line in z.read(meta).decode().splitlines():
                if line.startswith("Requires-Dist: "):
                    req = Requirement(line[len("Requires-Dist: "):])
                    if (not req.marker or req.marker.evaluate({**target, "extra": ""})) and \
                            canonicalize_name(req.name) not in have:
                        wanted.add(str(Requirement(f"{req.name}{req.specifier}")))
    return sorted(wanted)


def commit() -> str:
    """The commit the image holds (``git archive HEAD``: uncommitted changes are not in it)."""
    return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, text=True).strip()


def build(frameworks: list[str], tag: str | None = None) -> str:
    """Build and import the image; returns its name."""
    for name in frameworks:
        if not (REPO_ROOT / "infra" / "envs" / f"{name}.txt").is_file():
            raise SystemExit(f"--frameworks {name}: no infra/envs/{name}.txt")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    image = tag or f"fineflow:{'-'.join([commit(), *frameworks])}"
    start = time.monotonic()
    base = base_rootfs(cache)
    root = cache / f"{image.replace(':', '-')}.building"  # one build of an image at a time
    shutil.rmtree(root, ignore_errors=True)
    try:
        (root / "tmp" / "wheels").mkdir(parents=True)
        run(["tar", "-C", str(root), "-xf", str(base)])
        python = subprocess.check_output(["chroot", str(root), "python3", "-c", "import platform; "
                                          "print(platform.python_version())"], text=True).strip()
        wheel_dir = wheels(cache, frameworks, python)
        for w in wheel_dir.iterdir():  # linked, not copied: the same filesystem as the cache
            os.link(w, root / "tmp" / "wheels" / w.name)
        app = root / APP.lstrip("/")
        app.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-C", str(app), "-x"], input=archive, check=True)
        log(f"installing into {APP} (chroot, offline) ...")
        offline = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "PIP_NO_INDEX": "1",
                   "PIP_FIND_LINKS": "/tmp/wheels", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "FINEFLOW_ENVS": ENVS,
                   "PIP_NO_CACHE_DIR": "1", "LANG": "C.UTF-8"}
        chroot = ["chroot", str(root), "/bin/sh", "-c"]
        venv = f"{APP}/.venv/bin/python -m pip install -q"
        run([*chroot, f"cd {APP} && python3 -m venv .venv && {venv} -r requirements.lock && "
                      f"{venv} --no-deps -r requirements-nodeps.lock && {venv} --no-deps -e ."], env=offline)
        for name in frameworks:
            run([*chroot, f"cd {APP} && .venv/bin/python -m tasks.envs build {name}"], env=offline)
        shutil.rmtree(root / "tmp" / "wheels")
        for cached in root.glob("root/.cache"):
            shutil.rmtree(cached)
        log(f"importing {image} ...")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        run(["podman", "import", *(arg for change in CHANGES for arg in ("--change", change)), "-", image],
            stdin=tar.stdout)
        tar.wait()
    finally:  # a failed or stopped build leaves no half-made tree
        shutil.rmtree(root, ignore_errors=True)
    size = subprocess.check_output(["podman", "image", "inspect", "--format", "{{.Size}}", image], text=True)
    log(f"built {image}: {int(size) / 2**30:.2f} GiB in {time.monotonic() - start:.0f} s")
    return image


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frameworks", nargs="*", default=[], help="framework environments to build in (infra/envs/)")
    p.add_argument("--tag", help="the image's name (default fineflow:<commit>[-<framework>...])")
    args = p.parse_args(argv)
    build(args.frameworks, args.tag)


if __name__ == "__main__":
    main()
