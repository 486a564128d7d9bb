"""A V2Ray lab: a VMess server with per-user stats and its V2Ray-compatible
stats API (the StatsService Sing-Box also serves), one v2ray client per user,
and an HTTP server with known payloads behind the proxy.

    [client ns] curl --socks5-hostname 127.0.0.1:<port of user>
        -> v2ray client (socks in, vmess out) -- veth --> [server ns] v2ray
        server (vmess in, 10.77.0.1:10086; stats API 127.0.0.1:10085) ->
        freedom -> HTTP server on 10.77.0.1:8080 (payloads)

Everything lives in namespaces the lab makes; close() removes them and
stops every process by pid.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
import uuid

from . import netns

SERVER_ADDR = "10.77.0.1"
CLIENT_ADDR = "10.77.0.2"
VMESS_PORT = 10086
STATS_API = "127.0.0.1:10085"
HTTP_PORT = 8080
SOCKS_BASE = 1080


class V2RayLab:
    def __init__(self, users=("alice", "bob"), payloads: dict[str, int] | None = None):
        self.users = {name: str(uuid.uuid4()) for name in users}
        self.socks = {name: SOCKS_BASE + i + 1 for i, name in enumerate(users)}
        self.payloads = payloads or {"1m": 1_000_000, "200k": 200_000}
        self.dir = tempfile.mkdtemp(prefix="vpnmeter-v2ray-")
        self.server_ns: netns.Namespace | None = None
        self.client_ns: netns.Namespace | None = None
        self.server: subprocess.Popen | None = None
        self.clients: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> "V2RayLab":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def server_config_path(self) -> str:
        return os.path.join(self.dir, "server.json")

    def server_config(self) -> dict:
        return {
            "log": {"loglevel": "warning"},
            "stats": {},
            "api": {"tag": "api", "services": ["StatsService"]},
            "policy": {"levels": {"0": {"statsUserUplink": True, "statsUserDownlink": True}}},
            "inbounds": [
                {"tag": "api-in", "listen": "127.0.0.1", "port": int(STATS_API.split(":")[1]),
                 "protocol": "dokodemo-door", "settings": {"address": "127.0.0.1"}},
                {"tag": "vmess-in", "listen": SERVER_ADDR, "port": VMESS_PORT, "protocol": "vmess",
                 "settings": {"clients": [{"id": uid, "email": name, "level": 0, "alterId": 0}
                                          for name, uid in self.users.items()]}},
            ],
            "outbounds": [{"protocol": "freedom", "tag": "direct"}],
            "routing": {"rules": [{"type": "field", "inboundTag": ["api-in"], "outboundTag": "api"}]},
        }

    def _client_config(self, name: str) -> dict:
        return {
            "log": {"loglevel": "warning"},
            "inbounds": [{"listen": "127.0.0.1", "port": self.socks[name], "protocol": "socks",
                          "settings": {"udp": False}}],
            "outbounds": [{"protocol": "vmess", "settings": {"vnext": [{
                "address": SERVER_ADDR, "port": VMESS_PORT,
                "users": [{"id": self.users[name], "alterId": 0, "security": "aes-128-gcm"}]}]}}],
        }

    def start(self) -> "V2RayLab":
        self.server_ns = netns.Namespace("v2ray-server")
        self.client_ns = netns.Namespace("v2ray-client")
        netns.veth_pair(self.server_ns, self.client_ns, f"{SERVER_ADDR}/24", f"{CLIENT_ADDR}/24")
        www = os.path.join(self.dir, "www")
        os.makedirs(www)
        for name, size in self.payloads.items():
            with open(os.path.join(www, name), "wb") as f:
                f.write(os.urandom(size))
        self.server_ns.popen(["/usr/bin/python3", "-m", "http.server", "--bind", SERVER_ADDR, str(HTTP_PORT),
                              "--directory", www], log=os.path.join(self.dir, "http.log"))
        with open(self.server_config_path, "w") as f:
            json.dump(self.server_config(), f, indent=2)
        self.start_server()
        for name in self.users:
            path = os.path.join(self.dir, f"client-{name}.json")
            with open(path, "w") as f:
                json.dump(self._client_config(name), f)
            self.clients[name] = self.client_ns.popen(["v2ray", "-config", path],
                                                      log=os.path.join(self.dir, f"client-{name}.log"))
        self._wait(lambda: all(self._listening(self.client_ns, p) for p in self.socks.values()), "v2ray clients")
        self._wait(lambda: self._http_up(), "the HTTP server")
        return self

    def start_server(self) -> None:
        self.server = self.server_ns.popen(["v2ray", "-config", self.server_config_path],
                                           log=os.path.join(self.dir, "server.log"))
        self._wait(lambda: self._listening(self.server_ns, int(STATS_API.split(":")[1])), "the v2ray stats API")

    def stop_server(self) -> None:
        if self.server:
            self.server_ns.kill(self.server)
            self.server = None

    def restart_server(self) -> None:
        self.stop_server()
        self.start_server()

    def fetch(self, user: str, payload: str) -> int:
        """Fetches a payload through the user's proxy; returns the bytes received."""
        out = self.client_ns.run(["curl", "-sS", "--max-time", "20", "--socks5-hostname",
                                  f"127.0.0.1:{self.socks[user]}", "-o", "/dev/null", "-w", "%{size_download}",
                                  f"http://{SERVER_ADDR}:{HTTP_PORT}/{payload}"])
        got = int(out.stdout.strip())
        assert got == self.payloads[payload], f"{user} fetched {got} bytes of {payload}"
        return got

    def try_fetch(self, user: str, payload: str) -> bool:
        out = self.client_ns.run(["curl", "-sS", "--max-time", "5", "--socks5-hostname",
                                  f"127.0.0.1:{self.socks[user]}", "-o", "/dev/null", "-w", "%{size_download}",
                                  f"http://{SERVER_ADDR}:{HTTP_PORT}/{payload}"], check=False)
        return out.returncode == 0 and out.stdout.strip() == str(self.payloads[payload])

    def stats(self) -> dict[str, dict[str, int]]:
        """v2ray's own per-user counters, read with its own client (v2ctl):
        {user: {"uplink": n, "downlink": n}}."""
        out = self.server_ns.run(["v2ctl", "api", f"--server={STATS_API}", "StatsService.QueryStats",
                                  'pattern: "user>>>" reset: false']).stdout
        users: dict[str, dict[str, int]] = {}
        for name, value in re.findall(r'name:\s*"([^"]+)"\s*value:\s*(\d+)', out):
            match = re.fullmatch(r"user>>>(.+)>>>traffic>>>(uplink|downlink)", name)
            if match:
                users.setdefault(match.group(1), {"uplink": 0, "downlink": 0})[match.group(2)] = int(value)
        return users

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    @staticmethod
    def _listening(ns: netns.Namespace, port: int) -> bool:
        out = ns.run(["ss", "-ltnH", f"sport = :{port}"], check=False).stdout
        return bool(out.strip())

    def _http_up(self) -> bool:
        res = self.server_ns.run(["curl", "-sS", "--max-time", "2", "-o", "/dev/null",
                                  f"http://{SERVER_ADDR}:{HTTP_PORT}/"], check=False)
        return res.returncode == 0

    @staticmethod
    def _wait(predicate, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise netns.LabError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def close(self) -> None:
        for ns in (self.client_ns, self.server_ns):
            if ns:
                ns.close()  # stops its processes by pid, then removes it
        self.client_ns = self.server_ns = None
        subprocess.run(["rm", "-rf", self.dir], check=False)
