"""The JSON API of the real agent over real HTTP: bearer tokens, scopes and
tenants, malformed requests answered with 400/413 (and the agent still up),
and docs/api.yaml in step with the routes the agent serves. No OpenVPN:
sessions come from a status file written by the test."""

from __future__ import annotations

import json
import os
import re
import subprocess

import yaml  # python3-yaml (scripts/install-deps)

from conftest import ROOT, VPNMETER, VPNMETERD, wait_for

LISTEN = "127.0.0.1:9477"
ADMIN = "admin-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
ACME = "acme-token-0123456789abcdef"  # admin of alice and b*, not carol
STATUS = (ROOT / "tests/fixtures/openvpn/status-v2.txt").read_text()  # alice, carol, bob

# Raw HTTP/1.1 over a socket, so the test controls every byte (bad
# encodings, bodies over the limit, chunked bodies). Reads a JSON list of
# requests on stdin, prints a JSON list of {status, headers, body}.
CLIENT = r"""
import json, socket, sys

def call(req):
    body = req.get("body", "").encode("latin-1" if req.get("latin1") else "utf-8")
    if "body_size" in req:
        body = b"x" * req["body_size"]
    headers = {"Host": "127.0.0.1", "Connection": "close", **req.get("headers", {})}
    if req.get("chunked"):
        headers["Transfer-Encoding"] = "chunked"
        pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        if body or req["method"] in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        payload = body
    head = "%s %s HTTP/1.1\r\n" % (req["method"], req["path"])
    head += "".join("%s: %s\r\n" % kv for kv in headers.items()) + "\r\n"
    s = socket.create_connection(("127.0.0.1", 9477), timeout=10)
    try:
        s.sendall(head.encode("latin-1") + payload)
    except OSError:  # the agent may answer 413 and close before reading it all
        pass
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    s.close()
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0] else 0
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return {"status": status, "headers": fields, "body": rest.decode("utf-8", "replace")}

print(json.dumps([call(r) for r in json.load(sys.stdin)]))
"""


def hash_line(token: str) -> str:
    """The `sha256: "..."` line, from the agent's own --hash-token."""
    out = subprocess.run([str(VPNMETERD), "--hash-token"], input=token + "\n", capture_output=True, text=True,
                         check=True, timeout=10)
    return out.stdout.strip()


def tokens_yaml(readers=(("reader", READER),)) -> str:
    text = "http:\n  listen: " + LISTEN + "\n  tokens:\n"
    text += f"    - {{ name: admin, {hash_line(ADMIN)}, scope: admin }}\n"
    for name, token in readers:
        text += f"    - {{ name: {name}, {hash_line(token)}, scope: read }}\n"
    text += f"    - {{ name: acme, {hash_line(ACME)}, scope: admin, tenant: [alice, \"b*\"] }}\n"
    return text


def start_agent(agents, namespaces, tmp_path, http_section: str):
    ns = namespaces("api")
    status = tmp_path / "openvpn-status.txt"
    status.write_text(STATUS)
    agent = agents(ns, ["tun*"], openvpn=[{"name": "udp1194", "interface": "tun0", "status_file": str(status)}])
    agent.base_config = agent.config_path.read_text() + (
        "log: { level: debug }\n"
        "quotas:\n"
        "  plans:\n"
        "    small: { limit: 20MB, period: daily }\n"
        "  users:\n"
        "    alice: small\n"
        "    carol: small\n")
    agent.config_path.write_text(agent.base_config + http_section)
    agent.start()
    wait_for(lambda: "HTTP API on" in agent.log() or agent.proc.poll() is not None, 10, "the API")
    assert agent.proc.poll() is None, agent.log()
    return agent


def calls(agent, *requests: dict) -> list[dict]:
    out = agent.ns.run(["/usr/bin/python3", "-c", CLIENT], input=json.dumps(list(requests)), keep_mounts=True)
    answers = json.loads(out.stdout)
    for answer in answers:
        try:
            answer["json"] = json.loads(answer["body"])
        except ValueError:
            answer["json"] = None
    return answers


def call(agent, method: str, path: str, token: str | None = None, body: str | None = None, **extra) -> dict:
    request = {"method": method, "path": path, **extra}
    if token:
        request.setdefault("headers", {})["Authorization"] = f"Bearer {token}"
    if body is not None:
        request["body"] = body
    return calls(agent, request)[0]


def session_users(agent, token: str) -> list[str]:
    answer = call(agent, "GET", "/v1/sessions", ADMIN if token is None else token)
    assert answer["status"] == 200, answer
    return sorted(s["user"] for s in answer["json"]["sessions"])


def wait_sessions(agent):
    wait_for(lambda: session_users(agent, ADMIN) == ["alice", "bob", "carol"], 15, "the status file's sessions")


def test_tokens_scopes_and_tenants(agents, namespaces, tmp_path):
    agent = start_agent(agents, namespaces, tmp_path, tokens_yaml())
    wait_sessions(agent)

    missing = call(agent, "GET", "/v1/sessions")
    assert missing["status"] == 401, missing
    assert missing["json"] == {"error": "missing bearer token: send Authorization: Bearer <token>"}
    assert missing["headers"]["www-authenticate"].startswith("Bearer")
    wrong = call(agent, "GET", "/v1/users/alice/quota", "not-the-token")
    assert wrong["status"] == 401 and wrong["json"] == {"error": "unknown token"}, wrong
    assert 'error="invalid_token"' in wrong["headers"]["www-authenticate"]
    assert call(agent, "GET", "/session/alice/usage")["status"] == 401
    for path in ("/healthz", "/readyz", "/metrics"):  # open for probes and Prometheus
        wait_for(lambda: call(agent, "GET", path)["status"] == 200, 10, f"{path} without a token")

    assert call(agent, "GET", "/v1/users/alice/quota", READER)["status"] == 200
    denied = call(agent, "PUT", "/v1/users/alice/quota", READER, '{"topup_bytes": 1}')
    assert denied["status"] == 403, denied
    assert denied["json"] == {"error": "token 'reader' has scope read: PUT needs scope admin"}
    granted = call(agent, "PUT", "/v1/users/alice/quota", ADMIN, '{"topup_bytes": 1000}')
    assert granted["status"] == 200 and granted["json"]["limit_bytes"] == 20_000_000 + 1000, granted

    # The tenant's token: alice and bob exist for it, carol does not.
    assert session_users(agent, ACME) == ["alice", "bob"]
    assert call(agent, "GET", "/v1/sessions", ACME)["json"]["unattributed"] == []
    carol = call(agent, "GET", "/v1/users/carol/quota", ACME)
    assert carol["status"] == 404 and carol["json"] == {"error": "no such user: carol"}, carol
    assert call(agent, "GET", "/v1/users/carol/usage", ACME)["status"] == 404
    assert call(agent, "PUT", "/v1/users/carol/quota", ACME, '{"topup_bytes": 1}')["status"] == 404
    assert call(agent, "GET", "/v1/users/alice/quota", ACME)["status"] == 200
    assert call(agent, "PUT", "/v1/users/alice/quota", ACME, '{"topup_bytes": 1}')["status"] == 200
    ids = {s["user"]: s["id"] for s in call(agent, "GET", "/v1/sessions", ADMIN)["json"]["sessions"]}
    hidden = call(agent, "GET", f"/v1/sessions/{ids['carol']}", ACME)
    assert hidden["status"] == 404 and hidden["json"] == {"error": f"no session {ids['carol']}"}, hidden
    assert call(agent, "GET", f"/v1/sessions/{ids['carol']}/usage", ACME)["status"] == 404
    assert call(agent, "GET", f"/v1/sessions/{ids['bob']}", ACME)["json"]["user"] == "bob"

    # GET /v1/quotas lists a tenant's users only; GET /v1/status gives it no counts over every tenant.
    assert call(agent, "PUT", "/v1/users/carol/quota", ADMIN, '{"topup_bytes": 1}')["status"] == 200
    assert {"alice", "carol"} <= {u["user"] for u in call(agent, "GET", "/v1/quotas", READER)["json"]["users"]}
    tenant_users = {u["user"] for u in call(agent, "GET", "/v1/quotas", ACME)["json"]["users"]}
    assert "alice" in tenant_users and "carol" not in tenant_users, tenant_users
    assert call(agent, "GET", "/v1/quotas")["status"] == 401
    assert call(agent, "GET", "/v1/status", ACME)["json"]["quotas"] is None
    assert call(agent, "GET", "/v1/status", READER)["json"]["quotas"] == {"users_blocked": 0, "users_throttled": 0}

    # The CLI passes the token: --token, or VPNMETER_TOKEN.
    base = [VPNMETER, "quota", "get", "alice", "--json", "--api", f"http://{LISTEN}"]
    refused = agent.ns.run(base, check=False, keep_mounts=True)
    assert refused.returncode == 6 and "401" in refused.stderr and "VPNMETER_TOKEN" in refused.stderr, refused
    assert json.loads(agent.ns.run(base + ["--token", READER], keep_mounts=True).stdout)["user"] == "alice"
    env = agent.ns.run(["env", f"VPNMETER_TOKEN={ACME}", *base], keep_mounts=True)
    assert json.loads(env.stdout)["user"] == "alice"
    topup = agent.ns.run(["env", f"VPNMETER_TOKEN={READER}", VPNMETER, "quota", "topup", "alice", "5",
                          "--api", f"http://{LISTEN}"], check=False, keep_mounts=True)
    assert topup.returncode == 6 and "403" in topup.stderr, topup

    # SIGHUP with the reader's token removed: revoked at once.
    agent.config_path.write_text(agent.base_config + tokens_yaml(readers=()))
    agent.proc.send_signal(1)
    wait_for(lambda: call(agent, "GET", "/v1/sessions", READER)["status"] == 401, 10, "the revoked token to fail")
    assert call(agent, "GET", "/v1/sessions", ADMIN)["status"] == 200
    assert agent.proc.poll() is None


def test_malformed_requests_get_400_and_the_agent_stays_up(agents, namespaces, tmp_path):
    agent = start_agent(agents, namespaces, tmp_path, tokens_yaml())
    quota = "/v1/users/alice/quota"
    auth = {"Authorization": f"Bearer {ADMIN}"}
    answers = calls(
        agent,
        {"method": "PUT", "path": quota, "headers": auth, "body": "{not json"},
        {"method": "PUT", "path": quota, "headers": auth, "body": ""},
        {"method": "PUT", "path": quota, "headers": auth, "body": "[1, 2]"},
        {"method": "PUT", "path": quota, "headers": auth, "body": '{"limit": 5}'},
        {"method": "PUT", "path": quota, "headers": auth, "body": '{"limit_bytes": "5GB"}'},
        {"method": "PUT", "path": quota, "headers": auth, "body": '{"limit_bytes": -1}'},
        {"method": "PUT", "path": quota, "headers": auth, "body": '{"topup_bytes": 1.5}'},
        {"method": "PUT", "path": quota, "headers": auth, "body": '{"plan": 7}'},
        {"method": "PUT", "path": quota, "headers": auth, "body": '{"plan": "gold"}'},
        {"method": "PUT", "path": quota, "headers": auth, "body": '{"expires": "someday"}'},
        {"method": "PUT", "path": quota, "headers": auth, "body": "[" * 200_000},  # deep nesting
        {"method": "PUT", "path": quota, "headers": auth, "body": '{"limit_bytes": 1e400}'},
        {"method": "PUT", "path": quota, "headers": auth, "body": '{"plan": "\xff"}', "latin1": True},
        {"method": "PUT", "path": quota, "headers": auth, "body": '{"expires": 18446744073709551615}'},
        {"method": "PUT", "path": quota, "headers": auth, "body_size": 2 << 20},
        {"method": "PUT", "path": quota, "headers": auth, "body_size": 2 << 20, "chunked": True},
        {"method": "GET", "path": "/v1/users/al%zzice/quota", "headers": auth},
        {"method": "GET", "path": "/v1/users/alice%/quota", "headers": auth},
        {"method": "GET", "path": "/v1/users/alice%0Aforged/quota", "headers": auth},
        {"method": "GET", "path": "/v1/sessions?user=%G1", "headers": auth},
        {"method": "GET", "path": "/v1/sessions?active=maybe", "headers": auth},
        {"method": "GET", "path": "/v1/sessions?activ=1", "headers": auth},
        {"method": "GET", "path": "/v1/users/alice/usage?granularity=week", "headers": auth},
        {"method": "GET", "path": "/v1/users/alice/usage?from=yesterday", "headers": auth},
    )
    expected = [
        (400, "body is not JSON: "),
        (400, "body is not JSON: "),
        (400, "body: expected a JSON object, got array"),
        (400, "unknown field 'limit' (expected plan, limit_bytes, topup_bytes, expires)"),
        (400, "limit_bytes: expected a number of bytes (0 to 2^64-1) or null, got string \"5GB\""),
        (400, "limit_bytes: expected a number of bytes (0 to 2^64-1) or null, got number -1"),
        (400, "topup_bytes: expected a number of bytes (0 to 2^64-1), got number 1.5"),
        (400, "plan: expected a plan name, got number 7"),
        (400, "plan: no plan named 'gold' in the configuration"),
        (400, "expires: "),
        (400, "body is not JSON: "),
        (400, "body is not JSON: number overflow"),
        (400, "body is not JSON: parse error at line 1, column 11: syntax error while parsing value - invalid "
              "string: ill-formed UTF-8 byte"),
        (400, "expires: expected an RFC 3339 time, a date, unix seconds or null, got number 18446744073709551615"),
        (413, "request body over 1 MiB"),
        (413, "request body over 1 MiB"),
        (400, "path: bad percent-encoding '%zz'"),
        (400, "path: bad percent-encoding '%'"),
        (400, "path: control character '%0A' is not allowed"),
        (400, "query: bad percent-encoding '%G1'"),
        (400, "active: expected 1, 0, true or false, got 'maybe'"),
        (400, "unknown query parameter 'activ' (expected active, user)"),
        (400, "granularity: expected hour, day or month, got 'week'"),
        (400, "from/to: "),
    ]
    for answer, (status, message) in zip(answers, expected):
        assert answer["status"] == status and answer["json"]["error"].startswith(message), (answer, message)
    print("sample reasons:", [a["json"]["error"] for a in answers[:2]])
    # Nothing of the bad requests was applied.
    assert call(agent, "GET", quota, ADMIN)["json"]["limit_bytes"] == 20_000_000

    # User names are percent-decoded path segments: spaces, UTF-8, an encoded '/'.
    for user, segment in (("Jürgen K", "J%C3%BCrgen%20K"), ("a/b", "a%2Fb")):
        put = call(agent, "PUT", f"/v1/users/{segment}/quota", ADMIN, '{"limit_bytes": 5000}')
        assert put["status"] == 200 and put["json"]["user"] == user, put
        got = call(agent, "GET", f"/v1/users/{segment}/quota", ADMIN)
        assert got["json"]["user"] == user and got["json"]["limit_bytes"] == 5000, got
    out = agent.ns.run([VPNMETER, "quota", "get", "Jürgen K", "--json", "--token", READER,
                        "--api", f"http://{LISTEN}"], keep_mounts=True)
    assert json.loads(out.stdout)["limit_bytes"] == 5000

    # Names that are not UTF-8 (certificates do not promise it) answer JSON too.
    for path in ("/v1/users/%FF%FE/quota", "/v1/users/%FF%FE/usage", "/session/%FF/usage"):
        answer = call(agent, "GET", path, ADMIN)
        assert answer["status"] == 200 and answer["json"] is not None, (path, answer)
    assert call(agent, "PUT", "/v1/users/%FF%FE/quota", ADMIN, '{"limit_bytes": 1}')["status"] == 200

    assert call(agent, "GET", "/healthz")["status"] == 200
    assert agent.proc.poll() is None
    assert "internal error" not in agent.log()


def documented_routes() -> set[tuple[str, str]]:
    spec = yaml.safe_load((ROOT / "docs/api.yaml").read_text())
    methods = {"get", "put", "post", "delete", "patch"}
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item if method in methods}


def served_routes(agent) -> set[tuple[str, str]]:
    return set(re.findall(r"http route: (\S+) (\S+)", agent.log()))


def test_every_documented_route_answers_and_every_route_is_documented(agents, namespaces, tmp_path):
    agent = start_agent(agents, namespaces, tmp_path, tokens_yaml())
    wait_sessions(agent)
    served, documented = served_routes(agent), documented_routes()
    assert served, "no `http route:` lines at debug level"
    assert served - documented == set(), "routes the agent serves that docs/api.yaml does not document"
    assert documented - served == set(), "routes docs/api.yaml documents that the agent does not serve"

    session_id = call(agent, "GET", "/v1/sessions", ADMIN)["json"]["sessions"][0]["id"]
    values = {"user": "alice", "id": session_id}
    for method, pattern in sorted(documented):
        path = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)].replace(":", "%3A"), pattern)
        if pattern.startswith("/session/"):
            path = pattern.replace("{id}", "alice")  # this one's id is a common name
        body = '{"topup_bytes": 0}' if method == "PUT" else None
        answer = call(agent, method, path, ADMIN, body)
        assert answer["status"] == 200, (method, path, answer)


def test_without_tokens_the_api_is_open_and_a_wide_listen_is_warned_about(agents, namespaces, tmp_path):
    agent = start_agent(agents, namespaces, tmp_path, "http: { listen: \"0.0.0.0:9477\" }\n")
    assert "http.listen 0.0.0.0:9477 is not a loopback address and http.tokens is empty" in agent.log()
    assert call(agent, "GET", "/v1/users/alice/quota")["status"] == 200
    assert call(agent, "PUT", "/v1/users/alice/quota", body='{"topup_bytes": 1}')["status"] == 200


def test_loopback_without_tokens_is_not_warned_about(agents, namespaces, tmp_path):
    agent = start_agent(agents, namespaces, tmp_path, f"http: {{ listen: \"{LISTEN}\" }}\n")
    assert "open: no http.tokens" in agent.log()
    assert "not a loopback address" not in agent.log()


def test_hash_token_prints_the_config_line():
    assert hash_line("abc") == 'sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"'
    empty = subprocess.run([str(VPNMETERD), "--hash-token"], input="\n", capture_output=True, text=True, timeout=10)
    assert empty.returncode == 2 and "expected one token" in empty.stderr
    short = subprocess.run([str(VPNMETERD), "--hash-token"], input="abc", capture_output=True, text=True, timeout=10)
    assert short.returncode == 0 and "easy to guess" in short.stderr
    assert os.access(VPNMETERD, os.X_OK)
