"""A stand-in for an OpenVPN server, driven by a live test: its management
interface and, optionally, its tun device.

Run inside a network namespace (`ip netns exec NS python3 openvpn_sim.py`).
The management side speaks what OpenVPN 2.6 speaks to a management client
(tests/fixtures/openvpn has the captures it follows): the >INFO greeting,
`status 3` answered in the tab-separated format with CRLF line ends,
`client-kill CID`, and >CLIENT:ESTABLISHED / >CLIENT:DISCONNECT with their ENV
blocks when clients come and go (real OpenVPN sends DISCONNECT only under
--management-client-auth; the agent must cope either way). One management
client at a time, like OpenVPN.

With --tun, it also owns a tun device: clients' upload packets are written
into it with the client's address as the source, and a reader drains what
the kernel sends into it, so the device's counters see every packet.

Line commands on stdin, one JSON line answered for each:

  up                        bring the tun up (drain thread, sinks)
  connect CN V4 [V6]        a client connects; answers {"cid", "since"}
  disconnect CID            the client leaves
  send CID COUNT SIZE       COUNT UDP packets of SIZE payload bytes from the
                            client's IPv4 into the tun; answers {"bytes"}
  wait_status [TIMEOUT]     until a `status 3` reply is sent after this moment
  join_batch N PREFIX       N clients named PREFIX-<cid> on the addresses
                            10.70.0.2 ... (reused by the next batch); answers
                            {"clients": {cid: {"cn", "since"}}}
  send_all PACKETS          PACKETS packets from each connected client
                            (payload 50 + cid % 500); answers {"sent": {cid: bytes}}
  leave_all                 every client leaves
  stats                     {"replies", "kills", "connected"}
  quit
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tun_peer import SERVER_PORT, udp4  # noqa: E402

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
GREETING = ">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info"
TITLE = "OpenVPN 2.6.14 x86_64-pc-linux-gnu [SSL (OpenSSL)] [LZO] [LZ4] [EPOLL] [PKCS11] [MH/PKTINFO] [AEAD] [DCO]"


class Client:
    def __init__(self, cid: int, cn: str, v4: str, v6: str | None):
        self.cid, self.cn, self.v4, self.v6 = cid, cn, v4, v6
        self.since = int(time.time())
        self.real = f"10.99.{cid // 250 % 250}.{cid % 250 + 1}:{40000 + cid % 20000}"
        self.upload_bytes = 0


class Simulator:
    def __init__(self, port: int, tun: str | None, addr4: str):
        self.lock = threading.Condition()
        self.clients: dict[int, Client] = {}
        self.next_cid = 0
        self.replies = 0  # `status 3` replies sent
        self.kills = 0
        self.conn: socket.socket | None = None
        self.server4 = addr4.split("/")[0]
        self.tun, self.fd = tun, None
        if tun:
            self.fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", tun.encode(), IFF_TUN | IFF_NO_PI))
            subprocess.run(["ip", "addr", "add", addr4, "dev", tun], check=True)
        self.sinks = []
        self.listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        threading.Thread(target=self.serve, daemon=True).start()

    # ------------------------------------------------------------ management
    def serve(self):
        while True:
            conn, _ = self.listener.accept()
            with self.lock:
                self.conn = conn
            try:
                self.write(GREETING)
                self.read_commands(conn)
            except OSError:
                pass
            with self.lock:
                self.conn = None
            conn.close()

    def write(self, *lines: str):
        """Whole messages under the lock: a notification never lands inside a reply."""
        with self.lock:
            if self.conn:
                try:
                    self.conn.sendall("".join(line + "\r\n" for line in lines).encode())
                except OSError:
                    pass

    def read_commands(self, conn: socket.socket):
        buffer = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self.command(line.decode(errors="replace").strip())

    def command(self, line: str):
        if line == "status 3":
            with self.lock:
                self.write(*self.status_lines())
                self.replies += 1
                self.lock.notify_all()
        elif line.startswith("client-kill "):
            cid = int(line.split()[1])
            with self.lock:
                client = self.clients.get(cid)
                if client:
                    self.kills += 1
                    self.write(f"SUCCESS: client-kill command succeeded")
                    self.leave(cid)
                else:
                    self.write(f"ERROR: client-kill command failed")
        elif line:
            self.write(f"ERROR: unknown command [{line}], enter 'help' for more options")

    def status_lines(self) -> list[str]:
        now = time.time()
        ascii_now = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        lines = [f"TITLE\t{TITLE}", f"TIME\t{ascii_now}\t{int(now)}",
                 "HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tVirtual IPv6 Address\t"
                 "Bytes Received\tBytes Sent\tConnected Since\tConnected Since (time_t)\tUsername\tClient ID\t"
                 "Peer ID\tData Channel Cipher"]
        for c in self.clients.values():
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.since))
            lines.append(f"CLIENT_LIST\t{c.cn}\t{c.real}\t{c.v4}\t{c.v6 or ''}\t{c.upload_bytes}\t0\t{since}\t"
                         f"{c.since}\tUNDEF\t{c.cid}\t{c.cid}\tAES-256-GCM")
        lines.append("HEADER\tROUTING_TABLE\tVirtual Address\tCommon Name\tReal Address\tLast Ref\t"
                     "Last Ref (time_t)")
        for c in self.clients.values():
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.since))
            for address in filter(None, (c.v4, c.v6)):
                lines.append(f"ROUTING_TABLE\t{address}\t{c.cn}\t{c.real}\t{since}\t{c.since}")
        lines += ["GLOBAL_STATS\tMax bcast/mcast queue length\t1", "GLOBAL_STATS\tdco_enabled\t0", "END"]
        return lines

    # ------------------------------------------------------------ clients
    def join(self, cn: str, v4: str, v6: str | None = None) -> Client:
        with self.lock:
            client = Client(self.next_cid, cn, v4, v6)
            self.next_cid += 1
            self.clients[client.cid] = client
            env = [f">CLIENT:ENV,n_clients={len(self.clients)}", f">CLIENT:ENV,time_unix={client.since}",
                   f">CLIENT:ENV,ifconfig_pool_remote_ip={v4}", f">CLIENT:ENV,common_name={cn}",
                   f">CLIENT:ENV,trusted_ip={client.real.split(':')[0]}"]
            if v6:
                env.append(f">CLIENT:ENV,ifconfig_pool_remote_ip6={v6}")
            self.write(f">CLIENT:ESTABLISHED,{client.cid}", *env, ">CLIENT:ENV,END")
            return client

    def leave(self, cid: int):
        with self.lock:
            client = self.clients.pop(cid)
            self.write(f">CLIENT:DISCONNECT,{cid}", f">CLIENT:ENV,bytes_received={client.upload_bytes}",
                       f">CLIENT:ENV,common_name={client.cn}", ">CLIENT:ENV,END")

    def wait_status(self, timeout: float = 30) -> int:
        """Until a status reply goes out that was asked for after this call."""
        with self.lock:
            target = self.replies + 2  # one may be half-answered now, from before
            if not self.lock.wait_for(lambda: self.replies >= target, timeout):
                raise RuntimeError(f"no `status 3` reply within {timeout}s (replies so far: {self.replies})")
            return self.replies

    # ------------------------------------------------------------ tun
    def up(self):
        subprocess.run(["ip", "link", "set", self.tun, "up"], check=True)
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind((self.server4, SERVER_PORT))
        self.sinks.append(sink)
        threading.Thread(target=self.drain, daemon=True).start()
        return {"up": self.tun}

    def drain(self):
        while True:
            try:
                os.read(self.fd, 65536)
            except OSError:
                return

    def send(self, cid: int, count: int, size: int) -> int:
        client = self.clients[cid]
        sent = 0
        for _ in range(count):
            packet = udp4(client.v4, self.server4, bytes(size))
            os.write(self.fd, packet)
            sent += len(packet)
        client.upload_bytes += sent
        return sent

    def join_batch(self, count: int, prefix: str) -> dict:
        """`count` clients on the addresses 10.70.0.2 ... (reused batch after batch)."""
        joined = {}
        for i in range(count):
            client = self.join(f"{prefix}-{self.next_cid}", f"10.70.{(i + 2) // 250}.{(i + 2) % 250}")
            joined[client.cid] = {"cn": client.cn, "since": client.since}
        return {"clients": joined}

    def send_all(self, packets: int) -> dict:
        with self.lock:
            cids = list(self.clients)
        return {"sent": {cid: self.send(cid, packets, 50 + cid % 500) for cid in cids}}

    def leave_all(self) -> dict:
        with self.lock:
            cids = list(self.clients)
            for cid in cids:
                self.leave(cid)
        return {"left": len(cids)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=7505)
    parser.add_argument("--tun")
    parser.add_argument("--addr4", default="10.70.0.1/16")
    args = parser.parse_args()
    sim = Simulator(args.port, args.tun, args.addr4)
    print(json.dumps({"ready": args.port}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        try:
            if words[0] == "up":
                answer = sim.up()
            elif words[0] == "connect":
                client = sim.join(words[1], words[2], words[3] if len(words) > 3 else None)
                answer = {"cid": client.cid, "since": client.since}
            elif words[0] == "disconnect":
                sim.leave(int(words[1]))
                answer = {}
            elif words[0] == "send":
                answer = {"bytes": sim.send(int(words[1]), int(words[2]), int(words[3]))}
            elif words[0] == "wait_status":
                answer = {"replies": sim.wait_status(float(words[1]) if len(words) > 1 else 30)}
            elif words[0] == "join_batch":
                answer = sim.join_batch(int(words[1]), words[2])
            elif words[0] == "send_all":
                answer = sim.send_all(int(words[1]))
            elif words[0] == "leave_all":
                answer = sim.leave_all()
            elif words[0] == "stats":
                with sim.lock:
                    answer = {"replies": sim.replies, "kills": sim.kills, "connected": len(sim.clients)}
            else:
                answer = {"error": f"unknown command {words[0]!r}"}
        except Exception as exc:  # report, keep serving: the test decides
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
