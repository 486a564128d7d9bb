"""Live datapath tests: the real agent attached to real tun and veth devices
in namespaces made by the test, its counts checked to the byte against what
was sent and against the devices' own counters."""

from __future__ import annotations

import json
import pathlib
import subprocess
import time

import pytest

from conftest import VPNMETER, VPNMETERD, LineChild, assert_device_totals_exact, wait_for
from tests.lab import netns

TUN_PEER = pathlib.Path(__file__).with_name("tun_peer.py")


class TunPeer(LineChild):
    """tun_peer.py running in a namespace: a tun device and its far end."""

    def __init__(self, ns: netns.Namespace, name: str, args=()):
        """args: more tun_peer.py options (--addr4, --clients ...)."""
        self.name = name
        super().__init__(ns, [TUN_PEER, "--name", name, *args], f"tun_peer {name}")


def udp_burst(ns: netns.Namespace, dst: str, count: int, size: int):
    """`count` UDP datagrams of `size` payload bytes from inside `ns`."""
    family = "AF_INET6" if ":" in dst else "AF_INET"
    ns.run(["/usr/bin/python3", "-c",
            f"import socket; s = socket.socket(socket.{family}, socket.SOCK_DGRAM)\n"
            f"for _ in range({count}): s.sendto(bytes({size}), ('{dst}', 9))"])


def veth_lab(namespaces, agents, extra_links: int = 0, before_attach=None):
    """A server and a client namespace joined by veth eth0 (and eth1.. if
    asked), with an agent on the server's ends. The links come up only once
    the agent is attached, so the devices' counters and ours start together."""
    server, client = namespaces("srv"), namespaces("cli")
    names = [f"eth{i}" for i in range(1 + extra_links)]
    for i, name in enumerate(names):
        subprocess.run(["ip", "-n", server.name, "link", "add", name, "type", "veth", "peer", "name", name,
                        "netns", client.name], check=True)
        for ns, host in ((server, 1), (client, 2)):
            netns.add_address(ns, name, f"10.{67 + i}.0.{host}/24")
            netns.add_address(ns, name, f"fd{67 + i}::{host}/64")
    if before_attach:
        before_attach(server)
    agent = agents(server, names).start()
    for name in names:
        wait_for(lambda: f"metering {name}" in agent.log(), 10, f"vpnmeterd to attach to {name}")
    for ns in (server, client):
        for name in names:
            ns.ip("link", "set", name, "up")
    return server, client, agent


def test_tun_counts_every_client_exactly(namespaces, agents):
    ns = namespaces("tun")
    peer = TunPeer(ns, "vmtun0")
    try:
        agent = agents(ns, ["vmtun*"]).start(wait_attached="vmtun0")
        peer.call("up")
        sent = peer.call("send")["sent"]

        report = agent.clients()
        by_address = {c["address"]: c for c in report["clients"] if c["interface"] == "vmtun0"}
        for address, expected in sent.items():
            assert address in by_address, f"no entry for {address}: {report}"
            got = {k: by_address[address][k] for k in expected}
            assert got == expected, f"{address}: counted {got}, sent {expected}"

        iface, clients, device = assert_device_totals_exact(agent, ns, "vmtun0")
        assert iface["unattributed_upload_bytes"] >= 10  # the truncated packet
        assert iface["upload_packets"] > 0 and iface["download_packets"] > 0

        table = ns.run([VPNMETER, "clients", "--pin-path", agent.pin_path], keep_mounts=True).stdout
        assert "vmtun0" in table and "10.66.0.2" in table and "fd66::2" in table
    finally:
        peer.close()


def test_veth_counts_match_the_device_under_iperf3(namespaces, agents):
    server, client, agent = veth_lab(namespaces, agents)
    iperf = server.popen(["iperf3", "-s"])
    wait_for(lambda: "5201" in server.run(["ss", "-ltn"]).stdout, 10, "iperf3 server")
    for target in ("10.67.0.1", "fd67::1"):
        for reverse in ([], ["-R"]):
            client.run(["iperf3", "-c", target, "-t", "1", "-b", "200M", *reverse], timeout=30)
    server.kill(iperf)

    report = agent.clients()
    by_address = {c["address"]: c for c in report["clients"]}
    for address in ("10.67.0.2", "fd67::2"):
        assert by_address[address]["upload_bytes"] > 10_000_000, by_address[address]
        assert by_address[address]["download_bytes"] > 10_000_000, by_address[address]
    iface, _, _ = assert_device_totals_exact(agent, server, "eth0")
    assert iface["unattributed_upload_bytes"] > 0  # ARP is not IP


def test_counting_continues_while_the_agent_is_down(namespaces, agents):
    server, client, agent = veth_lab(namespaces, agents)

    def client_upload() -> int:
        entry = next(c for c in agent.clients()["clients"] if c["address"] == "10.67.0.2")
        return entry["upload_bytes"]

    udp_burst(client, "10.67.0.1", 10, 972)  # 10 x (14 + 20 + 8 + 972) bytes on the wire
    first = client_upload()
    assert first >= 10 * 1014

    agent.stop("TERM")
    udp_burst(client, "10.67.0.1", 10, 972)
    assert client_upload() == first + 10 * 1014  # counted with no daemon running

    agent.start(wait_attached="eth0")
    agent.stop("KILL")
    agent.start(wait_attached="eth0")
    assert client_upload() == first + 10 * 1014  # a restart resets nothing
    udp_burst(client, "10.67.0.1", 5, 972)
    assert client_upload() == first + 15 * 1014
    assert_device_totals_exact(agent, server, "eth0")


def test_devices_that_come_and_go_are_followed(namespaces, agents):
    ns = namespaces("tun")
    agent = agents(ns, ["vmtun*"]).start()
    wait_for(lambda: "waiting for one to appear" in agent.log(), 10, "the no-device warning")

    for round_ in range(2):  # the second tun gets a new ifindex, as after an OpenVPN restart
        peer = TunPeer(ns, "vmtun1")
        try:
            wait_for(lambda: agent.log().count("metering vmtun1") == round_ + 1, 10, "attach to the new vmtun1")
            peer.call("up")
            sent = peer.call("send")["sent"]
            entry = next(c for c in agent.clients()["clients"]
                         if c["address"] == "10.66.0.2" and c["interface"] == "vmtun1")
            assert entry["upload_bytes"] >= sent["10.66.0.2"]["upload_bytes"]
        finally:
            peer.close()
        wait_for(lambda: agent.log().count("vmtun1 (ifindex") >= 2 * (round_ + 1), 10, "the went-away notice")
    levels = [line.split()[1] for line in agent.log().splitlines()]
    assert levels.count("warning") == 1 and "error" not in levels, agent.log()  # no error spam
    assert agent.proc.poll() is None


def test_detach_removes_what_the_agent_added_and_nothing_else(namespaces, agents):
    def operator_filter(server):  # the operator's own clsact filter on eth0 must survive
        server.run(["tc", "qdisc", "add", "dev", "eth0", "clsact"])
        server.run(["tc", "filter", "add", "dev", "eth0", "ingress", "prio", "50", "protocol", "all",
                    "u32", "match", "u32", "0", "0", "classid", "1:1"])

    server, client, agent = veth_lab(namespaces, agents, extra_links=1, before_attach=operator_filter)
    assert "meter_ingress" in server.run(["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout
    agent.stop()

    summary = agent.detach()
    assert "removed clsact qdisc from eth1" in summary
    assert "eth0" not in summary.split("removed")[1]  # its qdisc was the operator's
    assert "clsact" in server.run(["tc", "qdisc", "show", "dev", "eth0"]).stdout
    eth0 = server.run(["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout
    assert "u32" in eth0 and "meter_" not in eth0
    assert "meter_" not in server.run(["tc", "filter", "show", "dev", "eth0", "egress"]).stdout
    assert "clsact" not in server.run(["tc", "qdisc", "show", "dev", "eth1"]).stdout
    assert not pathlib.Path(agent.pin_path).exists()
    assert "nothing to detach" in agent.detach()  # twice is fine


def test_bad_config_is_rejected_with_its_location(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("interfaces: [tun0]\ncollect:\n  interval: fast\n")
    run = subprocess.run([VPNMETERD, "--config", bad], capture_output=True, text=True)
    assert run.returncode == 2
    assert f"{bad}:3:13: collect.interval: expected a duration like 1s or 500ms, got 'fast'" in run.stderr

    good = tmp_path / "good.yaml"
    good.write_text("interfaces: [tun0]\n")
    run = subprocess.run([VPNMETERD, "--check-config", "--config", good], capture_output=True, text=True)
    assert run.returncode == 0 and "OK" in run.stdout


def test_a_bpffs_is_mounted_where_there_is_none(namespaces, tmp_path):
    """`ip netns exec` gives a fresh /sys without a bpffs: the agent mounts one."""
    ns = namespaces("mnt")
    netns.veth_pair(ns, namespaces("peer"), "10.69.0.1/24", "10.69.0.2/24")
    config = tmp_path / "mnt.yaml"
    config.write_text(f"interfaces: [eth0]\nbpf: {{ pin_path: /sys/fs/bpf/vpnmeter-mnt }}\nstorage: {{ path: {tmp_path}/store }}\n")
    script = (f"{VPNMETERD} --config {config} > {tmp_path}/mnt.log 2>&1 & pid=$!; "
              f"for i in $(seq 50); do grep -q 'metering eth0' {tmp_path}/mnt.log && break; sleep 0.1; done; "
              f"{VPNMETER} clients --json --pin-path /sys/fs/bpf/vpnmeter-mnt; "
              f"kill $pid; wait $pid; {VPNMETERD} --detach --pin-path /sys/fs/bpf/vpnmeter-mnt >/dev/null")
    out = ns.run(["sh", "-c", script]).stdout
    report = json.loads(out)
    assert [i["name"] for i in report["interfaces"]] == ["eth0"], (tmp_path / "mnt.log").read_text()
