"""Live enforcement: the real agent on a veth pair between a server and a
client namespace, policies set on its pinned maps by
tests/tools/vpnmeter_policy_tool (what the quota engine does through
Enforcer and HtbShaper), real TCP from iperf3.

Directions are the client's: upload is client -> server (the server's eth0
ingress: the policer), download server -> client (eth0 egress: HTB)."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from conftest import BUILD, wait_for
from test_datapath_live import udp_burst, veth_lab
from tests.lab import traffic

TOOL = BUILD / "tests" / "tools" / "vpnmeter_policy_tool"
CLIENT = "10.67.0.2"
SERVER = "10.67.0.1"
RATE = 2_000_000  # bit/s
GSO_MAX = 65536   # veth passes whole GSO packets: the most one "packet" can be


@pytest.fixture(autouse=True)
def _tool_built():
    if not TOOL.exists():
        pytest.fail(f"{TOOL} missing: build the vpnmeter_policy_tool target")


def tool(ns, agent, *args) -> str:
    """The policy tool in the agent's namespace, on the agent's pins."""
    return ns.run([TOOL, "--pin-path", agent.pin_path, *map(str, args)], keep_mounts=True).stdout


def usage(agent) -> dict:
    entry = next((c for c in agent.clients()["clients"] if c["address"] == CLIENT), None)
    return entry or {"upload_bytes": 0, "download_bytes": 0, "upload_packets": 0, "download_packets": 0}


def drops(ns, agent) -> dict:
    report = json.loads(tool(ns, agent, "drops"))
    entry = next((c for c in report["clients"] if c["address"] == CLIENT), None)
    return entry or {}


def assert_invariant(agent, ifname: str = "eth0"):
    """sum(clients) + unattributed + dropped == total, both directions."""
    report = agent.clients()
    iface = next(i for i in report["interfaces"] if i["name"] == ifname)
    for d in ("upload", "download"):
        clients = sum(c[f"{d}_bytes"] for c in report["clients"] if c["interface"] == ifname)
        assert clients + iface[f"unattributed_{d}_bytes"] + iface[f"dropped_{d}_bytes"] == iface[f"{d}_bytes"], \
            (d, iface)
    return iface


def iperf_flow(ns, target: str, port: int, seconds: int) -> subprocess.Popen:
    return ns.popen(["iperf3", "-c", target, "-p", str(port), "-t", str(seconds), "--connect-timeout", "3000"])


def within(measured: float, want: float, tolerance: float = 0.10) -> bool:
    return abs(measured - want) <= tolerance * want


def test_block_stops_traffic_both_ways_at_once(namespaces, agents):
    server, client, agent = veth_lab(namespaces, agents)
    srv_iperf = traffic.start_server(server, port=5201)
    cli_iperf = traffic.start_server(client, port=5202)
    # Idle servers for new connections (the busy ones above would refuse them anyway).
    srv_idle = traffic.start_server(server, port=5203)
    cli_idle = traffic.start_server(client, port=5204)
    up = iperf_flow(client, SERVER, 5201, 30)    # client -> server: upload
    down = iperf_flow(server, CLIENT, 5202, 30)  # server -> client: download
    try:
        first = usage(agent)
        wait_for(lambda: (u := usage(agent))["upload_bytes"] > first["upload_bytes"] + 1_000_000
                 and u["download_bytes"] > first["download_bytes"] + 1_000_000, 10, "traffic both ways")

        tool(server, agent, "policy", "set", "--interface", "eth0", "--address", CLIENT, "--block")
        at_block = usage(agent)
        dropped_at_block = drops(server, agent)
        time.sleep(1.0)
        after = usage(agent)
        dropped = drops(server, agent)
        # From the moment the map holds the policy, nothing more is usage:
        # at most what was inside the program right then (a packet per CPU).
        for d in ("upload", "download"):
            grew = after[f"{d}_bytes"] - at_block[f"{d}_bytes"]
            assert grew <= 2 * GSO_MAX, f"{d} grew by {grew} bytes after the block"
            assert dropped[f"block_{d}_packets"] > dropped_at_block.get(f"block_{d}_packets", 0), \
                f"no {d} packets dropped while blocked: {dropped}"
        assert dropped["quota_upload_packets"] == dropped["policer_upload_packets"] == 0

        # A new connection gets nowhere, either way.
        for ns, target, port in ((client, SERVER, 5203), (server, CLIENT, 5204)):
            res = ns.run(["iperf3", "-c", target, "-p", port, "-t", "1", "--connect-timeout", "1000"],
                         check=False, timeout=30)
            assert res.returncode != 0, f"iperf3 to {target} got through a block"
        iface = assert_invariant(agent)
        assert iface["dropped_upload_bytes"] > 0 and iface["dropped_download_bytes"] > 0
    finally:
        for proc in (up, down):
            client.kill(proc) if proc in client.procs else server.kill(proc)

    # Cleared: both ways at full speed again.
    tool(server, agent, "policy", "clear", "--interface", "eth0", "--address", CLIENT)
    up_again = traffic.run_client(client, SERVER, 5203, seconds=1)
    down_again = traffic.run_client(server, CLIENT, 5204, seconds=1)
    assert up_again.bits_per_second > 50e6 and down_again.bits_per_second > 50e6
    for ns, proc in ((server, srv_iperf), (client, cli_iperf), (server, srv_idle), (client, cli_idle)):
        ns.kill(proc)
    assert_invariant(agent)


def test_shaped_download_and_policed_upload_hold_the_rate(namespaces, agents):
    server, client, agent = veth_lab(namespaces, agents)
    srv_iperf = traffic.start_server(server)
    full_up = traffic.run_client(client, SERVER, seconds=1)
    full_down = traffic.run_client(client, SERVER, seconds=1, reverse=True)

    assert tool(server, agent, "htb", "class", "--interface", "eth0", "--minor", 2, "--rate", RATE).strip() \
        == "0x76700002"
    tool(server, agent, "policy", "set", "--interface", "eth0", "--address", CLIENT, "--slot", 0,
         "--shape", 2, "--police", RATE)

    down = traffic.run_client(client, SERVER, seconds=5, reverse=True)
    up = traffic.run_client(client, SERVER, seconds=5)
    policed = drops(server, agent)
    print(f"\nshaped download {down.bits_per_second / 1e6:.3f} Mbit/s, policed upload "
          f"{up.bits_per_second / 1e6:.3f} Mbit/s (iperf3, received), {policed.get('policer_upload_packets')} "
          f"packets dropped by the policer; unshaped before: up {full_up.bits_per_second / 1e6:.0f}, "
          f"down {full_down.bits_per_second / 1e6:.0f} Mbit/s")
    assert within(down.bits_per_second, RATE), f"shaped download at {down.bits_per_second:.0f} bit/s"
    assert within(up.bits_per_second, RATE), f"policed upload at {up.bits_per_second:.0f} bit/s"
    assert policed["policer_upload_packets"] > 0  # TCP met the policer and adapted
    assert policed["policer_download_packets"] == 0  # download is shaped (queued), never policed here
    # The shaped bytes went through our class (tc only reads here; it has no JSON for classes).
    classes = server.run(["tc", "-s", "class", "show", "dev", "eth0"]).stdout
    shaped = re.search(r"class htb 7670:2 .*?\n\s*Sent (\d+) bytes", classes, re.S)
    assert shaped, classes
    assert int(shaped.group(1)) >= down.received_bytes, classes

    # Policy gone: full speed both ways (the HTB root stays; its default class is line rate).
    tool(server, agent, "policy", "clear", "--interface", "eth0", "--address", CLIENT)
    free_down = traffic.run_client(client, SERVER, seconds=2, reverse=True)
    free_up = traffic.run_client(client, SERVER, seconds=2)
    assert free_down.bits_per_second > 25 * RATE and free_down.bits_per_second > 0.3 * full_down.bits_per_second
    assert free_up.bits_per_second > 25 * RATE and free_up.bits_per_second > 0.3 * full_up.bits_per_second
    server.kill(srv_iperf)
    assert_invariant(agent)

    # --detach takes our HTB root off (the device is back to its default), with the rest.
    summary = agent.detach()
    assert "removed HTB shaping qdisc from eth0" in summary, summary
    roots = json.loads(server.run(["tc", "-j", "qdisc", "show", "dev", "eth0", "root"]).stdout)
    assert all(q["kind"] != "htb" for q in roots), roots


def test_budget_stops_a_live_download_after_its_bytes(namespaces, agents):
    server, client, agent = veth_lab(namespaces, agents)
    frame = 14 + 20 + 8 + 972  # what a 972-byte UDP payload is on the wire
    budget = 10 * frame + 1    # ten packets, and one byte: the eleventh passes, no more
    udp_burst(server, CLIENT, 1, 972)  # the client's neighbour entry, before any budget
    tool(server, agent, "budget", "set", "--slot", 5, "--bytes", budget)
    tool(server, agent, "policy", "set", "--interface", "eth0", "--address", CLIENT, "--slot", 5,
         "--budget", "down")
    before = usage(agent)
    udp_burst(server, CLIENT, 30, 972)
    got = usage(agent)
    assert got["download_packets"] - before["download_packets"] == 11
    assert got["download_bytes"] - before["download_bytes"] == 11 * frame
    assert drops(server, agent)["quota_download_packets"] == 19
    left = json.loads(tool(server, agent, "budget", "show", "--slot", 5))
    assert left["remaining_bytes"] == budget - 11 * frame

    # A top-up lets traffic through again, at once.
    assert int(tool(server, agent, "budget", "add", "--slot", 5, "--bytes", 5 * frame).strip()) == \
        budget - 11 * frame + 5 * frame
    udp_burst(server, CLIENT, 10, 972)
    assert usage(agent)["download_packets"] - got["download_packets"] == 5
    assert_invariant(agent)
