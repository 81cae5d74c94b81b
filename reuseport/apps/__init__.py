"""Application loading, interface detection and the adapter registry.

Rules: ``load_app`` imports the user's ``module:attribute`` and turns every
failure into ``AppLoadError`` with the fix in its message; with ``factory``
(``--factory``) the attribute is a callable that returns the app, called once
per worker, and its failure is the app's too.  ``detect`` looks at
the object only (no calls), and says why it chose an interface so the worker
can log it (a WSGI app is a plain callable, or a class, taking
``(environ, start_response)``; a Flask or Django app object is one).  Adding
an interface means one entry in the table in ``_adapter()``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable

from ..config import Interface
from ..errors import AppLoadError
from .base import HostedApp, WorkerContext

__all__ = ["DEMO_APP", "build", "detect", "load_app"]

DEMO_APP = "reuseport.apps.demo:app"


def load_app(spec: str, app_dir: str = ".", *, factory: bool = False) -> object:
    """Import ``module:attribute`` with ``app_dir`` first on ``sys.path``.

    With ``factory``, call the attribute (no arguments) and return what it returns.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise AppLoadError(f"cannot load app {spec!r}: expected MODULE:ATTRIBUTE, e.g. web:app")
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(
                f"cannot load app {spec!r}: no module named {exc.name!r} under {path} "
                "(run from the project folder, pass --app-dir, or check the spelling)"
            ) from None
        raise AppLoadError(
            f"cannot load app {spec!r}: importing {module_name!r} failed:\n"
            + "".join(traceback.format_exception(exc)).rstrip()
        ) from None
    except Exception as exc:
        raise AppLoadError(
            f"cannot load app {spec!r}: importing {module_name!r} raised:\n"
            + "".join(traceback.format_exception(exc)).rstrip()
        ) from None
    obj: object = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(
                f"cannot load app {spec!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if factory:
        return _call_factory(spec, obj)
    return obj


def _call_factory(spec: str, factory: object) -> object:
    if not callable(factory):
        raise AppLoadError(
            f"cannot load app {spec!r} with --factory: {factory!r} is not callable "
            "(leave out --factory if it is the app itself)"
        )
    try:
        app = factory()
    except TypeError as exc:
        if _positional_params(factory) not in (0, None):
            raise AppLoadError(
                f"cannot load app {spec!r} with --factory: the factory must take no "
                f"arguments ({exc}); is it the app itself? Then leave out --factory"
            ) from None
        raise AppLoadError(
            f"cannot load app {spec!r}: the factory raised:\n"
            + "".join(traceback.format_exception(exc)).rstrip()
        ) from None
    except Exception as exc:
        raise AppLoadError(
            f"cannot load app {spec!r}: the factory raised:\n"
            + "".join(traceback.format_exception(exc)).rstrip()
        ) from None
    if inspect.isawaitable(app):
        if inspect.iscoroutine(app):
            app.close()
        raise AppLoadError(
            f"cannot load app {spec!r} with --factory: the factory is async; "
            "it must return the app, not a coroutine"
        )
    return app


def _positional_params(func: Callable[..., object]) -> int | None:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    count = 0
    for param in sig.parameters.values():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            return None
        if (
            param.kind
            in (
                inspect.Parameter.POSITIONAL_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
            )
            and param.default is inspect.Parameter.empty
        ):
            count += 1
    return count


def _is_async_callable(obj: object) -> bool:
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(obj, "__call__", None)  # noqa: B004 - we want the bound method
    return call is not None and inspect.iscoroutinefunction(call)


def detect(obj: object) -> tuple[Interface, str]:
    """Guess the interface of ``obj`` by inspection; return it and the reason."""
    if getattr(obj, "__reuseport_interface__", None) is not None:
        value = obj.__reuseport_interface__  # type: ignore[attr-defined]
        return Interface(value), "declared by the app"
    if inspect.isclass(obj):
        if issubclass(obj, asyncio.BaseProtocol):
            return Interface.PROTOCOL, f"{obj.__name__} is an asyncio.Protocol subclass"
        if _is_async_callable(obj):
            return Interface.ASGI, "class with an async __call__ (ASGI)"
        params = _positional_params(obj)
        if params == 1:
            return Interface.ASGI, "class taking one argument (ASGI 2 double-callable)"
        if params == 2:
            return Interface.WSGI, "class taking (environ, start_response) (WSGI)"
        raise AppLoadError(
            f"cannot tell what {obj!r} is: pass --interface asgi|wsgi|stream|protocol|socket"
        )
    if not callable(obj):
        raise AppLoadError(
            f"the app {obj!r} is not callable: point APP at an ASGI or WSGI app, a stream "
            "handler, a Protocol class or factory, or an `async def serve(sock)`"
        )
    params = _positional_params(obj)
    if _is_async_callable(obj):
        if params == 3:
            return Interface.ASGI, "async callable(scope, receive, send)"
        if params == 2:
            return Interface.STREAM, "async callable(reader, writer)"
        if params == 1:
            return Interface.SOCKET, "async callable(sock)"
        raise AppLoadError(
            f"cannot tell what {obj!r} is from its {params} parameters: pass "
            "--interface asgi|stream|socket"
        )
    if params == 0:
        return Interface.PROTOCOL, "plain callable with no arguments (Protocol factory)"
    if params == 1:
        return Interface.ASGI, "plain callable(scope) (ASGI 2 double-callable)"
    if params == 2:
        return Interface.WSGI, "plain callable(environ, start_response) (WSGI)"
    raise AppLoadError(
        f"cannot tell what {obj!r} is: pass --interface asgi|wsgi|stream|protocol|socket"
    )


def _adapter(interface: Interface) -> Callable[[object, WorkerContext], HostedApp]:
    # Imported lazily so a worker loads only the adapter it uses.
    if interface is Interface.ASGI:
        from .asgi import AsgiApp

        return AsgiApp
    if interface is Interface.WSGI:
        from .wsgi import WsgiApp

        return WsgiApp
    from .plain import PlainProtocolApp, SocketApp, StreamApp

    table: dict[Interface, Callable[[object, WorkerContext], HostedApp]] = {
        Interface.STREAM: StreamApp,
        Interface.PROTOCOL: PlainProtocolApp,
        Interface.SOCKET: SocketApp,
    }
    return table[interface]


def build(obj: object, interface: Interface, ctx: WorkerContext) -> HostedApp:
    """Wrap ``obj`` in the adapter for ``interface`` (never AUTO here)."""
    if isinstance(obj, HostedApp):
        return obj
    factory = getattr(obj, "__reuseport_hosted__", None)
    if factory is not None:  # the built-in demo app hosts itself
        hosted: HostedApp = factory(ctx)
        return hosted
    return _adapter(interface)(obj, ctx)
