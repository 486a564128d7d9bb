"""The operator's CLI against a real agent with real OpenVPN clients and
iperf3 traffic: `status`, `top` (bars against a small and a large quota,
rates while traffic flows), `export` totals equal to `usage`,
`check-config`, and the exit codes when the agent does not answer."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import termios
import threading
import time

from conftest import VPNMETER, wait_for
from tests.lab import traffic
from tests.lab.openvpn import OpenVpnLab

MB = 1_000_000
API = "http://127.0.0.1:9477"


def cli(agent, *args, check=True):
    return agent.ns.run([VPNMETER, *args], check=check, keep_mounts=True)


def cli_json(agent, *args):
    return json.loads(cli(agent, *args).stdout)


def quota_state(agent, user) -> str:
    return cli_json(agent, "quota", "get", user, "--json", "--api", API)["state"]


def iperf(lab, name, port, **kw):
    try:
        return traffic.run_client(lab[name].ns, lab.server_vpn_ipv4, port=port,
                                  extra=["--connect-timeout", "2000"], **kw)
    except Exception as exc:  # a blocked client's iperf3 fails: that is the point
        return exc


def usage_totals(agent, users) -> dict:
    out = {}
    for user in users:
        u = cli_json(agent, "usage", user, "--json", "--by", "hour", "--store", agent.store_path)
        out[user] = (u["upload_bytes"], u["download_bytes"])
    return out


def export_totals(rows) -> dict:
    out = {}
    for row in rows:
        up, down = out.get(row["user"], (0, 0))
        out[row["user"]] = (up + int(row["upload_bytes"]), down + int(row["download_bytes"]))
    return out


def live_top(agent, stop) -> bytes:
    """Runs `top` on a pseudo-terminal for about a second, then stops it by
    key or signal; returns what it drew. Its exit code must be 0 and its
    terminal settings as they were."""
    master, slave = pty.openpty()
    saved = termios.tcgetattr(slave)
    proc = subprocess.Popen(agent.ns.nsenter_argv() + [str(VPNMETER), "top", "--interval", "0.3", "--api", API],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env={k: v for k, v in os.environ.items() if k != "NO_COLOR"})
    screen = b""
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                screen += os.read(master, 65536)
        if stop == "SIGINT":
            proc.send_signal(signal.SIGINT)
        else:
            os.write(master, stop)
        assert proc.wait(5) == 0
        while select.select([master], [], [], 0.2)[0]:
            try:
                screen += os.read(master, 65536)
            except OSError:
                break
        assert termios.tcgetattr(slave) == saved, "top left the terminal changed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    return screen


def test_status_top_export_and_exit_codes(agents, tmp_path):
    with OpenVpnLab(["alice", "bob"]) as lab:
        lab.wait_connected(timeout=30)
        servers = [traffic.start_server(lab.server_ns, port=p) for p in (5201, 5202)]
        agent = agents(lab.server_ns, ["tun0"], interval="250ms",
                       openvpn=[{"name": "udp1194", "interface": "tun0", "management": "127.0.0.1:7505"}])
        with open(agent.config_path, "a") as f:
            f.write("quotas:\n"
                    "  plans:\n"
                    "    tiny: { limit: 1MB, period: daily, action: block }\n"
                    "    roomy: { limit: 10GB, period: daily, action: block }\n"
                    "  users: { alice: tiny, bob: roomy }\n")
        agent.start(wait_attached="tun0")
        wait_for(lambda: len(cli_json(agent, "sessions", "--json", "--active", "--store",
                                      agent.store_path)["sessions"]) == 2, 15, "both sessions")

        # status: the agent, tun0 attached, the OpenVPN source up, the store committing.
        status = cli_json(agent, "status", "--json", "--api", API)
        assert status["agent"]["pin_path"] == agent.pin_path
        assert status["agent"]["config_path"] == str(agent.config_path)
        assert status["agent"]["uptime_seconds"] >= 0
        assert [(i["name"], i["attached"]) for i in status["interfaces"]] == [("tun0", True)], status
        [source] = status["sources"]
        assert (source["kind"], source["instance"], source["state"], source["error"]) == \
            ("openvpn", "udp1194", "up", None), source
        assert abs(source["last_refresh"] - time.time()) < 5
        assert status["store"]["path"] == agent.store_path and status["store"]["size_bytes"] > 0
        assert abs(status["store"]["last_commit"] - time.time()) < 5
        assert status["quotas"] == {"users_blocked": 0, "users_throttled": 0}
        text = cli(agent, "status", "--api", API).stdout
        assert "tun0" in text and "udp1194" in text and agent.store_path in text, text

        # alice past her 1 MB (blocked), bob 2 MB of his 10 GB.
        iperf(lab, "alice", 5201, nbytes=3 * MB, timeout=20)
        assert not isinstance(iperf(lab, "bob", 5202, nbytes=2 * MB, timeout=30), Exception)
        wait_for(lambda: quota_state(agent, "alice") == "blocked", 10, "alice to be blocked")

        # bob sends for 4 s while top takes its two readings 1 s apart.
        sending = threading.Thread(target=iperf, args=(lab, "bob", 5202), kwargs={"seconds": 4, "timeout": 30})
        sending.start()
        time.sleep(1.5)
        snapshot = cli_json(agent, "top", "--json", "--interval", "1", "--api", API)
        frame = cli(agent, "top", "--once", "--interval", "0.5", "--api", API).stdout
        sending.join()
        users = {u["user"]: u for u in snapshot["users"]}
        print("top --json:", json.dumps(snapshot))
        print(frame)
        alice, bob = users["alice"], users["bob"]
        assert (alice["state"], alice["level"], alice["limit_bytes"]) == ("blocked", "red", MB), alice
        assert alice["used_bytes"] >= MB and alice["percent"] >= 100
        assert (bob["state"], bob["level"], bob["limit_bytes"]) == ("ok", "green", 10_000 * MB), bob
        assert bob["used_bytes"] >= 2 * MB and bob["percent"] < 75
        assert bob["upload_bps"] > 1_000_000, f"bob sends at more than 1 Mbit/s: {bob}"
        assert alice["upload_bps"] < 100_000, alice
        assert "\x1b" not in frame  # --once: no cursor movement, no colours
        lines = {line.split()[0]: line for line in frame.splitlines() if line.startswith(("alice", "bob"))}
        assert "blocked" in lines["alice"] and lines["alice"].endswith("[####################]"), frame
        # Under 75%: at most 14 of 20 cells filled.
        assert re.search(r"\[#{0,14}-{6,20}\]$", lines["bob"]) and "ok" in lines["bob"].split(), frame
        assert "1 blocked" in frame
        assert cli_json(agent, "status", "--json", "--api", API)["quotas"]["users_blocked"] == 1

        # The live view on a terminal: redrawn, q quits, Ctrl-C too; the terminal is put back.
        for stop in (b"q", "SIGINT"):
            screen = live_top(agent, stop)
            assert screen.count(b"\x1b[H\x1b[2J") >= 2, screen[-2000:]  # at least two frames
            assert b"\x1b[31m[####################]\x1b[0m" in screen  # alice's bar, red
            assert screen.rstrip(b"\r\n").endswith(b"\x1b[?25h\x1b[?1049l"), screen[-200:]

        # export: the same totals as usage, by day (CSV) and by hour (JSON to a file, with progress).
        def exported():
            rows = list(csv.DictReader(io.StringIO(cli(agent, "export", "--format", "csv", "--by", "day",
                                                       "--store", agent.store_path).stdout)))
            out = tmp_path / "export.json"
            run = cli(agent, "export", "--format", "json", "--by", "hour", "--from", "2000-01-01",
                      "--output", str(out), "--progress", "--store", agent.store_path)
            assert "100% (2 of 2 users)" in run.stderr, run.stderr
            document = json.loads(out.read_text())
            return rows, document

        for _ in range(20):  # traffic may still trickle in (ICMPv6 on tun): retry until the store is still
            before = usage_totals(agent, ["alice", "bob"])
            rows, document = exported()
            if usage_totals(agent, ["alice", "bob"]) == before:
                break
            time.sleep(0.5)
        assert export_totals(rows) == before, (rows, before)
        assert export_totals(document["rows"]) == before
        assert document["upload_bytes"] == sum(u for u, d in before.values())
        assert document["download_bytes"] == sum(d for u, d in before.values())
        assert before["bob"][0] >= 2 * MB

        # check-config: the agent's own file, and a broken one located.
        good = cli(agent, "check-config", str(agent.config_path))
        assert good.returncode == 0 and "OK" in good.stdout
        bad = tmp_path / "bad.yaml"
        bad.write_text("interfaces: [tun0]\nquotas:\n  plans:\n    x: { limit: 20Mb }\n")
        run = cli(agent, "check-config", str(bad), check=False)
        assert run.returncode == 5, run
        assert f"{bad}:4:" in run.stderr and "ambiguous" in run.stderr, run.stderr
        run = cli(agent, "sessions", "--config", str(bad), check=False)
        assert run.returncode == 5, run

        # Usage errors and refusals have their own codes.
        assert cli(agent, "export", "--format", "xml", check=False).returncode == 2
        assert cli(agent, "top", "--bogus", check=False).returncode == 2

        # The agent stops: status still says what it can see, with exit code 3.
        agent.stop()
        run = cli(agent, "status", "--json", "--config", str(agent.config_path), check=False)
        assert run.returncode == 3, run
        down = json.loads(run.stdout)
        assert down["agent"] is None and "cannot reach" in down["error"]
        assert down["local"]["pins"]["present"] is True  # the datapath keeps counting
        assert down["local"]["store"]["readable"] is True and down["local"]["store"]["size_bytes"] > 0
        run = cli(agent, "status", "--config", str(agent.config_path), check=False)
        assert run.returncode == 3 and "not answering" in run.stdout, run
        assert "present" in run.stdout and "readable" in run.stdout and "not readable" not in run.stdout, run
        assert cli(agent, "top", "--once", "--api", API, check=False).returncode == 3
        assert cli(agent, "quota", "get", "alice", "--api", API, check=False).returncode == 3
        for server in servers:
            lab.server_ns.kill(server)
