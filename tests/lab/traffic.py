"""iperf3 helpers: move a known amount of traffic between two namespaces.

The server runs as a tracked process (stopped by pid); the client runs to
completion with a timeout and its --json report is parsed, so tests can
compare the agent's byte counts with what iperf3 says it moved.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field

from .netns import LabError, Namespace

DEFAULT_PORT = 5201
_RETRY = re.compile(r"busy|Connection reset by peer|Connection refused")


@dataclass
class IperfResult:
    """Payload bytes as iperf3 reports them (sender and receiver side).

    sent_bytes is what the sender wrote; TCP delivers all of it.  For very
    short tests (small -n) iperf3 3.12 may stop the receiver's count early,
    so received_bytes can be lower than what really crossed the link.
    """
    sent_bytes: int
    received_bytes: int
    seconds: float
    reverse: bool
    raw: dict = field(repr=False)

    @property
    def bits_per_second(self) -> float:
        return self.received_bytes * 8 / self.seconds if self.seconds else 0.0


def start_server(ns: Namespace, port: int = DEFAULT_PORT,
                 bind: str | None = None, one_off: bool = False,
                 timeout: float = 10) -> subprocess.Popen:
    """Start `iperf3 -s` in ns and wait until it listens.

    one_off: exit after one test (-1).  Otherwise it serves tests one at a
    time until stopped with ns.kill(proc) or ns.close().
    """
    cmd = ["iperf3", "-s", "-p", str(port)]
    if one_off:
        cmd.append("-1")
    if bind:
        cmd += ["-B", bind]
    proc = ns.popen(cmd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"iperf3 server exited ({proc.returncode}) in {ns.name}")
        if ns.run(["ss", "-Hltn", f"sport = :{port}"]).stdout.strip():
            return proc
        time.sleep(0.05)
    ns.kill(proc)
    raise LabError(f"iperf3 server in {ns.name} not listening after {timeout}s")


def run_client(ns: Namespace, server: str, port: int = DEFAULT_PORT, *,
               seconds: float | None = None, nbytes: int | None = None,
               reverse: bool = False, bind: str | None = None,
               timeout: float | None = None, extra=()) -> IperfResult:
    """Run an iperf3 TCP test from ns to server (IPv4 or IPv6 literal).

    Upload (client -> server) by default, download with reverse=True (-R).
    Give either seconds (-t) or nbytes (-n); default 2 seconds.
    """
    if seconds is not None and nbytes is not None:
        raise ValueError("give seconds or nbytes, not both")
    cmd = ["iperf3", "-c", server, "-p", str(port), "--json",
           "--connect-timeout", "3000"]
    if nbytes is not None:
        cmd += ["-n", str(int(nbytes))]
        timeout = timeout or 60
    else:
        seconds = 2 if seconds is None else seconds
        cmd += ["-t", str(seconds)]
        timeout = timeout or seconds + 20
    if reverse:
        cmd.append("-R")
    if bind:
        cmd += ["-B", bind]
    cmd += list(extra)
    # A server that just finished a test is briefly busy: it says so, resets
    # the new control connection, or is re-creating its listening socket
    # (refused).  Seen most over tcp-server tunnels, where tests end slowly.
    deadline = time.monotonic() + 10
    while True:
        res = ns.run(cmd, check=False, timeout=timeout)
        try:
            data = json.loads(res.stdout)
        except json.JSONDecodeError:
            raise LabError(f"iperf3 gave no JSON (rc {res.returncode}): "
                           f"{res.stderr.strip() or res.stdout[-500:]}") from None
        err = data.get("error", "")
        # Retry only if nothing was measured, so no traffic is counted twice.
        if _RETRY.search(err) and not data.get("intervals") \
                and time.monotonic() < deadline:
            time.sleep(0.2)
            continue
        if err or res.returncode != 0:
            raise LabError(f"iperf3 -c {server}: {err or res.stderr.strip()}")
        break
    end = data["end"]
    return IperfResult(sent_bytes=int(end["sum_sent"]["bytes"]),
                       received_bytes=int(end["sum_received"]["bytes"]),
                       seconds=float(end["sum_received"]["seconds"]),
                       reverse=reverse, raw=data)
