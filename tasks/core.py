"""ComponentBase, command objects and keyword checking (the contract's ``lazyllm.components.core``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tasks import launchers

# argv elements following these flags, or KEY=VALUE pairs with these keys, are masked in str().
_SECRET_FLAG = re.compile(r"^--?[\w-]*(token|secret|password|api[-_]?key|access[-_]?key)[\w-]*$", re.I)
_SECRET_PAIR = re.compile(r"^([\w.-]*(token|secret|password|api[-_]?key|access[-_]?key)[\w.-]*)=(.+)$", re.I)
MASK = "******"


class UnknownKwargsError(TypeError):
    """A component was given keyword arguments it does not accept."""


def check_kwargs(owner: str, given: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Reject unknown keyword arguments, naming the allowed ones."""
    allowed = sorted(allowed)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise UnknownKwargsError(
            f"{owner} got unknown keyword argument(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )


def mask_argv(argv: list[str]) -> list[str]:
    """A copy of ``argv`` with secret values replaced, for logs and MLflow tags."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
        elif m := _SECRET_PAIR.match(arg):
            out.append(f"{m.group(1)}={MASK}")
        else:
            out.append(arg)
            hide_next = bool(_SECRET_FLAG.match(arg))
    return out


class Command:
    """What a component runs: one argv or a list of argvs, run in order.

    ``return_value`` is what calling the component returns once every argv has
    succeeded (a path or a URL); ``checker`` is an optional readiness check.
    ``str()`` is shell-like for people to read, with secrets masked; the argvs
    are always executed as lists, never through a shell.
    """

    def __init__(self, argvs: list[str] | list[list[str]], return_value: Any = None,
                 checker: Callable[[], bool] | None = None, env: dict[str, str] | None = None):
        if argvs and isinstance(argvs[0], str):
            argvs = [argvs]  # type: ignore[list-item]
        self.argvs: list[list[str]] = [list(a) for a in argvs]  # type: ignore[union-attr]
        self.return_value = return_value
        self.checker = checker
        self.env = env or {}

    def __str__(self) -> str:
        import shlex

        return " && ".join(shlex.join(mask_argv(a)) for a in self.argvs)

    def __repr__(self) -> str:
        return f"<Command {self}>"


LazyLLMCMD = Command  # the contract's name for a command object


class ComponentBase:
    """A component runs through its launcher; a subclass gives ``apply`` or ``cmd``."""

    def __init__(self, *, launcher: Any = None):
        if launcher is None:
            launcher = launchers.empty()
        elif isinstance(launcher, type):
            launcher = launcher()
        self._launcher = launcher
        self._name = type(self).__name__

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def launcher(self):
        return self._launcher

    def apply(self, *args, **kw):
        raise NotImplementedError

    def cmd(self, *args, **kw):
        raise NotImplementedError

    def _overrides(self, method: str) -> bool:
        return getattr(type(self), method) is not getattr(ComponentBase, method)

    def __call__(self, *args, **kw):
        if self._overrides("apply"):
            return self.apply(*args, **kw)
        if not self._overrides("cmd"):
            raise NotImplementedError(f"{type(self).__name__} defines neither apply() nor cmd()")
        command = self.cmd(*args, **kw)
        if isinstance(command, str):
            import shlex

            command = Command(shlex.split(command))
        elif not isinstance(command, Command):
            command = Command(command)
        return self._launcher.launch(command, name=self.name)

    def __repr__(self) -> str:
        return f"<fineflow.{type(self).__name__} name={self.name}>"
