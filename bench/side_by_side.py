#!/usr/bin/python3
"""Side by side: what per-client accounting costs on a real datapath.

Two namespaces joined by a veth pair; iperf3 from the client namespace to
the server namespace, TCP and UDP with 64-byte payloads. On the server's
veth, one case at a time:

  none      nothing counts
  vpnmeter  the built vpnmeterd attached to the veth (tests/e2e's Agent)
  pmacct    pmacctd -i eth0 -P memory -c src_host,dst_host (libpcap)
  nft       a netdev table with per-address counters: dynamic sets with a
            counter per element, ingress by source, egress by destination

All cases run in ONE invocation, interleaved: every round runs each case
once, in an order rotated from round to round, so machine noise (the host
is shared) hits all of them alike. For each case: throughput, packets/s,
CPU seconds per GB (from /proc/stat, all CPUs), and each tool's counts
against the veth's own link counters. See docs/benchmarks.md.

Needs root. Every process started is stopped by pid, and the namespaces
and pins are removed, also on failure and Ctrl-C (tests/lab/netns.py).
Exits non-zero on errors and when a tool that must count exactly
(vpnmeter, nft) does not; never because a number is slow.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from tests.lab import netns, traffic  # noqa: E402
from conftest import Agent  # noqa: E402  (the live tests' vpnmeterd wrapper)

SERVER, CLIENT = "10.77.0.1", "10.77.0.2"
DEV = "eth0"
ETH_HLEN = 14
CASES = ("none", "vpnmeter", "pmacct", "nft")
CPU_BUSY = (0, 1, 2, 5, 6)  # user nice system irq softirq (/proc/stat columns)
NFT_RULES = f"""table netdev vpnbench {{
  set up {{ type ipv4_addr; size 65536; flags dynamic; counter; }}
  set down {{ type ipv4_addr; size 65536; flags dynamic; counter; }}
  chain in {{ type filter hook ingress device "{DEV}" priority 0; policy accept; update @up {{ ip saddr }}; }}
  chain out {{ type filter hook egress device "{DEV}" priority 0; policy accept; update @down {{ ip daddr }}; }}
}}
"""


def cpu_jiffies() -> int:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return sum(int(fields[i]) for i in CPU_BUSY)


# ---------------------------------------------------------------- the tools
# Each: start() on the server namespace's veth, counts() -> the client's
# {up,down}_{packets,bytes} so far, stop(). `header` is what the tool adds
# per packet to the IP length in each direction, so its bytes can be
# compared with the link's at L3.

class NoTool:
    name = "none"
    header = {"up": 0, "down": 0}

    def __init__(self, ns, tmp):
        self.ns = ns

    def start(self):
        pass

    def counts(self):
        return None

    def stop(self):
        pass

    def close(self):  # for netns.track(): cleanup on Ctrl-C
        self.stop()


class Vpnmeter(NoTool):
    name = "vpnmeter"
    # tc sees the frame the device counts: the Ethernet header included.
    header = {"up": ETH_HLEN, "down": ETH_HLEN}

    def __init__(self, ns, tmp):
        super().__init__(ns, tmp)
        # A directory per run: Agent.start() waits for "metering eth0" in its
        # log, which must not be an earlier run's.
        run_dir = pathlib.Path(tempfile.mkdtemp(prefix="vpnmeter-", dir=tmp))
        # The default production interval; the daemon's cycles cost CPU too.
        self.agent = Agent(ns, run_dir, [DEV], interval="1s")

    def start(self):
        self.agent.start(wait_attached=DEV)

    def counts(self):
        for c in self.agent.clients()["clients"]:
            if c["interface"] == DEV and c["address"] == CLIENT:
                return {"up_packets": c["upload_packets"], "up_bytes": c["upload_bytes"],
                        "down_packets": c["download_packets"], "down_bytes": c["download_bytes"]}
        return {"up_packets": 0, "up_bytes": 0, "down_packets": 0, "down_bytes": 0}

    def stop(self):
        self.agent.close()


class Pmacct(NoTool):
    name = "pmacct"
    header = {"up": 0, "down": 0}  # the IP header's total length

    def __init__(self, ns, tmp):
        super().__init__(ns, tmp)
        self.pipe = str(tmp / "pmacct.pipe")
        self.log = tmp / "pmacctd.log"
        self.proc = None
        self.capture = None  # (received, dropped) by libpcap, from its exit log
        self.missing_data = False

    def start(self):
        self.log.write_text("")
        self.proc = self.ns.popen(["pmacctd", "-i", DEV, "-P", "memory", "-c", "src_host,dst_host",
                                   "-p", self.pipe], log=str(self.log))
        deadline = time.monotonic() + 10
        while self._query() is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise netns.LabError(f"pmacctd did not answer on {self.pipe}:\n{self.log.read_text()}")
            time.sleep(0.1)

    def _query(self):
        res = self.ns.run(["pmacct", "-s", "-p", self.pipe, "-O", "json"], check=False)
        if res.returncode != 0:
            return None
        return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]

    def counts(self):
        out = {"up_packets": 0, "up_bytes": 0, "down_packets": 0, "down_bytes": 0}
        for row in self._query() or []:
            d = "up" if row["ip_src"] == CLIENT else "down" if row["ip_dst"] == CLIENT else None
            if d:
                out[f"{d}_packets"] += row["packets"]
                out[f"{d}_bytes"] += row["bytes"]
        return out

    def stop(self):
        if self.proc:
            self.ns.kill(self.proc, timeout=5)
            self.proc = None
            m = re.search(r"received_packets=(\d+) dropped_packets=(\d+)", self.log.read_text())
            self.capture = (int(m[1]), int(m[2])) if m else None
        self.missing_data = self.log.exists() and "Missing data detected" in self.log.read_text()


class Nft(NoTool):
    name = "nft"
    # Ingress runs after the Ethernet header is pulled, egress before it is sent.
    header = {"up": 0, "down": ETH_HLEN}

    def start(self):
        self.ns.run(["nft", "-f", "-"], input=NFT_RULES)

    def _set(self, name):
        out = json.loads(self.ns.run(["nft", "-j", "list", "set", "netdev", "vpnbench", name]).stdout)
        for item in out["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                e = elem.get("elem", {})
                if e.get("val") == CLIENT:
                    return e["counter"]["packets"], e["counter"]["bytes"]
        return 0, 0

    def counts(self):
        up, down = self._set("up"), self._set("down")
        return {"up_packets": up[0], "up_bytes": up[1], "down_packets": down[0], "down_bytes": down[1]}

    def stop(self):
        self.ns.run(["nft", "delete", "table", "netdev", "vpnbench"], check=False)


TOOLS = {"none": NoTool, "vpnmeter": Vpnmeter, "pmacct": Pmacct, "nft": Nft}


# ---------------------------------------------------------------- the lab

def make_lab(offloads: bool):
    srv, cli = netns.Namespace("bench-srv"), netns.Namespace("bench-cli")
    netns.veth_pair(cli, srv, f"{CLIENT}/24", f"{SERVER}/24", name_a=DEV, name_b=DEV)
    macs = {}
    for ns in (srv, cli):
        # Only the measured IPv4 traffic on the link: no IPv6 (router and
        # listener messages), no ARP (permanent neighbours).
        ns.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{DEV}.disable_ipv6=1"])
        macs[ns.name] = json.loads(ns.ip("-j", "link", "show", DEV).stdout)[0]["address"]
        if not offloads:
            # One packet per wire-sized segment, as on a tun device: every
            # tool sees the same packets, and packets/s means packets.
            ns.run(["ethtool", "-K", DEV, "tso", "off", "gso", "off", "gro", "off"])
    srv.ip("neigh", "replace", CLIENT, "lladdr", macs[cli.name], "dev", DEV, "nud", "permanent")
    cli.ip("neigh", "replace", SERVER, "lladdr", macs[srv.name], "dev", DEV, "nud", "permanent")
    return srv, cli


def measure(srv, cli, tool, proto: str, seconds: float) -> dict:
    extra = ["-u", "-l", "64", "-b", "0"] if proto == "udp" else []
    before_link, before_tool, before_cpu = srv.link_stats(DEV), tool.counts(), cpu_jiffies()
    res = traffic.run_client(cli, SERVER, seconds=seconds, extra=extra)
    cpu_s = (cpu_jiffies() - before_cpu) / os.sysconf("SC_CLK_TCK")
    # The tool reads after the test's last packet: settle a moment so that
    # pmacctd's plugin has drained its pipe.
    time.sleep(0.5 if tool.name == "pmacct" else 0)
    after_link, after_tool = srv.link_stats(DEV), tool.counts()
    link = {"up_packets": after_link["rx_packets"] - before_link["rx_packets"],
            "up_bytes": after_link["rx_bytes"] - before_link["rx_bytes"],
            "down_packets": after_link["tx_packets"] - before_link["tx_packets"],
            "down_bytes": after_link["tx_bytes"] - before_link["tx_bytes"]}
    counted = None if after_tool is None else {k: after_tool[k] - before_tool[k] for k in after_tool}
    end = res.raw["end"]
    payload = int(end["sum_received"]["bytes"])
    # Traffic: what crossed the veth, at the IP level, both directions.
    traffic_bytes = l3_bytes(link, "up", ETH_HLEN) + l3_bytes(link, "down", ETH_HLEN)
    out = {"tool": tool.name, "proto": proto, "seconds": res.seconds, "payload": payload,
           "goodput": payload * 8 / res.seconds, "bps": l3_bytes(link, "up", ETH_HLEN) * 8 / res.seconds,
           "pps": link["up_packets"] / res.seconds,
           "cpu_s_per_gb": cpu_s / (traffic_bytes / 1e9) if traffic_bytes else float("nan"),
           "link": link, "counted": counted}
    if proto == "udp":
        s = end["sum"]
        out["iperf_datagrams"] = int(s["packets"]) - int(s["lost_packets"])
    return out


def l3_bytes(counts: dict, direction: str, header: int) -> int:
    return counts[f"{direction}_bytes"] - header * counts[f"{direction}_packets"]


# ---------------------------------------------------------------- report

def report(results: list[dict], pmacct_capture: list) -> list[str]:
    """Prints the tables; returns the accuracy problems of exact tools."""
    problems = []
    for proto in ("tcp", "udp"):
        rows = [r for r in results if r["proto"] == proto]
        base = [r for r in rows if r["tool"] == "none"]
        base_bps = statistics.median(r["bps"] for r in base) if base else None
        base_cpu = statistics.median(r["cpu_s_per_gb"] for r in base) if base else None
        title = "TCP" if proto == "tcp" else "UDP, 64-byte payloads"
        print(f"\n{title} (medians over {len(base) or '?'} rounds; accuracy over all rounds)")
        print(f"{'case':<9} {'Mbit/s':>9} {'vs none':>8} {'goodput':>8} {'kpps':>8} {'CPU s/GB':>9} {'vs none':>8}"
              f" {'pkts up':>8} {'pkts down':>9} {'bytes up':>9} {'bytes down':>10}")
        for name in CASES:
            mine = [r for r in rows if r["tool"] == name]
            if not mine:
                continue
            bps = statistics.median(r["bps"] for r in mine)
            goodput = statistics.median(r["goodput"] for r in mine)
            pps = statistics.median(r["pps"] for r in mine)
            cpu = statistics.median(r["cpu_s_per_gb"] for r in mine)
            acc = ["-"] * 4
            if mine[0]["counted"] is not None:
                header = TOOLS[name].header
                tot = {k: 0 for k in ("cp_up", "cp_down", "lp_up", "lp_down", "cb_up", "cb_down", "lb_up", "lb_down")}
                for r in mine:
                    for d in ("up", "down"):
                        tot[f"cp_{d}"] += r["counted"][f"{d}_packets"]
                        tot[f"lp_{d}"] += r["link"][f"{d}_packets"]
                        tot[f"cb_{d}"] += l3_bytes(r["counted"], d, header[d])
                        tot[f"lb_{d}"] += l3_bytes(r["link"], d, ETH_HLEN)
                ratio = [tot["cp_up"] / tot["lp_up"] if tot["lp_up"] else float("nan"),
                         tot["cp_down"] / tot["lp_down"] if tot["lp_down"] else float("nan"),
                         tot["cb_up"] / tot["lb_up"] if tot["lb_up"] else float("nan"),
                         tot["cb_down"] / tot["lb_down"] if tot["lb_down"] else float("nan")]
                acc = [f"{x:.4f}" for x in ratio]
                if name in ("vpnmeter", "nft") and any(x != 1 for x in ratio):
                    problems.append(f"{name} {proto}: counted/link = {acc}, totals {tot}")
            print(f"{name:<9} {bps / 1e6:>9.1f} {bps / base_bps if base_bps else 0:>8.2f} {goodput / 1e6:>8.1f}"
                  f" {pps / 1e3:>8.1f}"
                  f" {cpu:>9.2f} {cpu / base_cpu if base_cpu else 0:>8.2f}"
                  f" {acc[0]:>8} {acc[1]:>9} {acc[2]:>9} {acc[3]:>10}")
        if proto == "udp":
            sent = sum(r.get("iperf_datagrams", 0) for r in rows)
            link_up = sum(r["link"]["up_packets"] for r in rows)
            print(f"iperf3 received {sent} datagrams in all UDP runs; the link's upload packets were {link_up}"
                  f" (the rest: the test's TCP control connection, and datagrams the server's socket dropped)")
    if pmacct_capture:
        rec = sum(c[0] for c in pmacct_capture if c)
        drop = sum(c[1] for c in pmacct_capture if c)
        print(f"\npmacctd's libpcap: received {rec} packets, dropped {drop} (summed over its runs, from its exit log)")
    print("\nMbit/s, kpps: the upload (client -> server) IP traffic on the server's veth; goodput: iperf3's"
          "\npayload Mbit/s received (UDP: the server's socket drops much of a 64-byte flood).")
    print("\nAccuracy: the tool's count for the client address / the server veth's link counters over the same"
          "\ninterval (rx = upload, tx = download), packets and IP-level bytes (each tool's own per-packet header"
          "\nbytes removed: vpnmeter and nft egress count the Ethernet header, pmacct and nft ingress do not)."
          "\nCPU s/GB: busy time of all CPUs (user+nice+system+irq+softirq, /proc/stat) during the iperf3 run,"
          "\nper GB of IP traffic on the veth (both directions); it includes everything else running on the"
          "\nmachine, so compare cases of one run, not runs.")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10, help="per iperf3 run (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all cases (default 3)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"subset of {','.join(CASES)}")
    ap.add_argument("--protos", default="tcp,udp", help="tcp, udp or both")
    ap.add_argument("--offloads", action="store_true",
                    help="leave the veth's TSO/GSO/GRO on (default: off, one packet per segment)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run for CI: 1 round of 2 s per case unless given")
    args = ap.parse_args()
    if args.quick:
        if "--seconds" not in sys.argv:
            args.seconds = 2
        if "--rounds" not in sys.argv:
            args.rounds = 1
    cases = [c for c in args.cases.split(",") if c]
    protos = [p for p in args.protos.split(",") if p]
    if not set(cases) <= set(CASES) or not set(protos) <= {"tcp", "udp"}:
        ap.error("unknown case or protocol")
    if not pathlib.Path(Agent.__init__.__globals__["VPNMETERD"]).exists():
        ap.error("vpnmeterd is not built (set VPNMETER_BUILD_DIR)")

    print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}, load {os.getloadavg()}")
    print(f"{args.rounds} rounds x {cases} x {protos}, {args.seconds} s per run, offloads "
          f"{'on' if args.offloads else 'off'}", flush=True)
    netns.sweep_stale()
    results, pmacct_capture = [], []
    with tempfile.TemporaryDirectory(prefix=f"vpnm-lab-{os.getpid()}-bench-") as tmpdir:
        tmp = pathlib.Path(tmpdir)
        srv, cli = make_lab(args.offloads)
        try:
            server = traffic.start_server(srv)
            for r in range(args.rounds):
                order = cases[r % len(cases):] + cases[:r % len(cases)]
                for name in order:
                    tool = TOOLS[name](srv, tmp)
                    netns.track(tool)  # stopped even on Ctrl-C
                    try:
                        tool.start()
                        for proto in protos:
                            res = measure(srv, cli, tool, proto, args.seconds)
                            results.append(res)
                            print(f"round {r + 1} {name:<8} {proto}: {res['bps'] / 1e6:9.1f} Mbit/s"
                                  f" {res['pps'] / 1e3:8.1f} kpps {res['cpu_s_per_gb']:7.2f} CPU s/GB"
                                  f" counted {res['counted']} link {res['link']}", flush=True)
                    finally:
                        tool.stop()
                        netns.untrack(tool)
                    if name == "pmacct":
                        pmacct_capture.append(tool.capture)
                        if tool.missing_data:
                            print("  pmacctd logged 'Missing data detected': its core -> plugin pipe overflowed",
                                  flush=True)
            srv.kill(server)
        finally:
            cli.close()
            srv.close()
    problems = report(results, pmacct_capture)
    for p in problems:
        print(f"MISCOUNT: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
