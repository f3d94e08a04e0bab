"""``FastapiApp``: the contract's decorators that give a served object routes of its own, beside ``/generate``.

    class PPOCR(MediaEngine):
        @FastapiApp.get("/info")
        def info(self): ...

The decorators record the function; ``FastapiApp.update()`` files the records under the class that defines each
function (``__relay_services__``: ``{(method, path): [name, kwargs]}``, as the reference keeps them), and
``FastapiApp.mount(app, obj)`` adds every route of ``obj``'s class and its bases to a FastAPI app, bound to
``obj`` (a subclass's override serves the route). ``list`` routes are served as GET. Stdlib only: the servers
that use it run in environments without the rest of fineflow.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

METHODS = {"get": "get", "post": "post", "delete": "delete", "list": "get"}


class FastapiApp:
    __relay_services__: list[list[Any]] = []

    @staticmethod
    def _server(method: str, path: str, **kw) -> Callable:
        def impl(f):
            FastapiApp.__relay_services__.append([f, method, path, kw])
            return f
        return impl

    @staticmethod
    def get(path: str, **kw) -> Callable:
        return FastapiApp._server("get", path, **kw)

    @staticmethod
    def post(path: str, **kw) -> Callable:
        return FastapiApp._server("post", path, **kw)

    @staticmethod
    def list(path: str, **kw) -> Callable:
        return FastapiApp._server("list", path, **kw)

    @staticmethod
    def delete(path: str, **kw) -> Callable:
        return FastapiApp._server("delete", path, **kw)

    @staticmethod
    def update() -> None:
        """File each recorded function under the class that defines it."""
        for f, method, path, kw in FastapiApp.__relay_services__:
            owner = inspect._findclass(f)
            if owner is None:
                raise TypeError(f"FastapiApp.{method}({path!r}) decorates {f.__qualname__}, not a method of a class")
            if "__relay_services__" not in owner.__dict__:
                owner.__relay_services__ = {}
            owner.__relay_services__[method, path] = [f.__name__, kw]
        FastapiApp.__relay_services__.clear()

    @staticmethod
    def routes(obj: Any) -> list[tuple[str, str, Callable, dict]]:
        """(HTTP method, path, bound method, kwargs) of every route of ``obj``'s class and its bases, the nearest
        definition of a path winning."""
        FastapiApp.update()
        found: dict[tuple[str, str], tuple[str, str, Callable, dict]] = {}
        for cls in type(obj).__mro__:
            for (method, path), (name, kw) in cls.__dict__.get("__relay_services__", {}).items():
                found.setdefault((method, path), (METHODS[method], path, getattr(obj, name), kw))
        return list(found.values())

    @staticmethod
    def mount(app: Any, obj: Any) -> None:
        for method, path, fn, kw in FastapiApp.routes(obj):
            getattr(app, method)(path, **kw)(fn)
