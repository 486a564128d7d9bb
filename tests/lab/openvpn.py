"""A real OpenVPN server with N clients, each in its own network namespace.

Layout (all inside namespaces this lab creates, nothing on the host):

    <client ns> eth0 10.99.0.(10+i) ──┐
                                      br0  (in the "net" namespace)
    <server ns> eth0 10.99.0.1 ───────┘
    server: tun0 10.8.0.1/24, fd00:8::1/64; clients get tun0 from the pools.

DCO is disabled so traffic goes through a plain tun0 like on a node running
the agent; the server is told to notify clients on exit so restarts are fast.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from .netns import (LabError, Namespace, bridge, stop_processes, track,
                    untrack, veth_pair)
from .pki import Pki, make_pki

UNDERLAY = "10.99.0"
SERVER_UNDERLAY = f"{UNDERLAY}.1"
VPN_NET, VPN_MASK = "10.8.0.0", "255.255.255.0"
VPN6_NET = "fd00:8::/64"
SERVER_VPN_IPV4, SERVER_VPN_IPV6 = "10.8.0.1", "fd00:8::1"
READY = "Initialization Sequence Completed"


def log_tail(path: str, lines: int = 25) -> str:
    """Last lines of a log, for error messages."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as exc:
        return f"<no log: {exc}>"


def _log_since(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


@dataclass
class VpnClient:
    """One client: its namespace, files, process and VPN addresses."""
    name: str
    ns: Namespace
    underlay: str
    config: str
    log: str
    proc: subprocess.Popen | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    mark: int = 0  # log offset where the current session starts


class OpenVpnLab:
    """Server + clients over a bridged underlay; see module docstring.

    Use as a context manager, or call start() and close() yourself.
    proto: "udp" or "tcp-server".  static_ips: fixed per-CN VPN addresses
    (client-config-dir) instead of pool order.  keep: leave the temp dir
    (configs, logs, status file) for inspection.  UDP clients notify the
    server on exit, but it keeps the instance ~5 s more ("Delayed exit").
    """

    def __init__(self, clients=("alice", "bob", "carol"), *,
                 proto: str = "udp", port: int = 1194, ipv6: bool = True,
                 management_port: int | None = 7505, status_version: int = 2,
                 status_interval: int = 1, tls_crypt: bool = True,
                 static_ips: bool = False, keep: bool = False,
                 server_extra=(), client_extra=(), before_server=None):
        if status_version not in (1, 2, 3):
            raise ValueError("status_version must be 1, 2 or 3")
        if proto not in ("udp", "tcp", "tcp-server"):
            raise ValueError(f"proto must be udp or tcp-server, not {proto!r}")
        self.client_names = list(clients)
        self.udp = proto == "udp"
        self.proto = "udp" if self.udp else "tcp-server"
        self.port, self.ipv6 = port, ipv6
        self.management_port = management_port
        self.status_version = status_version
        self.status_interval = status_interval
        self.tls_crypt, self.keep = tls_crypt, keep
        self.static_ips = static_ips
        self.server_extra = list(server_extra)  # raw config lines
        self.client_extra = list(client_extra)
        # Called with the server namespace before openvpn starts in it, e.g.
        # to pre-create a persistent tun0 and attach the agent to it first.
        self.before_server = before_server
        self.server_vpn_ipv4 = SERVER_VPN_IPV4
        self.server_vpn_ipv6 = SERVER_VPN_IPV6 if ipv6 else None
        self.workdir: str | None = None
        self.pki: Pki | None = None
        self.net_ns: Namespace | None = None
        self.server_ns: Namespace | None = None
        self.server_proc: subprocess.Popen | None = None
        self.clients: dict[str, VpnClient] = {}
        self.namespaces: list[Namespace] = []  # every one created, for close()
        self._server_mark = 0
        self.closed = False

    # ------------------------------------------------------------ set-up
    def __enter__(self) -> "OpenVpnLab":
        return self.start() if self.server_ns is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getitem__(self, name: str) -> VpnClient:
        return self.clients[name]

    def start(self) -> "OpenVpnLab":
        """Create PKI, namespaces and underlay; start server, then clients.

        Does not wait for the clients: call wait_connected().
        """
        track(self)
        try:
            self.workdir = tempfile.mkdtemp(prefix=f"vpnm-lab-{os.getpid()}-")
            self.pki = make_pki(os.path.join(self.workdir, "pki"),
                                self.client_names, tls_crypt=self.tls_crypt)
            self.net_ns = self._ns("net")
            bridge(self.net_ns, "br0")
            self.server_ns = self._ns("server")
            veth_pair(self.server_ns, self.net_ns, f"{SERVER_UNDERLAY}/24",
                      name_b="p0", master_b="br0")
            for i, cn in enumerate(self.client_names, start=1):
                ns = self._ns(cn)
                addr = f"{UNDERLAY}.{9 + i}"
                veth_pair(ns, self.net_ns, f"{addr}/24", name_b=f"p{i}",
                          master_b="br0")
                c = VpnClient(cn, ns, addr, self._path(f"{cn}.conf"),
                              self._path(f"{cn}.log"))
                with open(c.config, "w") as f:
                    f.write(self._client_config(c))
                self.clients[cn] = c
            if self.static_ips:
                self._write_ccd()
            with open(self.server_config, "w") as f:
                f.write(self._server_config())
            if self.before_server:
                self.before_server(self.server_ns)
            self._start_server()
            for cn in self.client_names:
                self.connect(cn)
        except BaseException:
            self.close()
            raise
        return self

    def _ns(self, role: str) -> Namespace:
        self.namespaces.append(Namespace(role))
        return self.namespaces[-1]

    def _path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    @property
    def server_config(self) -> str:
        return self._path("server.conf")

    @property
    def server_log(self) -> str:
        return self._path("server.log")

    @property
    def status_path(self) -> str:
        return self._path("status.log")

    def _keys(self, cert: str, key: str) -> list[str]:
        lines = [f"ca {self.pki.ca}", f"cert {cert}", f"key {key}"]
        if self.pki.tls_crypt:
            lines.append(f"tls-crypt {self.pki.tls_crypt}")
        return lines

    def _write_ccd(self) -> None:
        """Fixed addresses per CN, top of the /24 (the pool starts at .2)."""
        os.mkdir(self._path("ccd"))
        for i, cn in enumerate(self.client_names, start=1):
            with open(self._path(f"ccd/{cn}"), "w") as f:
                f.write(f"ifconfig-push 10.8.0.{254 - i} {VPN_MASK}\n")
                if self.ipv6:
                    f.write(f"ifconfig-ipv6-push fd00:8::ff:{i}/64 "
                            f"{SERVER_VPN_IPV6}\n")

    def _server_config(self) -> str:
        lines = [
            "dev tun0", "dev-type tun", "topology subnet",
            f"proto {self.proto}", f"local {SERVER_UNDERLAY}", f"port {self.port}",
            f"server {VPN_NET} {VPN_MASK}",
            *([f"server-ipv6 {VPN6_NET}"] if self.ipv6 else []),
            *self._keys(self.pki.server_cert, self.pki.server_key),
            "dh none", "keepalive 2 10",
            # Kernel DCO would bypass tun0 (and openvpn 2.6's ovpn-dco module
            # is not the in-tree 'ovpn' anyway): keep the classic data path.
            "disable-dco",
            f"status {self.status_path} {self.status_interval}",
            f"status-version {self.status_version}",
            "verb 3", f"log-append {self.server_log}",
        ]
        if self.udp:
            lines.append("explicit-exit-notify 1")  # clients restart at once
        if self.static_ips:
            lines.append(f"client-config-dir {self._path('ccd')}")
        if self.management_port:
            lines.append(f"management 127.0.0.1 {self.management_port}")
        return "\n".join(lines + self.server_extra) + "\n"

    def _client_config(self, c: VpnClient) -> str:
        cert, key = self.pki.clients[c.name]
        proto = "udp" if self.udp else "tcp-client"
        lines = [
            "client", "dev tun0", "dev-type tun", f"proto {proto}",
            f"remote {SERVER_UNDERLAY} {self.port}", "nobind",
            *self._keys(cert, key),
            "remote-cert-tls server", "verify-x509-name server name",
            # Retry fast: a restarted server is back within ~2 s.
            "connect-retry 1 2", "tls-timeout 1", "disable-dco", "verb 3",
            f"log-append {c.log}",
        ]
        if self.udp:
            lines.append("explicit-exit-notify 1")  # server drops us at once
        return "\n".join(lines + self.client_extra) + "\n"

    # ------------------------------------------------------------- server
    def _start_server(self, timeout: float = 20) -> None:
        self._server_mark = _size(self.server_log)
        self.server_proc = self.server_ns.popen(
            ["openvpn", "--config", self.server_config], log=self.server_log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server_proc.poll() is not None:
                raise LabError(f"openvpn server exited "
                               f"({self.server_proc.returncode}):\n"
                               f"{log_tail(self.server_log)}")
            if READY in _log_since(self.server_log, self._server_mark) and \
                    self.server_ns.addresses("tun0")[0]:
                return
            time.sleep(0.05)
        raise LabError(f"openvpn server not ready after {timeout}s:\n"
                       f"{log_tail(self.server_log)}")

    def restart_server(self, timeout: float = 30, wait: bool = True, hard: bool = False) -> None:
        """Stop the server by pid and start it again (tun0 is recreated,
        unless it is persistent).

        hard: SIGKILL, so OpenVPN cleans nothing up (a crash).
        With wait, also waits until the running clients have reconnected.
        """
        if hard:
            self.server_proc.kill()
            self.server_proc.wait(10)
        else:
            self.server_ns.kill(self.server_proc, timeout=10)
        for c in self.clients.values():  # sessions after this point count
            c.mark, c.ipv4, c.ipv6 = _size(c.log), None, None
        self._start_server(timeout)
        if wait:
            self.wait_connected(timeout, [c.name for c in self.clients.values()
                                          if c.proc is not None])

    def management(self, command: str, timeout: float = 5) -> str:
        """Send one management command (run inside the server namespace)."""
        if not self.management_port:
            raise LabError("management interface disabled")
        res = self.server_ns.run(["/usr/bin/python3", "-c", _MGMT_CLIENT,
                                  str(self.management_port), command],
                                 timeout=timeout + 5)
        return res.stdout

    # ------------------------------------------------------------ clients
    def connect(self, name: str) -> VpnClient:
        """(Re)start a client's openvpn; call wait_connected() after."""
        c = self.clients[name]
        if c.proc is not None and c.proc.poll() is None:
            return c
        c.mark, c.ipv4, c.ipv6 = _size(c.log), None, None
        c.proc = c.ns.popen(["openvpn", "--config", c.config], log=c.log)
        return c

    def disconnect(self, name: str, timeout: float = 5) -> None:
        """Stop one client's openvpn by pid (UDP: it notifies the server)."""
        c = self.clients[name]
        if c.proc is not None:
            c.ns.kill(c.proc, timeout=timeout)
        c.proc, c.ipv4, c.ipv6 = None, None, None

    def _client_ready(self, c: VpnClient) -> bool:
        if c.proc is None or c.proc.poll() is not None:
            raise LabError(f"openvpn client {c.name} is not running:\n"
                           f"{log_tail(c.log)}")
        if READY not in _log_since(c.log, c.mark):
            return False
        v4, v6 = c.ns.addresses("tun0")
        if v4 is None or (self.ipv6 and v6 is None):
            return False
        c.ipv4, c.ipv6 = v4, v6
        return True

    def wait_connected(self, timeout: float = 30,
                       names=None) -> dict[str, VpnClient]:
        """Wait until the clients (default: all) have tun0 up and addressed."""
        names = list(self.clients) if names is None else list(names)
        pending = set(names)
        deadline = time.monotonic() + timeout
        while pending:
            if self.server_proc is None or self.server_proc.poll() is not None:
                raise LabError(f"openvpn server is not running:\n"
                               f"{log_tail(self.server_log)}")
            pending = {n for n in pending
                       if not self._client_ready(self.clients[n])}
            if not pending:
                break
            if time.monotonic() > deadline:
                msg = [f"clients not connected after {timeout}s: "
                       f"{sorted(pending)}"]
                for n in sorted(pending):
                    msg.append(f"--- {n} log tail:\n"
                               f"{log_tail(self.clients[n].log)}")
                msg.append(f"--- server log tail:\n{log_tail(self.server_log)}")
                raise LabError("\n".join(msg))
            time.sleep(0.1)
        return {n: self.clients[n] for n in names}

    # ----------------------------------------------------------- teardown
    def close(self) -> None:
        """Stop every openvpn by pid, delete namespaces and the temp dir."""
        if self.closed:
            return
        procs = [c.proc for c in self.clients.values() if c.proc is not None]
        if self.server_proc is not None:
            procs.append(self.server_proc)
        stop_processes(procs, timeout=5)
        for ns in reversed(self.namespaces):
            ns.close()
        if self.workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.closed = True
        untrack(self)


_MGMT_CLIENT = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
f = s.makefile("rw", newline="\n")
f.readline()                      # >INFO greeting
f.write(sys.argv[2] + "\n"); f.flush()
out = []
while True:
    line = f.readline()
    if not line:
        break
    line = line.rstrip("\r\n")
    if line.startswith(">"):      # asynchronous notification
        continue
    if line == "END" or line.startswith(("SUCCESS:", "ERROR:")):
        if line != "END":
            out.append(line)
        break
    out.append(line)
f.write("quit\n"); f.flush()
print("\n".join(out))
"""
