"""Quotas enforced in the kernel, with real OpenVPN and iperf3: a block at
the limit with a measured overshoot, a throttle rate, a top-up through the
API, and webhook alerts once per threshold."""

from __future__ import annotations

import json
import os
import re
import time

from conftest import VPNMETER, WEBHOOK_RECEIVER, wait_for
from tests.lab import traffic
from tests.lab.openvpn import OpenVpnLab

MB = 1_000_000
def quota_agent(agents, ns):
    agent = agents(ns, ["tun0"], interval="250ms",
                   openvpn=[{"name": "udp1194", "interface": "tun0", "management": "127.0.0.1:7505"}])
    with open(agent.config_path, "a") as f:
        f.write("quotas:\n"
                "  thresholds: [75, 90, 100]\n"
                "  plans:\n"
                "    small: { limit: 20MB, period: daily, action: block }\n"
                "    capped: { limit: 2MB, period: daily, action: { throttle: 2Mbit } }\n"
                "  users:\n"
                "    alice: small\n"
                "    bob: capped\n"
                "alerts:\n"
                "  webhook: { url: \"http://127.0.0.1:8089/hook\", timeout: 2s }\n")
    return agent


def quota(agent, user) -> dict:
    out = agent.ns.run([VPNMETER, "quota", "get", user, "--json", "--api", "http://127.0.0.1:9477"],
                       keep_mounts=True)
    return json.loads(out.stdout)


def session_of(agent, user) -> dict:
    out = agent.ns.run([VPNMETER, "sessions", "--json", "--active", "--user", user, "--store", agent.store_path],
                       keep_mounts=True)
    sessions = json.loads(out.stdout)["sessions"]
    return sessions[0] if sessions else {}


def iperf(lab, name, reverse, **kw):
    try:
        return traffic.run_client(lab[name].ns, lab.server_vpn_ipv4, port=5201 if name == "alice" else 5202,
                                  reverse=reverse, extra=["--connect-timeout", "2000"], **kw)
    except Exception as exc:  # a blocked client's iperf3 fails: that is the point
        return exc


def test_quotas_block_throttle_topup_and_alert(agents, tmp_path):
    hooks = tmp_path / "hooks.jsonl"
    with OpenVpnLab(["alice", "bob"]) as lab:
        lab.wait_connected(timeout=30)
        receiver = lab.server_ns.popen(["/usr/bin/python3", "-c", WEBHOOK_RECEIVER, hooks])
        servers = [traffic.start_server(lab.server_ns, port=p) for p in (5201, 5202)]
        agent = quota_agent(agents, lab.server_ns).start(wait_attached="tun0")
        wait_for(lambda: session_of(agent, "alice") and session_of(agent, "bob"), 15, "both sessions")
        assert quota(agent, "alice")["state"] == "ok"

        # alice: 20 MB, both directions count; push well past it.
        iperf(lab, "alice", False, nbytes=15 * MB, timeout=30)
        iperf(lab, "alice", True, nbytes=15 * MB, timeout=20)
        wait_for(lambda: quota(agent, "alice")["state"] == "blocked", 10, "alice to be blocked")
        time.sleep(1)
        used = session_of(agent, "alice")
        passed = used["upload_bytes"] + used["download_bytes"]
        overshoot = passed - 20 * MB
        # The datapath lets at most the packet in flight on each CPU through
        # past zero; a GSO packet on tun is up to 64 KiB.
        print(f"alice passed {passed} bytes: overshoot {overshoot} bytes")
        assert 0 <= overshoot <= os.cpu_count() * 65536, overshoot
        assert isinstance(iperf(lab, "alice", False, seconds=2, timeout=15), Exception) or \
            iperf(lab, "alice", False, seconds=2, timeout=15).received_bytes < 100_000
        blocked_total = session_of(agent, "alice")
        assert blocked_total["upload_bytes"] + blocked_total["download_bytes"] - passed < 10_000  # nothing more counted

        # A purchase: +10 MB unblocks within a collection interval.
        out = agent.ns.run([VPNMETER, "quota", "topup", "alice", str(10 * MB), "--json",
                            "--api", "http://127.0.0.1:9477"], keep_mounts=True)
        assert json.loads(out.stdout)["limit_bytes"] == 30 * MB
        time.sleep(0.5)
        result = iperf(lab, "alice", False, nbytes=2 * MB, timeout=20)
        assert not isinstance(result, Exception) and result.sent_bytes >= 2 * MB, result
        assert quota(agent, "alice")["state"] in ("ok", "warning")

        # bob: over 2 MB he is throttled to 2 Mbit/s both ways. iperf3 runs
        # are repeated until he is: a run cut short (seen now and then in CI,
        # bob's usage stopping short of the limit) must not decide the test.
        for attempt in range(4):
            result = iperf(lab, "bob", False, nbytes=3 * MB, timeout=30)
            state = quota(agent, "bob")
            print(f"bob upload attempt {attempt}: {result!r}; quota {state}")
            if state["state"] == "throttled":
                break
        wait_for(lambda: quota(agent, "bob")["state"] == "throttled", 10, "bob to be throttled")
        down = iperf(lab, "bob", True, seconds=6, timeout=30)
        up = iperf(lab, "bob", False, seconds=6, timeout=30)
        rates = {"download": down.received_bytes * 8 / down.seconds, "upload": up.received_bytes * 8 / up.seconds}
        print("bob throttled:", rates)
        for direction, rate in rates.items():
            assert abs(rate - 2_000_000) <= 200_000, f"{direction} {rate / 1e6:.2f} Mbit/s, expected 2 ± 10 %"

        # Alerts: alice crossed 75, 90 and 100 % once each; bob likewise.
        time.sleep(2)
        sent = [json.loads(line) for line in hooks.read_text().splitlines()]
        by_user = {}
        for hook in sent:
            by_user.setdefault(hook["user"], []).append(hook["percent"])
        assert sorted(by_user["alice"]) == [75, 90, 100], sent
        assert sorted(by_user["bob"]) == [75, 90, 100], sent
        assert len({hook["id"] for hook in sent}) == len(sent)

        for server in servers:
            lab.server_ns.kill(server)
        lab.server_ns.kill(receiver)


def test_sighup_reloads_and_a_bad_file_changes_nothing(namespaces, agents):
    ns = namespaces("reload")
    agent = agents(ns, ["tun*"])
    base = agent.config_path.read_text()
    agent.config_path.write_text(base + "quotas:\n  plans:\n    small: { limit: 20MB, period: daily }\n"
                                        "  users:\n    alice: small\n")
    agent.start()
    wait_for(lambda: "HTTP API on" in agent.log(), 10, "the API")
    wait_for(lambda: quota_or_none(agent, "alice"), 10, "the quota endpoint")
    assert quota(agent, "alice")["limit_bytes"] == 20 * MB

    agent.config_path.write_text(base + "quotas:\n  plans:\n    small: { limit: 20Mb }\n")  # ambiguous unit
    agent.proc.send_signal(1)  # SIGHUP
    wait_for(lambda: "reload rejected" in agent.log(), 10, "the rejection")
    assert "ambiguous" in agent.log()
    assert quota(agent, "alice")["limit_bytes"] == 20 * MB  # the running configuration stays

    # Not even YAML: the error names the file, line and column; nothing changes.
    agent.config_path.write_text(base + "quotas:\n  plans: { small: [limit: 20MB\n")
    agent.proc.send_signal(1)
    wait_for(lambda: agent.log().count("reload rejected") == 2, 10, "the second rejection")
    rejection = [line for line in agent.log().splitlines() if "reload rejected" in line][-1]
    assert re.search(re.escape(str(agent.config_path)) + r":\d+:\d+: ", rejection), rejection
    assert quota(agent, "alice")["limit_bytes"] == 20 * MB

    agent.config_path.write_text(base + "quotas:\n  plans:\n    big: { limit: 5GB, period: monthly }\n"
                                        "  users:\n    alice: big\n")
    agent.proc.send_signal(1)
    wait_for(lambda: quota(agent, "alice")["limit_bytes"] == 5_000_000_000, 10, "the new plan")
    assert quota(agent, "alice")["plan"] == "big"
    assert agent.proc.poll() is None


def quota_or_none(agent, user):
    try:
        return quota(agent, user)
    except Exception:
        return None
