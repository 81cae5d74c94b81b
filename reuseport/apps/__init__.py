"""Application loading, interface detection and the adapter registry.

Rules: ``load_app`` imports the user's ``module:attribute`` and turns every
failure into ``AppLoadError`` with the fix in its message; with ``factory``
(``--factory``) the attribute is a callable that returns the app, called once
per worker, and its failure is the app's too.  ``detect`` looks at
the object only (no calls), and says why it chose an interface so the worker
can log it (a WSGI app is a plain callable, or a class, taking
``(environ, start_response)``; a Flask or Django app object is one).  Adding
an interface means one entry in the table in ``_adapter()``.

``host`` is what the worker calls: it imports and wraps whatever serves the
worker's sockets.  Stream sockets (TCP, unix, fd) are APP's (the demo when
there is no APP); UDP sockets are ``--datagram-app``'s when it is given, else
APP's.  When the two kinds meet and two apps serve them, a ``MixedApp`` holds
both.  An app that cannot serve the sockets it got (a datagram app on a TCP
bind, an ASGI app on UDP) is a ``BootError`` naming the fix; so is
``--proxy-protocol`` for a stream app that reads its connections itself
(stream handlers, Protocol factories, socket apps: the PROXY header would
reach them as data).

Datagram apps are detected where that is unambiguous: an
``asyncio.DatagramProtocol`` subclass (not also an ``asyncio.Protocol``), a
``functools.partial`` of one, a factory annotated to return one, or any
zero-argument factory when every bind is ``udp://`` (a stream Protocol
factory would have nothing to serve there).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import os
import sys
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Config, Interface
from ..errors import AppLoadError, BootError
from .base import HostedApp, WorkerContext

__all__ = ["DEMO_APP", "Hosting", "build", "detect", "host", "load_app"]

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


def _datagram_protocol(obj: object) -> str | None:
    """Why ``obj`` surely makes ``asyncio.DatagramProtocol`` instances; None if not surely."""
    target = obj.func if isinstance(obj, functools.partial) else obj
    if inspect.isclass(target):
        if issubclass(target, asyncio.DatagramProtocol) and not issubclass(
            target, asyncio.Protocol
        ):
            what = "a partial of " if target is not obj else ""
            return f"{what}{target.__name__}, an asyncio.DatagramProtocol subclass"
        return None
    try:
        returns = typing.get_type_hints(target).get("return")
    except Exception:  # unresolvable annotations: no answer, not an error
        return None
    if inspect.isclass(returns) and issubclass(returns, asyncio.DatagramProtocol):
        return f"a factory annotated to return {returns.__name__} (a DatagramProtocol)"
    return None


def detect(obj: object, *, udp_only: bool = False) -> tuple[Interface, str]:
    """Guess the interface of ``obj`` by inspection; return it and the reason.

    ``udp_only``: every socket it will serve is a UDP one, so a zero-argument
    factory is a datagram protocol factory.
    """
    if getattr(obj, "__reuseport_interface__", None) is not None:
        value = obj.__reuseport_interface__  # type: ignore[attr-defined]
        return Interface(value), "declared by the app"
    if (why := _datagram_protocol(obj)) is not None:
        return Interface.DATAGRAM, why
    if inspect.isclass(obj):
        if issubclass(obj, asyncio.DatagramProtocol) and issubclass(obj, asyncio.Protocol):
            raise AppLoadError(
                f"{obj.__name__} is both an asyncio.Protocol and an asyncio.DatagramProtocol: "
                "pass --interface protocol (TCP) or --interface datagram (UDP)"
            )
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
    if params == 0 and udp_only:
        return Interface.DATAGRAM, "plain callable with no arguments, and every bind is udp://"
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
    if interface is Interface.DATAGRAM:
        from .datagram import DatagramApp

        return DatagramApp
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


@dataclass(frozen=True, kw_only=True, slots=True)
class Hosting:
    """What a worker serves its sockets with, and what it tells the master about it."""

    app: HostedApp
    interface: str  # "asgi", "datagram", "asgi+datagram", ...
    reason: str  # why (the detection's words), for the log


def _app(spec: str, config: Config, ctx: WorkerContext, *, udp_only: bool, main: bool) -> Hosting:
    """Import ``spec`` and wrap it; ``main``: it is APP (--factory, --interface apply)."""
    # --factory is about APP; the demo (no APP) is never a factory.
    obj = load_app(spec, config.app_dir, factory=main and config.factory and config.app is not None)
    interface: Interface
    if main and config.interface is not Interface.AUTO:
        interface, reason = config.interface, "from --interface"
    else:
        interface, reason = detect(obj, udp_only=udp_only)
    return Hosting(app=build(obj, interface, ctx), interface=interface.value, reason=reason)


def host(config: Config, ctx: WorkerContext, *, streams: bool, datagrams: bool) -> Hosting:
    """Import and wrap what serves a worker whose sockets include ``streams`` / ``datagrams``.

    Raises ``AppLoadError`` (import) or ``BootError`` (an app that cannot
    serve the sockets it got), each with the fix.
    """
    main_spec = config.app or DEMO_APP
    if datagrams and config.datagram_app is not None:
        dgram = _app(config.datagram_app, config, ctx, udp_only=True, main=False)
        _check_datagrams(config.datagram_app, "--datagram-app", dgram)
        if not streams:
            return dgram
        main = _app(main_spec, config, ctx, udp_only=False, main=True)
        _check_streams(main_spec, main, config)
        return Hosting(
            app=_mixed(main.app, dgram.app, ctx),
            interface=f"{main.interface}+{dgram.interface}",
            reason=f"{main.reason}; --datagram-app: {dgram.reason}",
        )
    main = _app(main_spec, config, ctx, udp_only=datagrams and not streams, main=True)
    if streams:
        _check_streams(main_spec, main, config)
    if datagrams:
        if streams and not main.app.datagrams:
            raise BootError(
                f"{main_spec} serves the stream binds; the udp:// binds need a datagram app "
                "of their own: pass --datagram-app MODULE:ATTR (an asyncio.DatagramProtocol "
                "subclass or factory)"
            )
        _check_datagrams(main_spec, "APP", main)
    return main


def _check_streams(spec: str, hosted: Hosting, config: Config) -> None:
    if config.proxy_protocol and not hosted.app.proxy_protocol:
        raise BootError(
            f"--proxy-protocol cannot apply to {spec}, a {hosted.interface} app "
            f"({hosted.reason}): it reads its connections itself, so the PROXY header would "
            "reach it as data. Serve an ASGI or WSGI app, or leave --proxy-protocol out"
        )
    if not hosted.app.streams:
        raise BootError(
            f"{spec} was taken for a {hosted.interface} app ({hosted.reason}), which serves "
            "udp:// binds only, but this server also has stream binds (TCP, unix:, fd://). "
            "Bind udp:// addresses only, or serve the others with another APP and pass this "
            "one as --datagram-app"
        )


def _check_datagrams(spec: str, role: str, hosted: Hosting) -> None:
    if not hosted.app.datagrams:
        raise BootError(
            f"{role} {spec} cannot serve udp:// binds: it was taken for a {hosted.interface} "
            f"app ({hosted.reason}). A datagram app is an asyncio.DatagramProtocol subclass "
            "or a factory returning one; pass --interface datagram if it is such a factory"
        )


def _mixed(stream: HostedApp, datagram: HostedApp, ctx: WorkerContext) -> HostedApp:
    from .mixed import MixedApp

    return MixedApp(stream, datagram, ctx)
