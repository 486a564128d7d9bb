#!/usr/bin/python3
"""The real vpnmeterd's memory and cycle time with N clients in its map.

Starts the built vpnmeterd (tests/e2e's Agent) in a fresh namespace with a
private pin path and bpf.max_clients = N, attached to a veth there.
Then `vpnmeter_bench_cycle --fill-pinned` sets N clients in its map (on
ifindex 1, the namespace's lo, which the daemon does not meter: unattributed
traffic, no sessions) and moves all of them a few times; after each move the
daemon reads, reconciles and commits all N. Reports the daemon's VmRSS and
VmHWM (from /proc/<pid>/status) and its own collection-duration histogram
(vpnmeter_collection_duration_seconds from /metrics). See
docs/benchmarks.md.

What it does not include: sessions. Without an identity source every entry is
an unattributed address, so the daemon holds N address checkpoints but no
session records; bench/cycle_bench.cpp measures the session side.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from tests.lab import netns  # noqa: E402
from conftest import Agent, BUILD  # noqa: E402

FILL = BUILD / "bench" / "vpnmeter_bench_cycle"


def status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0]) / 1024  # MiB
    return out


def cycles(agent: Agent) -> tuple[int, float]:
    """(count, sum seconds) of the daemon's collection-duration histogram."""
    text = agent.ns.run(["curl", "-s", "http://127.0.0.1:9477/metrics"], check=False).stdout
    count = re.search(r"^vpnmeter_collection_duration_seconds_count (\S+)", text, re.M)
    total = re.search(r"^vpnmeter_collection_duration_seconds_sum (\S+)", text, re.M)
    return (int(float(count[1])), float(total[1])) if count and total else (0, 0.0)


def entries(agent: Agent) -> str:
    text = agent.ns.run(["curl", "-s", "http://127.0.0.1:9477/metrics"], check=False).stdout
    m = re.search(r'^vpnmeter_map_entries\{map="clients"\} (\S+)', text, re.M)
    return m[1] if m else "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1_000_000)
    ap.add_argument("--moves", type=int, default=3, help="times every client moves (default 3)")
    args = ap.parse_args()
    if not FILL.exists():
        ap.error(f"{FILL} is not built")

    with tempfile.TemporaryDirectory(prefix=f"vpnm-lab-{os.getpid()}-mem-") as tmpdir:
        ns = netns.Namespace("bench-mem")
        agent = None
        try:
            ns.ip("link", "add", "vpn0", "type", "veth", "peer", "name", "vpn1")  # no dummy module here
            ns.ip("link", "set", "vpn0", "up")
            agent = Agent(ns, pathlib.Path(tmpdir), ["vpn0"], interval="1s", max_clients=args.clients)
            netns.track(agent)
            agent.start(wait_attached="vpn0")
            pid = agent.proc.pid
            print(f"vpnmeterd pid {pid}, max_clients {args.clients}: {status(pid)} at start", flush=True)
            for move in range(1, args.moves + 1):
                t = time.monotonic()
                subprocess.run([str(FILL), "--fill-pinned", agent.pin_path, "--clients", str(args.clients),
                                "--moves", str(move)], check=True, timeout=300)
                n0, sum0 = cycles(agent)
                # Two cycles later, the whole move is read and committed.
                deadline = time.monotonic() + 600
                while cycles(agent)[0] < n0 + 2 and time.monotonic() < deadline:
                    time.sleep(0.5)
                n, total = cycles(agent)
                if n < n0 + 2 or entries(agent) != str(args.clients):
                    print(f"error: after move {move} the daemon shows {entries(agent)} map entries and ran"
                          f" {n - n0} cycles; expected {args.clients} entries and 2 cycles", file=sys.stderr)
                    return 1
                print(f"move {move}: filled and collected in {time.monotonic() - t:.1f} s; its {n - n0} cycles took"
                      f" {(total - sum0) * 1000:.0f} ms together; map entries {entries(agent)}; {status(pid)}",
                      flush=True)
            text = agent.ns.run(["curl", "-s", "http://127.0.0.1:9477/metrics"]).stdout
            print("\n".join(l for l in text.splitlines() if l.startswith("vpnmeter_collection_duration_seconds")))
            print(f"vpnmeterd at the end: {status(pid)}")
        finally:
            if agent:
                agent.close()
                netns.untrack(agent)
            ns.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
