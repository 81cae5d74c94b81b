"""``bpf.py``'s eBPF half: instruction encoding (pure) and loading against the kernel.

Rules: the encoding is checked byte for byte against what the kernel's
``struct bpf_insn`` holds; loading skips only where the probe found that this
process may not load an SK_REUSEPORT program (no CAP_BPF/CAP_SYS_ADMIN, or no
bpf(2)): a platform limit, not a missing feature.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

import pytest
from features import requires_ebpf

from reuseport.bpf import (
    SK_PASS,
    AttachType,
    EbpfInsn,
    attach_ebpf,
    exit_insn,
    load_sk_reuseport,
    mov64_imm,
)
from reuseport.sockets import open_socket

little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="platform limit: the expected bytes are little-endian"
)


@little_endian_only
def test_mov64_imm_and_exit_encode_like_the_kernel() -> None:
    assert mov64_imm(0, SK_PASS).encode() == bytes.fromhex("b700000001000000")
    assert exit_insn().encode() == bytes.fromhex("9500000000000000")


@little_endian_only
def test_registers_offset_and_negative_immediate_share_their_fields() -> None:
    # r3 = *(u32 *)(r10 - 4) style fields: dst in the low nibble, src in the high one.
    insn = EbpfInsn(code=0x61, dst=3, src=10, off=-4, imm=-1)
    assert insn.encode() == bytes.fromhex("61a3fcffffffffff")


@requires_ebpf
@pytest.mark.parametrize("attach_type", list(AttachType))
def test_a_pass_program_loads_and_serves_a_group(attach_type: AttachType) -> None:
    try:
        fd = load_sk_reuseport([mov64_imm(0, SK_PASS), exit_insn()], attach_type)
    except OSError as exc:
        # SELECT_OR_MIGRATE needs Linux >= 5.14; the probe accepts SELECT alone.
        if attach_type is AttachType.SK_REUSEPORT_SELECT_OR_MIGRATE and exc.errno == errno.EINVAL:
            pytest.skip("platform limit: kernel < 5.14 has no SELECT_OR_MIGRATE")
        raise
    try:
        with open_socket(
            socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0), reuseport=True, backlog=8
        ) as listener:
            attach_ebpf(listener, fd)
            # SK_PASS without a selection: the kernel's hash picks, and the
            # only member of the group gets the connection.
            with socket.create_connection(listener.getsockname(), timeout=5):
                listener.settimeout(5)
                conn, _ = listener.accept()
                conn.close()
    finally:
        os.close(fd)


_PASS = [mov64_imm(0, SK_PASS), exit_insn()]


def _fake_bpf(failures: list[int], calls: list[int]) -> object:
    def fake(cmd: object, attr: object) -> int:
        calls.append(1)
        if failures:
            code = failures.pop(0)
            raise OSError(code, os.strerror(code))
        return 42

    return fake


def test_a_load_interrupted_by_a_signal_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # The verifier answers EAGAIN when a signal is pending on the loader
    # (a master gets SIGCHLD whenever a worker exits); that is not a verdict.
    calls: list[int] = []
    monkeypatch.setattr("reuseport.bpf.bpf", _fake_bpf([errno.EAGAIN, errno.EAGAIN], calls))
    assert load_sk_reuseport(_PASS, AttachType.SK_REUSEPORT_SELECT) == 42
    assert len(calls) == 3


def test_eagain_stands_after_a_few_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr("reuseport.bpf.bpf", _fake_bpf([errno.EAGAIN] * 10, calls))
    with pytest.raises(OSError, match=os.strerror(errno.EAGAIN)) as raised:
        load_sk_reuseport(_PASS, AttachType.SK_REUSEPORT_SELECT)
    assert raised.value.errno == errno.EAGAIN
    assert len(calls) == 5


def test_a_permission_error_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr("reuseport.bpf.bpf", _fake_bpf([errno.EPERM] * 10, calls))
    with pytest.raises(OSError, match=os.strerror(errno.EPERM)) as raised:
        load_sk_reuseport(_PASS, AttachType.SK_REUSEPORT_SELECT)
    assert raised.value.errno == errno.EPERM
    assert len(calls) == 1
