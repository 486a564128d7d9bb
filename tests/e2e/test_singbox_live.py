"""Sing-Box users through the V2Ray-compatible stats API, against a real
v2ray (it serves the same StatsService): VMess with two users, a v2ray
client per user, curl through each, and the agent's store compared with
what v2ray itself reports (read with v2ray's own client, v2ctl)."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from conftest import VPNMETER, WEBHOOK_RECEIVER, wait_for
from tests.lab.v2ray import STATS_API, V2RayLab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, BPF)")


@pytest.fixture
def lab():
    with V2RayLab() as lab:
        yield lab


def store_usage(agent, user: str) -> tuple[int, int]:
    out = agent.ns.run([VPNMETER, "usage", user, "--json", "--store", agent.store_path], keep_mounts=True)
    usage = json.loads(out.stdout)
    return usage["upload_bytes"], usage["download_bytes"]


def sessions(agent) -> list[dict]:
    out = agent.ns.run([VPNMETER, "sessions", "--json", "--store", agent.store_path], keep_mounts=True)
    return [s for s in json.loads(out.stdout)["sessions"] if s["instance"] == "sb1"]


def metrics(agent) -> str:
    return agent.ns.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:9477/metrics"]).stdout


def metric(text: str, family: str, instance: str = "sb1") -> float | None:
    match = re.search(rf'^{family}\{{instance="{instance}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else None


def make_agent(agents, lab, **extra):
    agent = agents(lab.server_ns, [], interval="200ms",
                   singbox=[{"name": "sb1", "stats_api": STATS_API, "interval": "300ms", **extra}])
    return agent


def wait_settled(agent, lab, billed: dict[str, tuple[int, int]], what: str):
    """Waits until, for each user, the store holds `billed` + what v2ray
    reports now (billed: bytes of earlier server runs)."""
    def settled():
        stats = lab.stats()
        for user in lab.users:
            before = billed.get(user, (0, 0))
            now = stats.get(user, {"uplink": 0, "downlink": 0})
            want = (before[0] + now["uplink"], before[1] + now["downlink"])
            if store_usage(agent, user) != want:
                return False
        return True
    wait_for(settled, 15, what, interval=0.3)


def test_usage_matches_v2ray_through_restarts(agents, lab):
    agent = make_agent(agents, lab).start()
    wait_for(lambda: "baseline of" in agent.log(), 10, "the agent's first reading of the stats API")
    for _ in range(3):
        lab.fetch("alice", "1m")
    lab.fetch("bob", "200k")
    wait_settled(agent, lab, {}, "the store to hold what v2ray counted")
    up, down = store_usage(agent, "alice")
    assert down >= 3_000_000 and up > 0, (up, down)  # sanity: the payload went through alice's account
    assert store_usage(agent, "bob")[1] >= 200_000

    # v2ray restarts: its counters start from zero; nothing is counted twice
    # and nothing goes negative.
    billed = {user: store_usage(agent, user) for user in lab.users}
    first_sessions = {s["id"] for s in sessions(agent)}
    lab.restart_server()
    lab.fetch("alice", "200k")
    wait_settled(agent, lab, billed, "usage after the v2ray restart")
    assert store_usage(agent, "alice")[1] == billed["alice"][1] + lab.stats()["alice"]["downlink"]
    assert store_usage(agent, "bob") == billed["bob"]  # bob did nothing since
    ended = [s for s in sessions(agent) if s["id"] in first_sessions]
    assert ended and all(s["end"] is not None for s in ended), "a restart ends the sessions of the old run"

    # The agent is killed; meanwhile v2ray restarts AND alice moves more
    # than she had before (a counter that did not go down: only the server's
    # uptime tells it restarted). The checkpoint in the store carries over.
    # Whole seconds of uptime: a run younger than ~2 s cannot be told from
    # the next one, so let this one age as any real server's would.
    time.sleep(3.5)
    billed = {user: store_usage(agent, user) for user in lab.users}
    agent.stop("KILL")
    lab.restart_server()
    for _ in range(2):
        lab.fetch("alice", "1m")
    agent.start()
    wait_settled(agent, lab, billed, "usage after the agent and v2ray restarted")
    log = agent.log()
    assert "restarted" in log, log[-2000:]


def test_server_down_is_reported_and_nothing_is_lost(agents, lab):
    agent = make_agent(agents, lab).start()
    wait_for(lambda: "baseline of" in agent.log(), 10, "the first reading")
    lab.fetch("bob", "200k")
    wait_settled(agent, lab, {}, "bob's first fetch in the store")
    wait_for(lambda: metric(metrics(agent), "vpnmeter_singbox_up") == 1, 10, "vpnmeter_singbox_up 1")

    lab.stop_server()
    wait_for(lambda: metric(metrics(agent), "vpnmeter_singbox_up") == 0, 10, "vpnmeter_singbox_up 0 while v2ray is down")
    text = metrics(agent)
    assert metric(text, "vpnmeter_singbox_read_failures_total") >= 1
    assert "stats API" in agent.log()
    status = json.loads(agent.ns.run([VPNMETER, "status", "--json", "--api", "http://127.0.0.1:9477"],
                                     keep_mounts=True, check=False).stdout)
    source = next(s for s in status["sources"] if s["instance"] == "sb1")
    assert source["kind"] == "singbox" and source["state"] == "down", source
    assert "UNAVAILABLE" in source["error"], source

    billed = {user: store_usage(agent, user) for user in lab.users}
    lab.start_server()
    lab.fetch("bob", "1m")
    wait_settled(agent, lab, billed, "usage after v2ray came back")
    text = metrics(agent)
    assert metric(text, "vpnmeter_singbox_up") == 1
    assert metric(text, "vpnmeter_singbox_restarts_total") >= 1
    # Sing-Box users are users like any other: per-user series in /metrics.
    series = re.search(r'^vpnmeter_client_bytes_total\{(?=.*user="bob")(?=.*direction="download").*\} (\d+)$',
                       text, re.M)
    assert series and int(series.group(1)) == store_usage(agent, "bob")[1], text


RECORDER = """import json, sys
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(sys.argv[2:]) + "\\n")
"""


def test_quota_block_rewrites_the_users_list(agents, lab, tmp_path):
    """Over quota, alice is taken out of v2ray's config (atomically, .bak
    kept), the reload command runs, and so does the operator's command with
    the user as one argument; a top-up puts her back."""
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    actions, reloads, hooks = tmp_path / "actions.log", tmp_path / "reloads.log", tmp_path / "hooks.log"
    lab.server_ns.popen(["/usr/bin/python3", "-c", WEBHOOK_RECEIVER, hooks])
    agent = make_agent(agents, lab, enforce={
        "config_file": lab.server_config_path,
        "reload_command": ["/usr/bin/python3", str(recorder), str(reloads), "reload"],
        "command": ["/usr/bin/python3", str(recorder), str(actions)],
        "webhook": "http://127.0.0.1:8089/singbox",
    })
    with open(agent.config_path, "a") as f:
        f.write("quotas:\n  plans:\n    small: { limit: 1500kB, period: daily, action: block }\n"
                "  users:\n    alice: small\n")
    agent.start()
    wait_for(lambda: "baseline of" in agent.log(), 10, "the first reading")

    lab.fetch("alice", "1m")
    lab.fetch("bob", "1m")
    assert not actions.exists(), "under the limit: no action"
    lab.fetch("alice", "1m")  # now over 1.5 MB
    wait_for(lambda: actions.exists() and reloads.exists(), 15, "the block action and the reload")
    assert json.loads(actions.read_text().splitlines()[0]) == ["block", "alice", "sb1"]
    # Thresholds as for any user: 75, 90 and 100 % fired once each.
    assert re.search(r"^vpnmeter_alerts_total 3$", metrics(agent), re.M), metrics(agent)
    config = json.loads(open(lab.server_config_path).read())
    clients = config["inbounds"][1]["settings"]["clients"]
    assert [c["email"] for c in clients] == ["bob"]
    assert os.path.exists(lab.server_config_path + ".bak")

    # What an operator's reload does for v2ray: restart it on the new file.
    lab.restart_server()
    assert not lab.try_fetch("alice", "200k"), "alice is blocked"
    lab.fetch("bob", "200k")  # bob is not

    out = agent.ns.run([VPNMETER, "quota", "topup", "alice", "10000000", "--json",
                        "--api", "http://127.0.0.1:9477"], keep_mounts=True)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: len(actions.read_text().splitlines()) >= 2 and len(reloads.read_text().splitlines()) >= 2, 15,
             "the unblock action and the second reload")
    assert json.loads(actions.read_text().splitlines()[1]) == ["unblock", "alice", "sb1"]
    clients = json.loads(open(lab.server_config_path).read())["inbounds"][1]["settings"]["clients"]
    assert sorted(c["email"] for c in clients) == ["alice", "bob"]
    assert len(reloads.read_text().splitlines()) == 2
    lab.restart_server()
    lab.fetch("alice", "200k")  # back in
    assert len(actions.read_text().splitlines()) == 2, "each change acted on once"
    wait_for(lambda: hooks.exists() and len(hooks.read_text().splitlines()) == 2, 10, "both webhooks")
    posted = [json.loads(line) for line in hooks.read_text().splitlines()]
    assert [(p["action"], p["user"], p["instance"]) for p in posted] == [("block", "alice", "sb1"),
                                                                          ("unblock", "alice", "sb1")]
    assert posted[0]["state"] == "blocked" and posted[1]["state"] == "ok"
