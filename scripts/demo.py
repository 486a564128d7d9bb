#!/usr/bin/python3
"""vpnmeter live demo.

Builds a lab in network namespaces: an OpenVPN server (tun0, 10.8.0.0/24 and
fd00:8::/64) and three clients, alice, bob and carol. Starts vpnmeterd on the
server's tun0 and keeps iperf3 traffic going for every client (alternating
upload and download; alice and bob over IPv4, carol over IPv6). Every 2 s it
shows `vpnmeter clients` plus which VPN address belongs to which client.

Stops on Ctrl-C (or after --seconds N), then stops the traffic and the agent,
runs `vpnmeterd --detach` and removes every namespace and process it started.
With --seconds it exits 0 only if at least two clients' upload and download
counters grew between the first and the last sample. Needs root and a build
(./scripts/demo does both); VPNMETER_BUILD_DIR selects the build (default build).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import pathlib
import shutil
import signal
import sys
import time
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.lab import (LabError, OpenVpnLab, log_tail, start_server,  # noqa: E402
                       stop_processes, sweep_stale)

BUILD = ROOT / os.environ.get("VPNMETER_BUILD_DIR", "build")  # absolute wins
VPNMETERD, VPNMETER = BUILD / "agent" / "vpnmeterd", BUILD / "agent" / "vpnmeter"
CLIENTS = ("alice", "bob", "carol")
IPV6_CLIENTS = {"carol"}
BASE_PORT = 5201      # one iperf3 server per client: 5201, 5202, 5203
TEST_SECONDS = 3      # length of each iperf3 run before switching direction
REFRESH = 2.0


@dataclass
class Traffic:
    name: str
    port: int
    proc: object = None
    reverse: bool = True  # flipped before each run: the first is an upload
    runs: int = 0
    failed: int = 0


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def rel(path: pathlib.Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


class Demo:
    def __init__(self, args):
        self.args = args
        self.pin = f"/sys/fs/bpf/vpnmeter-demo-{os.getpid()}"
        self.lab = OpenVpnLab(CLIENTS, management_port=7505, status_version=3)
        self.agent = None
        self.servers = []
        self.traffic = [Traffic(n, BASE_PORT + i) for i, n in enumerate(CLIENTS)]
        self.samples = []  # per-client (upload, download) dicts, for the verdict

    def setup(self):
        lab = self.lab
        print("starting the lab: OpenVPN server + alice, bob, carol ...", flush=True)
        lab.start()
        # The lab's own SIGINT/SIGTERM handler tears everything down at once;
        # ours stops in order (traffic, agent, detach, lab) in main's finally.
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, _interrupt)
        lab.wait_connected(30)
        ns = lab.server_ns
        cfg, log = f"{lab.workdir}/vpnmeter.yaml", f"{lab.workdir}/vpnmeterd.log"
        with open(cfg, "w") as f:
            f.write("interfaces: [tun0]\n"
                    "collect: { interval: 1s }\n"
                    f"bpf: {{ pin_path: {self.pin} }}\n"
                    f"storage: {{ path: {lab.workdir}/store }}\n"
                    'openvpn: [{ name: udp1194, interface: tun0, management: "127.0.0.1:7505" }]\n')
        self.agent = ns.popen([VPNMETERD, "--config", cfg], log=log, keep_mounts=True)
        deadline = time.monotonic() + 10
        while "metering tun0" not in pathlib.Path(log).read_text(errors="replace"):
            if self.agent.poll() is not None:
                raise LabError(f"vpnmeterd exited ({self.agent.returncode}):\n{log_tail(log)}")
            if time.monotonic() > deadline:
                raise LabError(f"vpnmeterd did not attach to tun0 within 10 s:\n{log_tail(log)}")
            time.sleep(0.1)
        for t in self.traffic:
            self.servers.append(start_server(ns, t.port))

    def pump(self):
        """Start the next iperf3 run for every client whose last one ended."""
        lab = self.lab
        for t in self.traffic:
            c = lab[t.name]
            if t.proc is not None:
                if t.proc.poll() is None:
                    continue
                t.runs += 1
                t.failed += t.proc.returncode != 0
                c.ns.kill(t.proc)  # reaped already; forget it
            t.reverse = not t.reverse
            server = lab.server_vpn_ipv6 if t.name in IPV6_CLIENTS else lab.server_vpn_ipv4
            cmd = ["iperf3", "-c", server, "-p", t.port, "-t", TEST_SECONDS,
                   "-b", self.args.rate, "--connect-timeout", "3000"]
            t.proc = c.ns.popen(cmd + (["-R"] if t.reverse else []),
                                log=f"{lab.workdir}/iperf3-{t.name}.log")

    def vpnmeter(self, *args):
        return self.lab.server_ns.run([VPNMETER, "clients", "--pin-path", self.pin, *args],
                                      keep_mounts=True, check=False, timeout=10)

    def sessions(self):
        """The agent's view of OpenVPN's sessions, from its store."""
        return self.lab.server_ns.run([VPNMETER, "sessions", "--active", "--store", f"{self.lab.workdir}/store"],
                                      keep_mounts=True, check=False, timeout=10)

    def sample(self):
        """{client: (upload, download)} summed over its VPN addresses on tun0."""
        res = self.vpnmeter("--json")
        try:
            report = json.loads(res.stdout)
        except json.JSONDecodeError:
            return None
        owner = {}
        for name in CLIENTS:
            for addr in (self.lab[name].ipv4, self.lab[name].ipv6):
                if addr:
                    owner[ipaddress.ip_address(addr)] = name
        usage = {name: (0, 0) for name in CLIENTS}
        for c in report.get("clients", []):
            name = owner.get(ipaddress.ip_address(c["address"]))
            if c["interface"] == "tun0" and name:
                up, down = usage[name]
                usage[name] = (up + c["upload_bytes"], down + c["download_bytes"])
        return usage

    def show(self, elapsed: float):
        table = self.vpnmeter()
        usage = self.sample()
        if usage is not None:
            self.samples.append(usage)
        ns = self.lab.server_ns
        lines = [
            f"vpnmeter demo - {elapsed:5.0f} s - Ctrl-C to stop - pin path {self.pin}",
            f"same view: nsenter --net={ns.path} {rel(VPNMETER)} clients --pin-path {self.pin}",
            "",
            (table.stdout or table.stderr).rstrip(),
            "",
            f"sessions (from the store: {rel(VPNMETER)} sessions --active --store ...):",
            (self.sessions().stdout or "").rstrip(),
            "",
            "iperf3 per client (up/down sum both VPN addresses):",
        ]
        for t in self.traffic:
            c = self.lab[t.name]
            up, down = (usage or {}).get(t.name, (0, 0))
            via = "IPv6" if t.name in IPV6_CLIENTS else "IPv4"
            way = "download" if t.reverse else "upload"
            failed = f", {t.failed} failed" if t.failed else ""
            lines.append(f"  {t.name:6} {c.ipv4:10} {c.ipv6:14} up {human(up):>9}  down"
                         f" {human(down):>9}   iperf3 over {via}: {way:8} (run {t.runs + 1}{failed})")
        if sys.stdout.isatty():
            sys.stdout.write("\033[H\033[2J")
        print("\n".join(lines) + ("" if sys.stdout.isatty() else "\n"), flush=True)

    def run(self):
        self.setup()
        if self.args.seconds is None and not sys.stdout.isatty():
            print("stdout is not a terminal: running until SIGINT/SIGTERM (or use --seconds N)")
        start = next_show = time.monotonic()
        while self.args.seconds is None or time.monotonic() - start < self.args.seconds:
            self.pump()
            if time.monotonic() >= next_show:
                self.show(time.monotonic() - start)
                next_show += REFRESH
            time.sleep(0.2)
        self.show(time.monotonic() - start)

    def teardown(self):
        for s in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut this short
            signal.signal(s, signal.SIG_IGN)
        print("stopping: traffic, agent, detach, lab ...", flush=True)
        stop_processes([t.proc for t in self.traffic if t.proc] + self.servers)
        ns = self.lab.server_ns
        if self.agent is not None and ns is not None and not ns.closed:
            ns.kill(self.agent, timeout=10)  # SIGTERM by pid: counting goes on in the kernel
        if os.path.exists(self.pin) and ns is not None and not ns.closed:
            res = ns.run([VPNMETERD, "--detach", "--pin-path", self.pin], keep_mounts=True,
                         check=False, timeout=30)
            if res.returncode != 0:
                print(f"vpnmeterd --detach failed ({res.returncode}): {res.stderr.strip()}")
        self.lab.close()
        if os.path.exists(self.pin):
            print(f"removing leftover {self.pin}")
            shutil.rmtree(self.pin, ignore_errors=True)

    def verdict(self) -> str | None:
        """None if usage grew for at least two clients, else the reason."""
        if len(self.samples) < 2:
            return f"only {len(self.samples)} usable sample(s) of vpnmeter clients --json"
        first, last = self.samples[0], self.samples[-1]
        grew = []
        print("per-client usage, first -> last sample:")
        for name in CLIENTS:
            (u0, d0), (u1, d1) = first[name], last[name]
            ok = u1 > u0 and d1 > d0
            grew += [name] if ok else []
            print(f"  {name:6} upload {human(u0):>9} -> {human(u1):>9}   download"
                  f" {human(d0):>9} -> {human(d1):>9}   {'grew' if ok else 'DID NOT GROW'}")
        if len(grew) < 2:
            return f"upload and download grew for {len(grew)} of 3 clients ({grew}), need 2"
        return None


_signal = signal.SIGINT


def _interrupt(signum, frame):
    global _signal
    _signal = signum
    raise KeyboardInterrupt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, metavar="N",
                   help="run N seconds (no terminal needed), then check that usage grew")
    p.add_argument("--rate", default="20M", help="iperf3 -b per client (default 20M)")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("demo: run as root: it creates network namespaces and loads BPF programs")
    for exe in (VPNMETERD, VPNMETER):
        if not os.access(exe, os.X_OK):
            sys.exit(f"demo: {exe} not found: run ./scripts/build (or ./scripts/demo)")
    sweep_stale()  # namespaces of killed earlier runs
    demo, rc, started = Demo(args), 0, time.monotonic()
    try:
        demo.run()
    except KeyboardInterrupt:
        print(f"\n{signal.Signals(_signal).name}: stopping")
        rc = 128 + _signal
    except LabError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        rc = 1
    finally:
        demo.teardown()
    print(f"done after {time.monotonic() - started:.0f} s; lab removed")
    if rc == 1:
        return rc
    reason = demo.verdict()
    if args.seconds is None:
        return rc
    if reason:
        print(f"demo FAILED: {reason}", file=sys.stderr)
        return 1
    print("demo OK: per-client upload and download grew")
    return rc


if __name__ == "__main__":
    sys.exit(main())
