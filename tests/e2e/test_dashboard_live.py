"""The shipped Grafana dashboard against a real Prometheus scraping a real
agent: every panel's query evaluates without error and returns data."""

from __future__ import annotations

import json

from conftest import ROOT, wait_for
from test_metrics_live import agent_metrics, query, start_prometheus
from tests.lab import traffic
from tests.lab.openvpn import OpenVpnLab

DASHBOARD = ROOT / "packaging" / "grafana" / "vpnmeter.json"
MB = 1_000_000


def panel_queries():
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            # Grafana fills the variables in; "all nodes" is the regex .*
            yield panel["title"], target["expr"].replace("$instance", ".*")


def test_every_dashboard_panel_returns_data(agents, tmp_path):
    with OpenVpnLab(["alice", "bob"]) as lab:
        lab.wait_connected(timeout=30)
        ns = lab.server_ns
        servers = [traffic.start_server(ns, port=p) for p in (5201, 5202)]
        agent = agents(ns, ["tun0"], interval="250ms",
                       openvpn=[{"name": "udp1194", "interface": "tun0", "management": "127.0.0.1:7505"}])
        with open(agent.config_path, "a") as f:
            f.write("quotas:\n  plans:\n    tiny: { limit: 1MB, period: daily, action: block }\n"
                    "  users:\n    alice: tiny\n    bob: tiny\n")
        agent.start(wait_attached="tun0")
        wait_for(lambda: 'vpnmeter_sessions_active{instance="udp1194"} 2' in agent_metrics(ns), 15, "both sessions")
        prometheus = start_prometheus(ns, tmp_path)
        try:
            # alice runs into her quota (blocked, drops counted); bob stays under it.
            try:
                traffic.run_client(lab["alice"].ns, lab.server_vpn_ipv4, port=5201, nbytes=3 * MB, timeout=8)
            except Exception:
                pass  # blocked mid-test: expected
            traffic.run_client(lab["bob"].ns, lab.server_vpn_ipv4, port=5202, nbytes=200_000, timeout=20)
            wait_for(lambda: query(ns, 'vpnmeter_quota_state{user="alice", state="blocked"} == 1'), 15,
                     "alice blocked, as Prometheus sees it")
            wait_for(lambda: query(ns, "rate(vpnmeter_interface_bytes_total[5m]) > 0"), 15, "rates to exist")

            empty = []
            for title, expr in panel_queries():
                if not query(ns, expr):  # query() fails the test on a PromQL error
                    empty.append(f"{title}: {expr}")
            assert not empty, "panels without data:\n" + "\n".join(empty)
        finally:
            ns.kill(prometheus)
            for server in servers:
                ns.kill(server)


def test_shipped_rules_and_dashboard_are_valid():
    import subprocess
    rules = ROOT / "packaging" / "prometheus" / "vpnmeter-rules.yml"
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout, check.stdout
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    for wanted in ("Node traffic (bits/s)", "Top users (bits/s)", "Usage against quota (%)",
                   "Throttled and blocked users", "Unattributed traffic (bytes/s)", "Agent up"):
        assert wanted in titles
    quota = next(p for p in dashboard["panels"] if p["title"] == "Usage against quota (%)")
    steps = quota["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["color"], s["value"]) for s in steps] == [("green", None), ("yellow", 70), ("red", 90)]
