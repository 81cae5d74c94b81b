"""TLS for every bind: the server's SSL context, from uvicorn's ``--ssl-*`` flags.

Rules: ``server_context(config)`` builds a fresh context from the files on
every call.  Each worker calls it while it boots, right after opening its
sockets and before dropping privileges (a key only root may read stays
so), so a rolling reload (SIGHUP) picks up a renewed certificate: every new
worker reads the files again.  The master calls ``check(config)`` once at
start, so a wrong path, a wrong password or a key that does not fit the
certificate is exit 2 with a message, not a worker boot loop.  Every error
is a ``ConfigError`` naming the flag and the file.

An encrypted key without ``--ssl-keyfile-password`` is refused with a
message instead of letting OpenSSL ask for the password on the terminal.
HTTP serving offers ALPN ``http/1.1`` only (``offer_http11``): there is no
HTTP/2 here, and a client must not pick it.
"""

from __future__ import annotations

import ssl

from .config import Config
from .errors import ConfigError, errno_name

__all__ = ["check", "offer_http11", "server_context"]


class _NoPassword(Exception):
    """OpenSSL asked for the key's password and none was given."""


def _no_password() -> str:
    raise _NoPassword


def _readable(path: str, flag: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot read {flag} {path!r}: {exc.strerror} ({errno_name(exc)})"
        ) from None


def server_context(config: Config) -> ssl.SSLContext:
    """A server-side SSL context for ``config`` (which must have ``--ssl-certfile``)."""
    certfile = config.ssl_certfile
    if certfile is None:
        raise ValueError("no --ssl-certfile: TLS is off")
    keyfile = config.ssl_keyfile
    _readable(certfile, "--ssl-certfile")
    if keyfile is not None:
        _readable(keyfile, "--ssl-keyfile")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    password = config.ssl_keyfile_password
    key_shown = f"--ssl-keyfile {keyfile!r}" if keyfile else f"the key in {certfile!r}"
    try:
        context.load_cert_chain(
            certfile, keyfile, password if password is not None else _no_password
        )
    except _NoPassword:
        raise ConfigError(f"{key_shown} is encrypted: give --ssl-keyfile-password") from None
    except ssl.SSLError as exc:
        reason = exc.reason or ""
        if "MISMATCH" in reason:
            why = "the private key does not belong to the certificate"
        elif "PEM lib" in str(exc) and password is not None:
            why = "wrong --ssl-keyfile-password, or the key is not a PEM private key"
        elif "PEM lib" in str(exc):
            why = (
                "no PEM private key found (give --ssl-keyfile, or put the key in the "
                "certificate file)"
            )
        elif reason:
            why = f"not a usable PEM certificate and key ({reason})"
        else:
            why = str(exc)
        raise ConfigError(
            f"cannot load --ssl-certfile {certfile!r} with {key_shown}: {why}"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot load --ssl-certfile {certfile!r}: {exc.strerror or exc} ({errno_name(exc)})"
        ) from None
    context.verify_mode = ssl.VerifyMode(int(config.ssl_cert_reqs))
    if config.ssl_ca_certs is not None:
        _readable(config.ssl_ca_certs, "--ssl-ca-certs")
        try:
            context.load_verify_locations(cafile=config.ssl_ca_certs)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"cannot load --ssl-ca-certs {config.ssl_ca_certs!r}: {exc}"
            ) from None
    if config.ssl_ciphers is not None:
        try:
            context.set_ciphers(config.ssl_ciphers)
        except ssl.SSLError:
            raise ConfigError(
                f"invalid --ssl-ciphers {config.ssl_ciphers!r}: OpenSSL selects no cipher "
                "from it (see `openssl ciphers`)"
            ) from None
    return context


def offer_http11(context: ssl.SSLContext) -> ssl.SSLContext:
    """Offer ALPN ``http/1.1`` (and nothing else) on ``context``; returns it."""
    context.set_alpn_protocols(["http/1.1"])
    return context


def check(config: Config) -> None:
    """At start, in the master: the TLS files load (raises ``ConfigError`` if not)."""
    if config.tls:
        server_context(config)
