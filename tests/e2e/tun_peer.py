"""The far side of a tun device, driven by a live test.

Run inside a network namespace (`ip netns exec NS python3 tun_peer.py ...`).
It creates the tun device DOWN (so the agent can attach before any packet
exists), and then obeys line commands on stdin, answering one JSON line each:

  up     bring the device up; a reader thread drains every packet the kernel
         sends into the tun (so the device's tx counters see them all)
  send   write crafted packets from clients into the tun (upload) and send
         UDP from this namespace to the clients (download); answer with what
         was sent per client address, in IP bytes and packets
  quit   close the device (it disappears) and exit

Packets are exact and known, so the test can check bytes per client, not
just totals.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
SERVER_PORT = 9000


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp4(src: str, dst: str, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, SERVER_PORT, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + udp


def udp6(src: str, dst: str, payload: bytes) -> bytes:
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    length = 8 + len(payload)
    pseudo = s + d + struct.pack("!I3xB", length, 17)
    udp = struct.pack("!HHHH", 40000, SERVER_PORT, length, 0) + payload
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    return struct.pack("!IHBB", 6 << 28, length, 17, 64) + s + d + udp


class Peer:
    def __init__(self, name: str, addr4: str, addr6: str, clients: list[str]):
        self.name = name
        self.server4 = addr4.split("/")[0]
        self.server6 = addr6.split("/")[0]
        self.clients = clients
        self.fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        subprocess.run(["ip", "addr", "add", addr4, "dev", name], check=True)
        subprocess.run(["ip", "addr", "add", addr6, "dev", name, "nodad"], check=True)
        self.received = 0
        self.lock = threading.Lock()
        self.sinks = []  # bound sockets: upload packets find a listener, no ICMP errors back

    def up(self):
        subprocess.run(["ip", "link", "set", self.name, "up"], check=True)
        for family, addr in ((socket.AF_INET, self.server4), (socket.AF_INET6, self.server6)):
            sink = socket.socket(family, socket.SOCK_DGRAM)
            sink.bind((addr, SERVER_PORT))
            self.sinks.append(sink)
        threading.Thread(target=self.drain, daemon=True).start()
        return {"up": self.name}

    def drain(self):
        while True:
            try:
                packet = os.read(self.fd, 65536)
            except OSError:
                return
            with self.lock:
                self.received += 1

    def send(self):
        sent = {}

        def note(addr, direction, size):
            entry = sent.setdefault(addr, {"upload_bytes": 0, "upload_packets": 0,
                                           "download_bytes": 0, "download_packets": 0})
            entry[f"{direction}_bytes"] += size
            entry[f"{direction}_packets"] += 1

        for i, client in enumerate(self.clients):
            v6 = ":" in client
            for size in (1, 100, 1000 + i):
                packet = udp6(client, self.server6, bytes(size)) if v6 else udp4(client, self.server4, bytes(size))
                os.write(self.fd, packet)
                note(client, "upload", len(packet))
        # A truncated IPv4 packet: no client address to take, so unattributed.
        os.write(self.fd, bytes([0x45]) + bytes(9))
        with self.lock:
            before = self.received
        expected = 0
        for i, client in enumerate(self.clients):
            v6 = ":" in client
            with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
                for size in (10, 500 + i):
                    s.sendto(bytes(size), (client, 7000))
                    note(client, "download", (48 if v6 else 28) + size)
                    expected += 1
        self.wait_quiet(before + expected)
        return {"sent": sent}

    def wait_quiet(self, at_least: int, timeout: float = 10):
        """Until the reader has seen `at_least` packets and nothing new for a while."""
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            with self.lock:
                now = self.received
            if now != last:
                last, last_change = now, time.monotonic()
            if now >= at_least and time.monotonic() - last_change > 0.3:
                return
            time.sleep(0.05)
        raise RuntimeError(f"tun reader saw {last} packets, expected at least {at_least}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--addr4", default="10.66.0.1/24")
    parser.add_argument("--addr6", default="fd66::1/64")
    parser.add_argument("--clients", default="10.66.0.2,10.66.0.3,fd66::2")
    args = parser.parse_args()
    peer = Peer(args.name, args.addr4, args.addr6, args.clients.split(","))
    print(json.dumps({"ready": args.name}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        handler = {"up": peer.up, "send": peer.send}.get(command)
        try:
            answer = handler() if handler else {"error": f"unknown command {command!r}"}
        except Exception as exc:  # report, keep serving: the test decides
            answer = {"error": str(exc)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
