"""Fixtures for live tests: the built binaries and agents in namespaces."""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import select
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.lab import netns  # noqa: E402

BUILD = pathlib.Path(os.environ.get("VPNMETER_BUILD_DIR", ROOT / "build"))
VPNMETERD = BUILD / "agent" / "vpnmeterd"
VPNMETER = BUILD / "agent" / "vpnmeter"
_pins = itertools.count(1)


# A webhook receiver for alerts: appends each POSTed body as a line to argv[1].
WEBHOOK_RECEIVER = """
import http.server, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[1], "ab") as f:
            f.write(body + b"\\n")
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", 8089), Hook).serve_forever()
"""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Polls until predicate() is truthy; fails the test naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class LineChild:
    """A helper program in a namespace (tun_peer.py, openvpn_sim.py), spoken
    to one command per line; it answers each with one JSON object."""

    def __init__(self, ns: netns.Namespace, argv, what: str, timeout: float = 20):
        self.ns, self.what = ns, what
        self.proc = ns.popen(["/usr/bin/python3", *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, bufsize=1)
        assert "ready" in self._answer(timeout), f"{what} did not start"

    def _answer(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"{self.what} did not answer within {timeout}s"
        line = self.proc.stdout.readline()
        assert line, f"{self.what} exited ({self.proc.poll()})"
        answer = json.loads(line)
        assert "error" not in answer, answer["error"]
        return answer

    def call(self, command: str, timeout: float = 20) -> dict:
        self.proc.stdin.write(command + "\n")
        return self._answer(timeout)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.ns.kill(self.proc)


class Agent:
    """vpnmeterd in a network namespace, entered with nsenter so the host's
    bpffs (and so the pins) stay visible to the CLI and to the next run."""

    def __init__(self, ns: netns.Namespace, tmp: pathlib.Path, interfaces, **config):
        self.ns = ns
        self.pin_path = f"/sys/fs/bpf/vpnmeter-e2e-{os.getpid()}-{next(_pins)}"
        self.config_path = tmp / f"vpnmeter-{next(_pins)}.yaml"
        self.log_path = tmp / "vpnmeterd.log"
        self.proc = None
        # Which binaries, and a command to start vpnmeterd under (setpriv):
        # the package tests run the installed ones.
        self.vpnmeterd, self.vpnmeter, self.wrapper = VPNMETERD, VPNMETER, []
        interval = config.pop("interval", "200ms")
        max_clients = config.pop("max_clients", 65536)
        self.store_path = str(tmp / f"store-{next(_pins)}")
        # No interfaces: a Sing-Box-only node.
        text = ((f"interfaces: {json.dumps(list(interfaces))}\n" if interfaces else "") +
                f"collect: {{ interval: {interval} }}\n"
                f"bpf: {{ max_clients: {max_clients}, pin_path: {self.pin_path} }}\n"
                f"storage: {{ path: {self.store_path} }}\n")
        if "openvpn" in config:  # JSON is YAML
            text += f"openvpn: {json.dumps(config.pop('openvpn'))}\n"
        if "singbox" in config:
            text += f"singbox: {json.dumps(config.pop('singbox'))}\n"
        assert not config, f"unknown agent settings {config}"
        self.config_path.write_text(text)

    def start(self, wait_attached: str | None = None, wrapper=None):
        """wrapper: a command the daemon runs under (valgrind ...); default self.wrapper."""
        wrapper = self.wrapper if wrapper is None else wrapper
        self.proc = self.ns.popen([*wrapper, self.vpnmeterd, "--config", self.config_path], log=str(self.log_path),
                                  keep_mounts=True)
        if wait_attached:
            wait_for(lambda: f"metering {wait_attached}" in self.log() or self.proc.poll() is not None,
                     10, f"vpnmeterd to attach to {wait_attached}")
            assert self.proc.poll() is None, f"vpnmeterd exited:\n{self.log()}"
        return self

    def stop(self, sig: str = "TERM"):
        if self.proc and self.proc.poll() is None:
            if sig == "KILL":
                self.proc.kill()
                self.proc.wait(10)
            else:
                self.ns.kill(self.proc, timeout=10)
        self.proc = None

    def log(self) -> str:
        # User names need not be UTF-8, and the log quotes them.
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def clients(self) -> dict:
        out = self.ns.run([self.vpnmeter, "clients", "--json", "--pin-path", self.pin_path], keep_mounts=True)
        return json.loads(out.stdout)

    def interface(self, name: str) -> dict | None:
        return next((i for i in self.clients()["interfaces"] if i["name"] == name), None)

    def detach(self) -> str:
        return self.ns.run([self.vpnmeterd, "--detach", "--pin-path", self.pin_path], keep_mounts=True).stdout

    def close(self):
        self.stop()
        if os.path.exists(self.pin_path):
            subprocess.run(self.ns.nsenter_argv() + [str(self.vpnmeterd), "--detach", "--pin-path", self.pin_path],
                           capture_output=True, timeout=30)
            subprocess.run(["rm", "-rf", self.pin_path], check=False)


@pytest.fixture
def namespaces():
    """Factory for namespaces, all removed after the test, pass or fail."""
    made = []

    def make(role: str) -> netns.Namespace:
        made.append(netns.Namespace(role))
        return made[-1]

    yield make
    for ns in reversed(made):
        ns.close()


@pytest.fixture
def agents(tmp_path, request):
    """Factory for agents; each is stopped and detached after the test. The
    agent's log is printed when the test failed."""
    made = []

    def make(ns, interfaces, **config) -> Agent:
        made.append(Agent(ns, tmp_path, interfaces, **config))
        return made[-1]

    yield make
    for agent in made:
        if getattr(request.node, "failed", False):
            print(f"--- vpnmeterd log ({agent.pin_path}) ---\n{agent.log()}")
        agent.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        item.failed = True


def sum_clients(report: dict, interface: str) -> dict:
    """Per-direction sums over the clients of one interface."""
    total = {"upload_bytes": 0, "download_bytes": 0, "upload_packets": 0, "download_packets": 0}
    for client in report["clients"]:
        if client["interface"] == interface:
            for key in total:
                total[key] += client[key]
    return total


def assert_device_totals_exact(agent: Agent, ns: netns.Namespace, ifname: str):
    """sum(clients) + unattributed == our totals == the device's counters."""
    report = agent.clients()
    iface = next((i for i in report["interfaces"] if i["name"] == ifname), None)
    assert iface, f"{ifname} missing from vpnmeter clients: {report}"
    clients = sum_clients(report, ifname)
    device = ns.link_stats(ifname)
    assert clients["upload_bytes"] + iface["unattributed_upload_bytes"] == iface["upload_bytes"]
    assert clients["download_bytes"] + iface["unattributed_download_bytes"] == iface["download_bytes"]
    assert (iface["upload_bytes"], iface["upload_packets"]) == (device["rx_bytes"], device["rx_packets"])
    assert (iface["download_bytes"], iface["download_packets"]) == (device["tx_bytes"], device["tx_packets"])
    return iface, clients, device
