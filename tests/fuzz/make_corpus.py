#!/usr/bin/python3
"""Writes the seed corpora in tests/fuzz/corpus/<target>/ from the project's
real inputs: the captured OpenVPN 2.6 status files and management
transcripts (tests/fixtures/openvpn), the shipped config and the config
reference's examples, and requests like the CLI and the live tests send.
Run it after changing those inputs; the output is committed."""
import hashlib
import pathlib
import re
import shutil

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures/openvpn"
CORPUS = ROOT / "tests/fuzz/corpus"
PIECE = 4096  # seeds stay small: libFuzzer's -max_len follows the largest


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    (CORPUS / target / name).write_bytes(data)


def pieces(data, size=PIECE):
    """Splits at line ends into pieces of at most `size` bytes."""
    out, current = [], b""
    for line in data.splitlines(keepends=True):
        if current and len(current) + len(line) > size:
            out.append(current)
            current = b""
        current += line
    if current:
        out.append(current)
    return out


def status():
    for version in (1, 2, 3):
        text = (FIXTURES / f"status-v{version}.txt").read_text()
        write("status", f"v{version}.txt", text)
        write("status", f"v{version}-crlf.txt", text.replace("\n", "\r\n"))  # as the management interface sends it
    v2 = (FIXTURES / "status-v2.txt").read_text()
    write("status", "v2-no-header.txt", "".join(l for l in v2.splitlines(True) if not l.startswith("HEADER,")))
    write("status", "v2-truncated.txt", v2[: len(v2) // 2])


def management():
    # [chunk size] [replies announced] [multi-line bits] + what the server sent.
    announced = {
        "mgmt-status": (4, 0b11110),  # bytecount 1, status 1, 2, 3 (status 4 is refused with ERROR:)
        "mgmt-client-auth": (2, 0b00),
        "mgmt-notify": (1, 0b0),
        "mgmt-password": (2, 0b00),
        "mgmt-password-bad": (3, 0b000),
        "mgmt-second-client": (1, 0b0),
    }
    for stem, (count, kinds) in announced.items():
        data = (FIXTURES / f"{stem}.txt").read_bytes()
        for i, piece in enumerate(pieces(data)):
            write("management", f"{stem}-{i}", bytes([15, count, kinds]) + piece)


def config():
    write("config", "vpnmeter.yaml", (ROOT / "config/vpnmeter.yaml").read_text())
    readme = (ROOT / "config/README.md").read_text()
    for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", readme, re.S)):
        text = block if block.lstrip().startswith("interfaces") else "interfaces: [tun0]\n" + block
        write("config", f"readme-{i}.yaml", text)
    write("config", "every-section.yaml", """\
interfaces: [tun0, "tun*"]
collect: { interval: 250ms }
bpf: { max_clients: 1_000_000, pin_path: /sys/fs/bpf/vpnmeter-test/ }
storage: { path: /var/lib/vpnmeter-test, timezone: Europe/Berlin, hourly_retention_days: 7, daily_retention_days: 400 }
log: { level: debug }
openvpn:
  - { name: udp1194, interface: tun0, management: 127.0.0.1:7505, management_password_file: /etc/openvpn/pw, user_from: username }
  - { name: tcp443, interface: tun1, status_file: /run/openvpn/tcp443.status }
quotas:
  timezone: Europe/Berlin
  thresholds: [75, 90, 100]
  plans:
    small:  { limit: 20MB, period: daily, action: block }
    capped: { limit: 5GiB, period: monthly, billing_day: 15, action: { throttle: 1Mbit } }
    trial:  { limit: 1GB, period: total, expires: 2026-12-31, action: disconnect }
    fast:   { limit: 5GB, period: weekly, speed: { download: 12Mbit, upload: 12Mbit }, action: none }
  users:
    "acme-*": capped
    bob: small
    "*": trial
alerts:
  webhook: { url: "http://127.0.0.1:8089/hook", timeout: 5s, retries: 3 }
http:
  listen: "[::1]:9477"
  tokens:
    - { name: ops, sha256: "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8", scope: admin }
    - { name: billing, sha256: "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b", scope: read, tenant: ["acme-*"] }
metrics: { per_session: true, max_sessions: 500, hash_users: true }
singbox: { future: section }
""")
    # Findings, kept as seeds so every run tries them again.
    write("config", "regression-duration-1e300.yaml", "interfaces: [tun0]\ncollect: { interval: 1e300s }\n")


# The tokens api_fuzz.cpp configures.
ADMIN, READER = "adm1n-7f3a9c2e4b6d8f01", "read3r-5e7c9a1b3d5f7e92"
TENANT, TENANT_RO = "tenant-acme-2b4d6f8a0c1e3579", "tenant-ro-8a6c4e2f0b9d7153"


def api():
    def request(method, target, token=None, body="", extra=""):
        head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:9477\r\nUser-Agent: vpnmeter/0.1.0\r\nAccept: */*\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return head + extra + "\r\n" + body

    seeds = [
        request("GET", "/healthz"),
        request("GET", "/readyz"),
        request("GET", "/v1/sessions"),
        request("GET", "/v1/sessions?active=1", ADMIN),
        request("GET", "/v1/sessions?user=bob&active=false", READER),
        request("GET", "/v1/sessions", TENANT),
        request("GET", "/v1/sessions/udp1194:bob:1", TENANT),
        request("GET", "/v1/sessions/udp1194:carol:1/usage", ADMIN),
        request("GET", "/v1/users/acme-1/usage?from=2026-11-01&to=2026-11-30T00:00:00Z&granularity=hour", TENANT_RO),
        request("GET", "/v1/users/carol/usage?granularity=month", TENANT),
        request("GET", "/v1/users/al%20ice/usage?from=1795000000", READER),
        request("GET", "/session/bob/usage", TENANT),
        request("GET", "/v1/users/bob/quota", READER),
        request("PUT", "/v1/users/bob/quota", ADMIN, '{"plan": "small"}'),
        request("PUT", "/v1/users/acme-7/quota", TENANT, '{"topup_bytes": 100000000000, "limit_bytes": null}'),
        request("PUT", "/v1/users/bob/quota", TENANT, '{"expires": "2026-12-31T23:59:59Z", "plan": "week"}'),
        request("PUT", "/v1/users/carol/quota", READER, '{"limit_bytes": 5000000000}'),
        request("PUT", "/v1/users/bob/quota", ADMIN, '{"expires": 1798761600, "plan": "unlimited"}'),
        request("DELETE", "/v1/users/bob/quota", ADMIN),
        request("GET", "/v1/sessions", None, extra="Authorization: Basic YWRtaW46YWRtaW4=\r\n"),
        request("GET", "/v1/sessions?active=1&active=0", f"{ADMIN}x"),
    ]
    for seed in seeds:
        write("api", hashlib.sha1(seed.encode()).hexdigest()[:16], seed)


for target, make in (("status", status), ("management", management), ("config", config), ("api", api)):
    shutil.rmtree(CORPUS / target, ignore_errors=True)
    (CORPUS / target).mkdir(parents=True)
    make()
    files = list((CORPUS / target).iterdir())
    print(f"{target}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")
