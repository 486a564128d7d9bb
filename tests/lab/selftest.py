"""Self-check of the lab: real tunnels, real traffic, nothing left behind.

    /usr/bin/python3 -m tests.lab.selftest            # full check (root)
    /usr/bin/python3 -m tests.lab.selftest --signal-test
        # also: a child run is killed with SIGTERM and SIGINT mid-way and
        # must leave no namespace or process behind

Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

from .netns import LabError, own_namespaces, sweep_stale
from .openvpn import OpenVpnLab
from .traffic import run_client, start_server

CLIENTS = ["alice", "bob", "carol"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Failure(Exception):
    pass


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise Failure(msg)


def leftovers(pid: int) -> list[str]:
    """Namespaces and processes that a run by pid left behind."""
    left = own_namespaces(pid)
    tag = f"vpnm-lab-{pid}-".encode()
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if tag in f.read():
                    left.append(f"process {p}")
        except OSError:
            pass
    return left


def traffic(lab: OpenVpnLab, seconds: float) -> None:
    """iperf3 both ways: alice over IPv4, bob over IPv6; check tun0 counters."""
    before = lab.server_ns.link_stats("tun0")
    start_server(lab.server_ns)
    up = down = 0
    for cn, server in (("alice", lab.server_vpn_ipv4), ("bob", lab.server_vpn_ipv6)):
        for reverse in (False, True):
            r = run_client(lab[cn].ns, server, seconds=seconds, reverse=reverse)
            way = "download" if reverse else "upload"
            print(f"  {cn:6} {way:8} via {server:10} sent {r.sent_bytes:>11} B"
                  f"  received {r.received_bytes:>11} B"
                  f"  {r.bits_per_second / 1e6:7.1f} Mbit/s")
            check(r.sent_bytes > 0 and r.received_bytes > 0,
                  f"{cn} {way}: no bytes moved")
            if reverse:
                down += r.received_bytes
            else:
                up += r.received_bytes
    after = lab.server_ns.link_stats("tun0")
    rx, tx = (after["rx_bytes"] - before["rx_bytes"],
              after["tx_bytes"] - before["tx_bytes"])
    print(f"  server tun0: rx +{rx} B (uploads {up} B), "
          f"tx +{tx} B (downloads {down} B)")
    # Every payload byte crossed tun0 once, plus IP/TCP headers.
    check(rx >= up > 0, f"server tun0 rx grew by {rx} < uploaded {up}")
    check(tx >= down > 0, f"server tun0 tx grew by {tx} < downloaded {down}")


def lifecycle(lab: OpenVpnLab) -> None:
    """disconnect/connect one client, restart the server."""
    lab.disconnect("carol")
    check(lab["carol"].ns.addresses("tun0") == (None, None),
          "carol still has tun0 after disconnect")
    lab.connect("carol")
    lab.wait_connected(30, ["carol"])
    old = lab.server_ns.run(["cat", "/sys/class/net/tun0/ifindex"]).stdout
    lab.restart_server(timeout=30)
    new = lab.server_ns.run(["cat", "/sys/class/net/tun0/ifindex"]).stdout
    check(old != new, "server tun0 was not recreated by restart_server")
    print(f"  disconnect/connect carol, restart server: ok "
          f"(tun0 ifindex {old.strip()} -> {new.strip()})")


def run(args) -> None:
    lab = OpenVpnLab(CLIENTS, proto=args.proto,
                     status_version=args.status_version)
    try:
        lab.start()
        t = time.monotonic()
        clients = lab.wait_connected(30)
        print(f"lab up ({time.monotonic() - t:.1f}s to connect), "
              f"server ns {lab.server_ns.name}, proto {args.proto}", flush=True)
        for cn, c in clients.items():
            print(f"  {cn:6} {c.ipv4:10} {c.ipv6:16} {c.ns.name}")
        if args.hold:
            time.sleep(args.hold)  # for --signal-test: get killed here
        traffic(lab, args.seconds)
        if not args.no_lifecycle:
            lifecycle(lab)
        check(os.path.getsize(lab.status_path) > 0, "status file empty")
    finally:
        lab.close()
    left = leftovers(os.getpid())
    check(not left, f"left behind after close(): {left}")
    check(not os.path.exists(lab.workdir), "temp dir not removed")


def signal_test() -> None:
    """Kill a child selftest mid-run; it must clean up after itself."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.lab.selftest", "--hold", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=REPO)
        watchdog = threading.Timer(90, child.kill)  # readline must not hang
        watchdog.start()
        try:
            line = "-"
            while line and not line.startswith("lab up"):
                line = child.stdout.readline()
            check(line.startswith("lab up"), "child exited before lab was up")
            check(leftovers(child.pid) != [], "child lab not visible")
            child.send_signal(sig)
            rc = child.wait(timeout=30)
        finally:
            watchdog.cancel()
            if child.poll() is None:
                child.kill()
                child.wait()
        left = leftovers(child.pid)
        print(f"  {sig.name} mid-run: child exit {rc}, leftovers {left}")
        check(not left, f"{sig.name}: child left {left}")
        check(rc != 0, f"{sig.name}: child exited 0")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proto", default="udp", help="udp or tcp-server")
    ap.add_argument("--status-version", type=int, default=2, choices=(1, 2, 3))
    ap.add_argument("--seconds", type=float, default=2)
    ap.add_argument("--no-lifecycle", action="store_true")
    ap.add_argument("--signal-test", action="store_true")
    ap.add_argument("--hold", type=float, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("selftest: needs root (network namespaces)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    stale = sweep_stale()
    if stale:
        print(f"removed leftovers of dead runs: {stale}")
    try:
        run(args)
        if args.signal_test:
            signal_test()
    except (Failure, LabError) as exc:
        print(f"SELFTEST FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"selftest ok in {time.monotonic() - t0:.1f}s, nothing left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
