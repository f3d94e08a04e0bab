"""ComponentBase, command objects and keyword checking (the contract's ``lazyllm.components.core``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tasks import launchers
from tasks.masking import show_argv


class UnknownKwargsError(TypeError, ValueError):
    """A component was given keyword arguments it does not accept.

    A TypeError, as Python's own for a bad keyword; also a ValueError, so that inside a pydantic
    validator (a pipeline config) it becomes a validation error located at the field.
    """


def check_kwargs(owner: str, given: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Reject unknown keyword arguments, suggesting the closest allowed name and listing them all."""
    import difflib

    allowed = sorted(allowed)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        hints = [f"{u!r}: did you mean {m[0]!r}?" for u in unknown if (m := difflib.get_close_matches(u, allowed, 1))]
        raise UnknownKwargsError(
            f"{owner} got unknown keyword argument(s) {', '.join(unknown)}"
            + (f" ({'; '.join(hints)})" if hints else "") + f"; allowed: {', '.join(allowed)}"
        )


class Command:
    """What a component runs: one argv or a list of argvs, run in order.

    ``return_value`` is what calling the component returns once every argv has
    succeeded (a path or a URL); ``checker`` is an optional readiness check, which a
    server is given ``ready_timeout_s`` to pass.
    ``str()`` is shell-like for people to read, with secrets masked; the argvs
    are always executed as lists, never through a shell.
    """

    def __init__(self, argvs: list[str] | list[list[str]], return_value: Any = None,
                 checker: Callable[[], bool] | None = None, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 120):
        if argvs and isinstance(argvs[0], str):
            argvs = [argvs]  # type: ignore[list-item]
        self.argvs: list[list[str]] = [list(a) for a in argvs]  # type: ignore[union-attr]
        self.return_value = return_value
        self.checker = checker
        self.env = env or {}
        self.ready_timeout_s = ready_timeout_s

    def __str__(self) -> str:
        return " && ".join(show_argv(a) for a in self.argvs)

    def __repr__(self) -> str:
        return f"<Command {self}>"


LazyLLMCMD = Command  # the contract's name for a command object


class ComponentBase:
    """A component runs through its launcher; a subclass gives ``apply`` or ``cmd``."""

    auto_plan: Any = None  # set by AutoFinetune / AutoDeploy on the component they chose: what, and why

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

    def plan_record(self) -> dict[str, Any] | None:
        """The plan that chose this component (``auto_plan``) as a dict, for a run's records; None if none did."""
        return dataclasses.asdict(self.auto_plan) if self.auto_plan is not None else None

    def __repr__(self) -> str:
        return f"<fineflow.{type(self).__name__} name={self.name}>"
