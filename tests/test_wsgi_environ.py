"""The pure half of WSGI: environ building, status and header checks, the streams.

No sockets, loops or threads beyond the test's own: values in, values out.
"""

from __future__ import annotations

import io
import logging
import threading
import wsgiref.validate
from typing import Any

import pytest

from reuseport.http.wsgi_environ import (
    ErrorStream,
    FileWrapper,
    base_environ,
    build_environ,
    encode_headers,
    environ_key,
    parse_status,
)


def _environ(**overrides: Any) -> dict[str, Any]:
    base = base_environ(script_name="/mount", errors=ErrorStream(), server_software="reuseport/t")
    args: dict[str, Any] = {
        "method": "GET",
        "raw_path": b"/a/b",
        "query": b"x=1&y=%20",
        "http_version": "1.1",
        "headers": [(b"host", b"example.test"), (b"accept", b"*/*")],
        "client": ("10.0.0.7", 51000),
        "server": ("127.0.0.1", 8000),
        "scheme": "http",
        "wsgi_input": io.BytesIO(b""),
    }
    args.update(overrides)
    return build_environ(base, **args)


def test_environ_has_the_cgi_and_wsgi_keys_pep_3333_asks_for() -> None:
    environ = _environ()
    wsgiref.validate.check_environ(environ)  # the reference checker: raises on a fault
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == "/mount"
    assert environ["PATH_INFO"] == "/a/b"
    assert environ["QUERY_STRING"] == "x=1&y=%20"
    assert environ["RAW_URI"] == "/a/b?x=1&y=%20"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", "8000")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("10.0.0.7", "51000")
    assert environ["HTTP_HOST"] == "example.test"
    assert environ["HTTP_ACCEPT"] == "*/*"
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.multiprocess"] is True
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.input_terminated"] is True
    assert environ["wsgi.file_wrapper"] is FileWrapper
    assert "CONTENT_LENGTH" not in environ
    assert "CONTENT_TYPE" not in environ


def test_path_info_is_decoded_bytes_as_latin1_text() -> None:
    # PEP 3333: the decoded bytes, each as one code point; the app re-encodes.
    environ = _environ(raw_path=b"/caf%C3%A9/%2F/x y")
    assert environ["PATH_INFO"] == "/caf\u00c3\u00a9///x y"
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café///x y"
    assert environ["RAW_URI"].startswith("/caf%C3%A9/%2F/")


def test_content_headers_are_cgi_variables_and_repeats_are_joined() -> None:
    environ = _environ(
        method="POST",
        headers=[
            (b"content-type", b"application/json"),
            (b"content-length", b"12"),
            (b"x-tag", b"a"),
            (b"x-tag", b"b"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
        ],
    )
    wsgiref.validate.check_environ(environ)
    assert environ["CONTENT_TYPE"] == "application/json"
    assert environ["CONTENT_LENGTH"] == "12"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert "HTTP_CONTENT_LENGTH" not in environ
    assert environ["HTTP_X_TAG"] == "a,b"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"


def test_a_header_name_with_an_underscore_is_dropped() -> None:
    # It would land in the same variable as its dashed twin, which a proxy may
    # set while passing the underscore spelling through untouched.
    environ = _environ(
        headers=[(b"x-forwarded-for", b"10.1.1.1"), (b"x_forwarded_for", b"6.6.6.6")]
    )
    assert environ["HTTP_X_FORWARDED_FOR"] == "10.1.1.1"
    assert environ_key(b"x_forwarded_for") is None
    assert environ_key(b"x-forwarded-for") == "HTTP_X_FORWARDED_FOR"


def test_header_values_are_latin1_text() -> None:
    environ = _environ(headers=[(b"x-name", "Zoë".encode())])
    assert environ["HTTP_X_NAME"].encode("latin-1").decode("utf-8") == "Zoë"


def test_unix_socket_and_unknown_client() -> None:
    environ = _environ(server=("/run/app.sock", None), client=None, scheme="https")
    wsgiref.validate.check_environ(environ)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("localhost", "443")
    assert environ["REMOTE_ADDR"] == ""
    assert environ["wsgi.url_scheme"] == "https"


def test_each_environ_is_a_fresh_dict() -> None:
    first, second = _environ(), _environ()
    first["HTTP_X"] = "mine"
    assert "HTTP_X" not in second


@pytest.mark.parametrize(
    ("status", "code"), [("200 OK", 200), ("404 Not Found", 404), ("599 ", 599), ("100 C", 100)]
)
def test_parse_status(status: str, code: int) -> None:
    assert parse_status(status) == code


@pytest.mark.parametrize(
    ("status", "error", "match"),
    [
        (200, TypeError, "must be a str"),
        (b"200 OK", TypeError, "must be a str"),
        ("200", ValueError, "three-digit code, a space and a reason"),
        ("200OK", ValueError, "three-digit code"),
        ("2x0 OK", ValueError, "three-digit code"),
        ("099 Low", ValueError, "outside 100-599"),
        ("600 High", ValueError, "outside 100-599"),
    ],
)
def test_parse_status_refuses(status: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_status(status)


def test_encode_headers() -> None:
    headers, length = encode_headers(
        [("Content-Type", "text/plain"), ("Content-Length", " 5 "), ("X-Name", "Zoë")]
    )
    assert headers == [
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b" 5 "),
        (b"X-Name", "Zoë".encode("latin-1")),
    ]
    assert length == 5
    assert encode_headers([]) == ([], None)


@pytest.mark.parametrize(
    ("headers", "error", "match"),
    [
        ((("a", "b"),), TypeError, "must be a list"),
        ([["a", "b"]], TypeError, "tuple"),
        ([("a", "b", "c")], TypeError, "tuple"),
        ([(b"a", "b")], TypeError, "must be str"),
        ([("a", 1)], TypeError, "must be str"),
        ([("X", "€")], ValueError, "not latin-1"),
        ([("X", "a\r\nInjected: 1")], ValueError, "not a valid HTTP field"),
        ([("Bad Name", "a")], ValueError, "not a valid HTTP field"),
        ([("", "a")], ValueError, "not a valid HTTP field"),
        ([("Content-Length", "12a")], ValueError, "not a number"),
        ([("Content-Length", "-1")], ValueError, "not a number"),
    ],
)
def test_encode_headers_refuses(headers: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        encode_headers(headers)


def test_error_stream_logs_whole_lines_per_thread(caplog: pytest.LogCaptureFixture) -> None:
    stream = ErrorStream()
    caplog.set_level(logging.ERROR, logger="reuseport.wsgi")
    stream.write("first ha")
    other = threading.Thread(target=lambda: (stream.write("other line\n"), stream.write("tail")))
    other.start()
    other.join(5.0)
    stream.write("lf\nsecond\n")
    stream.writelines(["third", " line\n", "unfinished"])
    stream.flush()
    stream.flush()  # nothing left: nothing logged
    messages = [r.getMessage() for r in caplog.records if r.name == "reuseport.wsgi"]
    assert messages == ["other line", "first half", "second", "third line", "unfinished"]
    assert all(r.levelno == logging.ERROR for r in caplog.records)
    with pytest.raises(TypeError, match="takes str"):
        stream.write(b"bytes")  # type: ignore[arg-type]


def test_file_wrapper_iterates_blocks_and_closes_the_file() -> None:
    data = bytes(range(256)) * 100
    file = io.BytesIO(data)
    wrapper = FileWrapper(file, 1000)
    blocks = list(wrapper)
    assert b"".join(blocks) == data
    assert {len(b) for b in blocks[:-1]} == {1000}
    wrapper.close()
    assert file.closed
    FileWrapper(object()).close()  # type: ignore[arg-type]  # no close(): nothing to do
