"""Sessions from a real OpenVPN server: the agent attributes every byte on
tun0 to the session that held the address, keeps it in the store across
kill -9, and follows OpenVPN restarts."""

from __future__ import annotations

import json
import random
import threading
import time

from conftest import VPNMETER, wait_for
from tests.lab import traffic
from tests.lab.openvpn import OpenVpnLab

SHARED_V4, SHARED_V6 = "10.8.0.200", "fd00:8::200"


class Workload:
    """iperf3 for the given clients, alternating directions, until stopped."""

    def __init__(self, lab: OpenVpnLab, names, seconds: int = 1, rate: str = "20M"):
        self.lab, self.names, self.seconds, self.rate = lab, list(names), seconds, rate
        self.stop_flag = threading.Event()
        self.errors: list[str] = []
        self.servers = [traffic.start_server(lab.server_ns, port=5201 + i) for i in range(len(self.names))]
        self.threads = [threading.Thread(target=self._loop, args=(name, 5201 + i), daemon=True)
                        for i, name in enumerate(self.names)]

    def _loop(self, name: str, port: int):
        client = self.lab[name]
        reverse = False
        while not self.stop_flag.is_set():
            # IPv4 one way, IPv6 the other: both pools carry traffic.
            server = self.lab.server_vpn_ipv6 if reverse else self.lab.server_vpn_ipv4
            try:
                traffic.run_client(client.ns, server, port=port, seconds=self.seconds, reverse=reverse,
                                   extra=["-b", self.rate])
            except Exception as exc:  # the agent is under test, not iperf3
                self.errors.append(f"{name}: {exc}")
                time.sleep(0.2)
            reverse = not reverse

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=30)
        for server in self.servers:
            self.lab.server_ns.kill(server)


def sessions(agent, *args) -> dict:
    out = agent.ns.run([VPNMETER, "sessions", "--json", "--store", agent.store_path, *args], keep_mounts=True)
    return json.loads(out.stdout)


def store_totals(agent, interface: str = "tun0") -> tuple[int, int]:
    """(upload, download) over sessions + unattributed, from the store."""
    report = sessions(agent)
    up = sum(s["upload_bytes"] for s in report["sessions"] if s["interface"] == interface)
    down = sum(s["download_bytes"] for s in report["sessions"] if s["interface"] == interface)
    for u in report["unattributed"]:
        if u["interface"] == interface:
            up, down = up + u["upload_bytes"], down + u["download_bytes"]
    return up, down


def wait_store_matches_device(agent, ns, timeout: float = 15, interface: str = "tun0"):
    """The store catches up with the device's own counters, to the byte (it
    lags by at most a cycle while the last packets are committed)."""
    seen = {}

    def matches():
        device = ns.link_stats(interface)
        seen["store"], seen["device"] = store_totals(agent, interface), (device["rx_bytes"], device["tx_bytes"])
        return seen["store"] == seen["device"]

    assert wait_for_or_false(matches, timeout), \
        f"store (up, down) {seen['store']} != {interface} (rx, tx) {seen['device']}"


def wait_for_or_false(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def openvpn_agent(agents, ns):
    return agents(ns, ["tun0"], openvpn=[{"name": "udp1194", "interface": "tun0", "management": "127.0.0.1:7505"}])


def shared_address_ccd(directory, names):
    """The same static address for several common names: the next one to
    connect reuses the address of the one that left."""
    directory.mkdir()
    for name in names:
        (directory / name).write_text(f"ifconfig-push {SHARED_V4} 255.255.255.0\n"
                                      f"ifconfig-ipv6-push {SHARED_V6}/64 fd00:8::1\n")
    return directory


def by_user(report: dict, user: str) -> list[dict]:
    return [s for s in report["sessions"] if s["user"] == user]


def test_every_byte_is_attributed_exactly_across_reuse_and_kill_9(agents, tmp_path):
    """Per-session usage + unattributed equals tun0's counters to the byte,
    through a disconnect, an address handed to another user, and twenty
    kill -9s of the agent during traffic."""
    state = {}

    def attach_first(server_ns):
        # A persistent tun0, metered before OpenVPN sends a packet through it,
        # so the device's counters and ours start together.
        server_ns.run(["openvpn", "--mktun", "--dev", "tun0", "--dev-type", "tun"])
        state["agent"] = openvpn_agent(agents, server_ns).start(wait_attached="tun0")

    ccd = shared_address_ccd(tmp_path / "ccd", ["alice", "dave"])
    with OpenVpnLab(["alice", "bob", "carol", "dave"], before_server=attach_first,
                    server_extra=[f"client-config-dir {ccd}"]) as lab:
        lab.disconnect("dave")  # dave takes alice's address once she has left
        lab.wait_connected(timeout=40, names=["alice", "bob", "carol"])
        agent = state["agent"]
        wait_for(lambda: len(sessions(agent, "--active")["sessions"]) == 3, 15, "three active sessions")

        with Workload(lab, ["alice", "bob", "carol"]) as load:
            for _ in range(20):
                time.sleep(random.uniform(0.1, 0.7))
                agent.stop("KILL")
                agent.start(wait_attached="tun0")
        assert len(load.errors) < 10, load.errors
        wait_store_matches_device(agent, lab.server_ns)

        # Address reuse: alice leaves, dave gets her addresses.
        alice_before = by_user(sessions(agent), "alice")[0]
        lab.disconnect("alice")
        wait_for(lambda: by_user(sessions(agent), "alice")[0]["end"] is not None, 20, "alice's session to end")
        alice_closed = by_user(sessions(agent), "alice")[0]
        assert alice_closed["upload_bytes"] >= alice_before["upload_bytes"]
        lab.connect("dave")
        lab.wait_connected(timeout=30, names=["dave"])
        assert lab["dave"].ipv4 == SHARED_V4
        wait_for(lambda: by_user(sessions(agent, "--active"), "dave"), 15, "dave's session")
        with Workload(lab, ["dave"], rate="10M"):
            time.sleep(2.5)
        wait_store_matches_device(agent, lab.server_ns)

        report = sessions(agent)
        alice = by_user(report, "alice")[0]
        for field in ("upload_bytes", "download_bytes", "end"):  # closed means closed
            assert alice[field] == alice_closed[field], field
        dave = by_user(report, "dave")[0]
        assert SHARED_V4 in dave["addresses"] and dave["upload_bytes"] + dave["download_bytes"] > 1_000_000
        # dave moved ~2.5 s at 10 Mbit/s: his session holds his bytes only.
        assert dave["upload_bytes"] + dave["download_bytes"] < 8_000_000, dave
        assert {s["user"] for s in report["sessions"]} == {"alice", "bob", "carol", "dave"}

        agent.stop()  # a clean stop commits the last cycle
        wait_store_matches_device(agent, lab.server_ns, timeout=2)


def test_an_openvpn_restart_closes_sessions_and_counting_resumes(agents):
    with OpenVpnLab(["alice", "bob"]) as lab:
        lab.wait_connected(timeout=30)
        agent = openvpn_agent(agents, lab.server_ns).start(wait_attached="tun0")
        wait_for(lambda: len(sessions(agent, "--active")["sessions"]) == 2, 15, "two active sessions")
        with Workload(lab, ["alice", "bob"], rate="10M"):
            time.sleep(2)
        first = sessions(agent)["sessions"]

        lab.restart_server()  # tun0 is recreated with a new ifindex
        wait_for(lambda: agent.log().count("metering tun0") == 2, 15, "the agent to meter the new tun0")
        wait_for(lambda: len(sessions(agent, "--active")["sessions"]) == 2 and
                 len(sessions(agent)["sessions"]) == 4, 20, "two new sessions, two closed")
        with Workload(lab, ["alice", "bob"], rate="10M"):
            time.sleep(2)
        time.sleep(1)
        report = sessions(agent)
        closed = [s for s in report["sessions"] if s["end"] is not None]
        active = [s for s in report["sessions"] if s["end"] is None]
        assert {s["id"] for s in closed} == {s["id"] for s in first}
        for old in first:
            now = next(s for s in closed if s["id"] == old["id"])
            assert now["upload_bytes"] >= old["upload_bytes"] and now["download_bytes"] >= old["download_bytes"]
        for s in active:
            assert s["upload_bytes"] > 100_000 and s["download_bytes"] > 100_000, s
        assert agent.proc.poll() is None


def test_openvpn_killed_with_9_and_restarted_loses_no_byte(agents):
    """OpenVPN crashes (kill -9) and is started again on its persistent tun0:
    the sessions of the dead process end, the reconnected clients get new
    ones, and the store still equals tun0's counters.

    Traffic pauses over the crash: what the kernel routes into tun0 while no
    OpenVPN reads it is counted by our egress program (per session, as
    download) but dropped by the tun driver (tx_dropped, not tx_bytes), so
    the device's tx would then be lower than the store by those bytes."""
    state = {}

    def attach_first(server_ns):
        server_ns.run(["openvpn", "--mktun", "--dev", "tun0", "--dev-type", "tun"])
        state["agent"] = openvpn_agent(agents, server_ns).start(wait_attached="tun0")

    with OpenVpnLab(["alice", "bob"], before_server=attach_first) as lab:
        lab.wait_connected(timeout=30)
        agent = state["agent"]
        wait_for(lambda: len(sessions(agent, "--active")["sessions"]) == 2, 15, "two active sessions")
        with Workload(lab, ["alice", "bob"], rate="10M"):
            time.sleep(2)
        wait_store_matches_device(agent, lab.server_ns)
        lab.restart_server(hard=True, wait=False)
        lab.wait_connected(timeout=40)  # clients notice by keepalive and reconnect
        wait_for(lambda: len(sessions(agent)["sessions"]) == 4, 20, "two new sessions")
        with Workload(lab, ["alice", "bob"], rate="10M"):
            time.sleep(2)
        wait_store_matches_device(agent, lab.server_ns)
        report = sessions(agent)
        assert len([s for s in report["sessions"] if s["end"] is None]) == 2
        for s in report["sessions"]:
            assert s["upload_bytes"] + s["download_bytes"] > 10_000, s
        assert agent.proc.poll() is None and agent.log().count("metering tun0") == 1


def test_status_file_source_and_recreated_maps(agents):
    """Sessions from OpenVPN's status file; maps recreated under a running
    store (as after a reboot) count from zero: nothing doubled, nothing negative."""
    with OpenVpnLab(["alice", "bob"], management_port=None, status_version=3) as lab:
        lab.wait_connected(timeout=30)
        agent = agents(lab.server_ns, ["tun0"],
                       openvpn=[{"name": "udp1194", "interface": "tun0", "status_file": lab.status_path}])
        agent.start(wait_attached="tun0")
        wait_for(lambda: len(sessions(agent, "--active")["sessions"]) == 2, 15, "two sessions from the status file")
        with Workload(lab, ["alice", "bob"], rate="10M"):
            time.sleep(2)
        time.sleep(1)
        before = store_totals(agent)
        assert before[0] > 1_000_000 and before[1] > 1_000_000, before
        users_before = {s["id"]: (s["upload_bytes"], s["download_bytes"]) for s in sessions(agent)["sessions"]}

        agent.stop()
        agent.detach()  # the maps are gone: the next start makes new, empty ones
        agent.start(wait_attached="tun0")
        wait_for(lambda: "kernel counters were reset" in agent.log(), 10, "the reset to be noticed")
        time.sleep(1)
        # Restarting added nothing to any session (the kernel's own IPv6
        # chatter on tun0 may add a multicast packet to unattributed).
        assert {s["id"]: (s["upload_bytes"], s["download_bytes"]) for s in sessions(agent)["sessions"]} == users_before
        idle = store_totals(agent)
        assert 0 <= idle[0] - before[0] < 1000 and 0 <= idle[1] - before[1] < 1000, (before, idle)

        with Workload(lab, ["alice", "bob"], rate="10M"):
            time.sleep(2)
        time.sleep(1)
        after = store_totals(agent)
        grown = (after[0] - before[0], after[1] - before[1])
        assert 1_000_000 < grown[0] < before[0] * 2 and 1_000_000 < grown[1] < before[1] * 2, (before, after)
        for s in sessions(agent)["sessions"]:
            assert s["end"] is None and s["upload_bytes"] > 0 and s["download_bytes"] > 0, s


HOLD_MANAGEMENT = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", 7505))
s.recv(4096)  # the greeting: we are OpenVPN's one management client now
print("holding", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def test_a_busy_management_port_is_reported_and_waited_for(agents):
    """OpenVPN serves one management client at a time: the agent says so and
    takes over when the other client leaves."""
    import subprocess
    with OpenVpnLab(["alice"]) as lab:
        lab.wait_connected(timeout=30)
        holder = lab.server_ns.popen(["/usr/bin/python3", "-c", HOLD_MANAGEMENT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "holding"
        agent = openvpn_agent(agents, lab.server_ns).start(wait_attached="tun0")
        wait_for(lambda: "another management client is probably connected" in agent.log(), 15,
                 "the busy-port warning")
        assert not sessions(agent, "--active")["sessions"]
        holder.stdin.close()
        lab.server_ns.kill(holder)
        wait_for(lambda: len(sessions(agent, "--active")["sessions"]) == 1, 15, "alice's session once the port is free")
        assert agent.log().count("another management client") == 1  # said once, not every cycle
