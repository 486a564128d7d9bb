"""/metrics from the real agent, scraped by a real Prometheus: with real
OpenVPN and iperf3, per-user byte counters agree with the store's totals,
the active sessions are counted, and promtool finds nothing to complain
about in the exposition."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time

from conftest import ROOT, VPNMETER, wait_for
from tests.lab import traffic
from tests.lab.openvpn import OpenVpnLab

MB = 1_000_000
AGENT = "127.0.0.1:9477"
PROMETHEUS = "127.0.0.1:9090"
RULES = ROOT / "packaging" / "prometheus" / "vpnmeter-rules.yml"
PROMETHEUS_CONFIG = f"""
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: vpnmeter
    static_configs:
      - targets: ["{AGENT}"]
"""


def agent_metrics(ns) -> str:
    """The agent's exposition; "" while it is not listening (yet)."""
    res = ns.run(["curl", "-sS", "--max-time", "5", f"http://{AGENT}/metrics"], check=False)
    return res.stdout if res.returncode == 0 else ""


def query(ns, promql: str) -> list[dict]:
    """An instant query through Prometheus's HTTP API: [{metric, value}]."""
    out = ns.run(["curl", "-sS", "--max-time", "5", "-G", f"http://{PROMETHEUS}/api/v1/query",
                  "--data-urlencode", f"query={promql}"]).stdout
    answer = json.loads(out)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def scalar(ns, promql: str) -> float | None:
    result = query(ns, promql)
    return float(result[0]["value"][1]) if result else None


def store_total(agent, user: str) -> int:
    out = agent.ns.run([VPNMETER, "usage", user, "--json", "--store", agent.store_path], keep_mounts=True)
    usage = json.loads(out.stdout)
    return usage["upload_bytes"] + usage["download_bytes"]


def rules_health(ns) -> dict[str, str]:
    out = ns.run(["curl", "-sS", "--max-time", "5", f"http://{PROMETHEUS}/api/v1/rules"]).stdout
    groups = json.loads(out)["data"]["groups"]
    return {rule["name"]: rule["health"] for group in groups for rule in group["rules"]}


def samples(text: str, family: str) -> list[tuple[dict, float]]:
    """The samples of one family in an exposition: [(labels, value)]."""
    out = []
    for line in text.splitlines():
        match = re.fullmatch(re.escape(family) + r"\{(.*)\} (\S+)", line)
        if match:
            out.append((dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1))), float(match.group(2))))
    return out


def start_prometheus(ns, tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG)
    log = tmp_path / "prometheus.log"
    proc = ns.popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                     f"--web.listen-address={PROMETHEUS}", "--storage.tsdb.retention.time=1h"], log=str(log))

    def ready():
        assert proc.poll() is None, f"prometheus exited:\n{log.read_text()}"
        return ns.run(["curl", "-sf", "--max-time", "1", f"http://{PROMETHEUS}/-/ready"], check=False).returncode == 0

    wait_for(ready, 20, "prometheus to be ready", interval=0.2)
    return proc


def test_prometheus_sees_per_user_totals_equal_to_the_store(agents, tmp_path):
    started = time.monotonic()
    with OpenVpnLab(["alice", "bob"]) as lab:
        lab.wait_connected(timeout=30)
        ns = lab.server_ns
        servers = [traffic.start_server(ns, port=p) for p in (5201, 5202)]
        agent = agents(ns, ["tun0"], interval="250ms",
                       openvpn=[{"name": "udp1194", "interface": "tun0", "management": "127.0.0.1:7505"}])
        agent.start(wait_attached="tun0")
        wait_for(lambda: 'vpnmeter_sessions_active{instance="udp1194"} 2' in agent_metrics(ns), 15,
                 "both sessions in /metrics")
        prometheus = start_prometheus(ns, tmp_path)
        try:
            # Known amounts, both ways: the metrics must at least hold what
            # iperf3's receiver got (the sender's count includes what was still
            # buffered when the test stopped, which never crossed tun0).
            received = {"alice": 0, "bob": 0}
            for name, port, nbytes, reverse in (("alice", 5201, 3 * MB, False), ("alice", 5201, 1 * MB, True),
                                                ("bob", 5202, 2 * MB, True), ("bob", 5202, 1 * MB, False)):
                result = traffic.run_client(lab[name].ns, lab.server_vpn_ipv4, port=port, nbytes=nbytes,
                                            reverse=reverse, timeout=30)
                received[name] += result.received_bytes

            # The real daemon's exposition passes promtool's checks and lints.
            text = agent_metrics(ns)
            check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), \
                f"promtool check metrics:\n{check.stdout}{check.stderr}\n--- exposition ---\n{text}"
            for family in ("vpnmeter_client_bytes_total", "vpnmeter_client_packets_total",
                           "vpnmeter_interface_bytes_total", "vpnmeter_unattributed_bytes_total",
                           "vpnmeter_source_bytes_total", "vpnmeter_sessions_active",
                           "vpnmeter_collection_duration_seconds", "vpnmeter_map_entries", "vpnmeter_map_capacity",
                           "vpnmeter_store_size_bytes", "vpnmeter_errors_total", "vpnmeter_store_commit_errors_total",
                           "vpnmeter_alerts_total",
                           "vpnmeter_build_info"):
                assert f"# TYPE {family} " in text, f"{family} missing:\n{text}"

            # Prometheus agrees with the store, once it has scraped the last cycle.
            seen = {}

            def totals_match():
                for user in received:
                    seen[user] = (scalar(ns, f'sum by (user) (vpnmeter_client_bytes_total{{user="{user}"}})'),
                                  store_total(agent, user))
                return all(metric == store for metric, store in seen.values())

            wait_for(totals_match, 10, f"Prometheus's per-user totals to equal the store's ({seen})", interval=0.5)
            for user, (metric, store) in seen.items():
                print(f"{user}: Prometheus {metric:.0f} bytes, store {store}, iperf3 received {received[user]}")
                assert metric >= received[user]  # inner bytes: payload plus headers

            assert scalar(ns, 'up{job="vpnmeter"}') == 1
            # The agent's `instance` label (the OpenVPN instance) collides with
            # the target label Prometheus adds: stored as `exported_instance`.
            assert scalar(ns, 'vpnmeter_sessions_active{exported_instance="udp1194"}') == 2
            # One scrape, one cycle: clients + unattributed = the interface's own totals.
            assert scalar(ns, 'sum(vpnmeter_client_bytes_total{interface="tun0"}) + '
                              'sum(vpnmeter_unattributed_bytes_total{interface="tun0"}) - '
                              'sum(vpnmeter_interface_bytes_total{interface="tun0"})') == 0
            assert scalar(ns, 'vpnmeter_collection_duration_seconds_count') > 0
            # The shipped alert rules evaluate against these metrics; none fires here.
            assert scalar(ns, 'vpnmeter_map_entries{map="clients"} / vpnmeter_map_capacity{map="clients"}') < 0.9
            wait_for(lambda: set(rules_health(ns).values()) == {"ok"}, 5, "the alert rules to evaluate")
            assert query(ns, 'ALERTS{alertstate="firing"}') == []

            # Restarted with per-session series and hashed names: the series
            # start from the store's open sessions, and still add up to it.
            agent.stop()
            with open(agent.config_path, "a") as f:
                f.write("metrics: { per_session: true, max_sessions: 10, hash_users: true }\n")
            agent.start()
            hashed = {user: hashlib.sha256(user.encode()).hexdigest()[:12] for user in received}

            def per_session_matches():
                text = agent_metrics(ns)
                series = samples(text, "vpnmeter_client_bytes_total")
                seen["per_session"] = {user: (sum(v for labels, v in series if labels["user"] == hashed[user]),
                                              store_total(agent, user)) for user in received}
                return text if all(m == s for m, s in seen["per_session"].values()) else None

            text = wait_for(per_session_matches, 10, f"per-session series to add up to the store ({seen})")
            series = samples(text, "vpnmeter_client_bytes_total")
            assert {labels["user"] for labels, _ in series} == set(hashed.values())
            assert len({labels["session"] for labels, _ in series}) == 2
            assert "alice" not in text and "bob" not in text
            check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check.stdout + check.stderr
        finally:
            ns.kill(prometheus)
            for server in servers:
                ns.kill(server)
    print(f"took {time.monotonic() - started:.1f} s")
