"""What vpnmeterd tells systemd (Type=notify): the datagrams it sends to
$NOTIFY_SOCKET when ready, around a SIGHUP reload, and when stopping."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from conftest import wait_for


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))  # the agent inherits it
    yield sock
    sock.close()


def received(sock, messages: list[str]) -> list[str]:
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        return messages


def test_ready_reloading_and_stopping_reach_systemd(namespaces, agents, notify_socket):
    ns = namespaces("srv")
    ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    agent = agents(ns, ["eth0"])
    agent.start(wait_attached="eth0")
    messages: list[str] = []
    wait_for(lambda: received(notify_socket, messages), 10, "READY=1")
    assert messages[0].splitlines()[0] == "READY=1", messages
    assert f"STATUS=counting on {agent.pin_path}; store {agent.store_path}" in messages[0]
    assert "HTTP API on" in agent.log()  # READY=1 came after the API listened

    os.kill(agent.proc.pid, signal.SIGHUP)
    wait_for(lambda: len(received(notify_socket, messages)) >= 3, 10, "RELOADING=1 and READY=1")
    assert messages[1].startswith("RELOADING=1\nMONOTONIC_USEC=") and messages[2].startswith("READY=1\n"), messages
    usec = int(messages[1].splitlines()[1].split("=")[1])
    assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 10

    agent.config_path.write_text("interfaces: [\n")  # a broken file: rejected, still READY=1 after
    os.kill(agent.proc.pid, signal.SIGHUP)
    wait_for(lambda: len(received(notify_socket, messages)) >= 5, 10, "READY=1 after a rejected reload")
    assert messages[3].startswith("RELOADING=1\n")
    assert messages[4].startswith("READY=1\nSTATUS=reload rejected: "), messages

    agent.stop("TERM")
    assert received(notify_socket, messages)[5].startswith("STOPPING=1\n"), messages
