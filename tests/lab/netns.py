"""Network namespaces for the test lab, with cleanup that survives failures.

Every namespace is named ``vpnm-<pid>-<n>-<role>`` so parallel runs never
clash, and so a final sweep can find whatever this process left behind.
Processes started in a namespace are tracked and stopped by pid.  Cleanup
runs from ``close()``, from ``atexit`` and from a SIGTERM/SIGINT handler, so
a failing test or Ctrl-C does not leak namespaces, veths or daemons.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

PREFIX = "vpnm"
NETNS_DIR = "/run/netns"

_counter = itertools.count(1)
_live: list = []            # objects with close(), newest last
_handlers_installed = False
_prev_handlers: dict = {}
_libc = ctypes.CDLL(None, use_errno=True)  # loaded before any fork


class LabError(RuntimeError):
    """Raised when the lab cannot be set up or a wait times out."""


# ---------------------------------------------------------------- cleanup

def track(obj) -> None:
    """Register obj (has close()) for cleanup at exit or on SIGTERM/SIGINT."""
    _install_handlers()
    _live.append(obj)


def untrack(obj) -> None:
    try:
        _live.remove(obj)
    except ValueError:
        pass


def cleanup_all() -> None:
    """Close every tracked object (newest first), then sweep our namespaces."""
    while _live:
        obj = _live.pop()
        try:
            obj.close()
        except Exception as exc:  # keep cleaning the rest
            print(f"lab cleanup: {obj!r}: {exc}", file=sys.stderr, flush=True)
    sweep_own_namespaces()


def own_namespaces(pid: int | None = None) -> list[str]:
    """Names of namespaces created by process pid (default: this process)."""
    mine = f"{PREFIX}-{pid or os.getpid()}-"
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(mine))
    except FileNotFoundError:
        return []


def sweep_own_namespaces() -> None:
    """Last resort: kill anything inside our leftover namespaces, delete them."""
    for name in own_namespaces():
        _kill_ns_pids(name)
        subprocess.run(["ip", "netns", "del", name], capture_output=True,
                       timeout=10)


def _dead(pid: str) -> bool:
    return pid.isdigit() and not os.path.exists(f"/proc/{pid}")


def sweep_stale() -> list[str]:
    """Remove what SIGKILLed runs left: their vpnm-<pid>-* namespaces and
    vpnm-lab-<pid>-* temp dirs.  Runs of live processes are left alone.
    Returns what was removed.
    """
    done = []
    names = os.listdir(NETNS_DIR) if os.path.isdir(NETNS_DIR) else []
    for name in names:
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == PREFIX and _dead(parts[1]):
            _kill_ns_pids(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True,
                           timeout=10)
            done.append(name)
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        parts = name.split("-")
        if name.startswith(f"{PREFIX}-lab-") and len(parts) >= 4 \
                and _dead(parts[2]):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
            done.append(os.path.join(tmp, name))
    return done


def _on_signal(signum, frame):
    # Ignore repeats while cleaning so a second Ctrl-C cannot cut it short.
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
    print(f"lab: {signal.Signals(signum).name}, cleaning up", file=sys.stderr,
          flush=True)
    try:
        cleanup_all()
    finally:  # stay armed: the process may go on (and build another lab)
        for s in _prev_handlers:
            signal.signal(s, _on_signal)
    prev = _prev_handlers.get(signum)
    if callable(prev) and prev is not signal.default_int_handler:
        return prev(signum, frame)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(cleanup_all)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    for s in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(s)
        if prev is signal.SIG_IGN:
            continue  # e.g. started with nohup: keep ignoring
        _prev_handlers[s] = prev
        signal.signal(s, _on_signal)


def _die_with_parent() -> None:
    """preexec_fn: children get SIGKILL if this Python dies without cleanup."""
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _kill_ns_pids(name: str) -> None:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                         text=True, timeout=10).stdout
    for pid in (int(p) for p in out.split()):
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop_processes(procs, timeout: float = 3.0) -> None:
    """SIGTERM every proc by pid, SIGKILL those still alive after timeout.

    Signals all first, then waits, so slow exits (openvpn's exit-notify
    takes ~2 s) overlap.  Uses poll(), not wait(): safe even from a signal
    handler that interrupted a wait() on the same process.
    """
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            alive = [p for p in alive if p.poll() is None]
        if not alive:
            return


def stop_process(proc: subprocess.Popen, timeout: float = 3.0) -> None:
    """SIGTERM proc by pid, SIGKILL it after timeout; reap it."""
    stop_processes([proc], timeout)


# --------------------------------------------------------------- namespace

def _sh(cmd: list[str], check: bool = True, timeout: float = 30,
        input: str | None = None) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=timeout, input=input)
    except subprocess.TimeoutExpired:
        raise LabError(f"command timed out after {timeout}s: "
                       f"{' '.join(cmd)}") from None
    if check and res.returncode != 0:
        raise LabError(f"command failed ({res.returncode}): {' '.join(cmd)}\n"
                       f"{res.stderr.strip() or res.stdout.strip()}")
    return res


class Namespace:
    """One network namespace with loopback up and IPv6 DAD disabled."""

    def __init__(self, role: str):
        self.role = role
        self.name = f"{PREFIX}-{os.getpid()}-{next(_counter)}-{role}"
        self.procs: list[subprocess.Popen] = []
        self.closed = False
        track(self)  # before creating it, so an interrupt mid-way is covered
        _sh(["ip", "netns", "add", self.name])
        self.ip("link", "set", "lo", "up")
        # Addresses must be usable at once: no duplicate address detection.
        self.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0",
                  "net.ipv6.conf.default.accept_dad=0",
                  "net.ipv6.conf.all.disable_ipv6=0",
                  "net.ipv6.conf.default.disable_ipv6=0"])

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.name}"

    def exec_argv(self) -> list[str]:
        """Prefix for a command run inside (own mount ns, /sys shows the ns)."""
        return ["ip", "netns", "exec", self.name]

    def nsenter_argv(self) -> list[str]:
        """Prefix that enters only the net ns, keeping the host's mounts
        (bpffs, cgroups); note /sys/class/net then still shows the host."""
        return ["nsenter", f"--net={self.path}", "--"]

    def _argv(self, cmd, keep_mounts: bool) -> list[str]:
        return (self.nsenter_argv() if keep_mounts else self.exec_argv()) \
            + [str(c) for c in cmd]

    def run(self, cmd, check: bool = True, timeout: float = 60,
            keep_mounts: bool = False,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run argv inside the namespace, capture text output."""
        return _sh(self._argv(cmd, keep_mounts), check=check, timeout=timeout,
                   input=input)

    def ip(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        """`ip -n <ns> ...` (no exec needed)."""
        return _sh(["ip", "-n", self.name, *map(str, args)], check=check)

    def popen(self, cmd, log: str | None = None, keep_mounts: bool = False,
              **kwargs) -> subprocess.Popen:
        """Start a long-running process inside; it is stopped by close().

        log: file to append stdout+stderr to (default: discarded).
        keep_mounts: start via nsenter_argv() instead of `ip netns exec`
        (for the agent, which needs the host's bpffs and cgroup mounts).
        """
        if self.closed:
            raise LabError(f"{self.name} is closed")
        if log is not None:
            out = open(log, "ab")
            kwargs.setdefault("stdout", out)
            kwargs.setdefault("stderr", subprocess.STDOUT)
        else:
            out = None
            kwargs.setdefault("stdout", subprocess.DEVNULL)
            kwargs.setdefault("stderr", subprocess.DEVNULL)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        # Own session: a terminal Ctrl-C reaches only us, and we stop the
        # children in order.  `ip netns exec` and `nsenter` exec the command,
        # so proc.pid is the command's own pid.
        try:
            # PDEATHSIG fires when the forking *thread* exits: main only.
            if threading.current_thread() is threading.main_thread():
                kwargs.setdefault("preexec_fn", _die_with_parent)
            proc = subprocess.Popen(self._argv(cmd, keep_mounts),
                                    start_new_session=True, **kwargs)
        finally:
            if out is not None:
                out.close()
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen, timeout: float = 3.0) -> None:
        """Stop one process started by popen() (by pid)."""
        stop_process(proc, timeout)
        if proc in self.procs:
            self.procs.remove(proc)

    def link_stats(self, ifname: str) -> dict:
        """stats64 of an interface inside the namespace (rx/tx bytes, ...)."""
        out = self.ip("-s", "-j", "link", "show", "dev", ifname).stdout
        st = json.loads(out)[0]["stats64"]
        return {"rx_bytes": st["rx"]["bytes"], "rx_packets": st["rx"]["packets"],
                "tx_bytes": st["tx"]["bytes"], "tx_packets": st["tx"]["packets"]}

    def addresses(self, ifname: str) -> tuple[str | None, str | None]:
        """(IPv4, global IPv6) of ifname, None where absent or no device."""
        res = self.ip("-j", "addr", "show", "dev", ifname, check=False)
        if res.returncode != 0 or not res.stdout.strip():
            return None, None
        v4 = v6 = None
        for a in json.loads(res.stdout)[0].get("addr_info", []):
            if a["family"] == "inet" and v4 is None:
                v4 = a["local"]
            elif a["family"] == "inet6" and a.get("scope") == "global" \
                    and v6 is None:
                v6 = a["local"]
        return v4, v6

    def close(self) -> None:
        """Stop our processes by pid, then anything left inside, delete ns.

        Idempotent, and re-entrant from the signal handler: every step can
        be repeated, so `closed` is set only at the end.
        """
        if self.closed:
            return
        stop_processes(self.procs)
        self.procs.clear()
        if os.path.exists(self.path):
            _kill_ns_pids(self.name)  # e.g. started with nsenter by a caller
            _sh(["ip", "netns", "del", self.name], check=False)
        self.closed = True
        untrack(self)


def _addrs(addr) -> list[str]:
    if addr is None:
        return []
    return [addr] if isinstance(addr, str) else list(addr)


def add_address(ns: Namespace, ifname: str, addr: str) -> None:
    """Add a CIDR address; IPv6 with nodad so it is usable at once."""
    extra = ["nodad"] if ":" in addr else []
    ns.ip("addr", "add", addr, "dev", ifname, *extra)


def veth_pair(ns_a: Namespace, ns_b: Namespace, addr_a=None, addr_b=None,
              name_a: str = "eth0", name_b: str = "eth0",
              master_b: str | None = None) -> None:
    """Connect two namespaces with a veth pair, both ends up.

    Created directly inside the namespaces (never in the host's), so names
    only need to be unique per namespace.  addr_*: CIDR string or list of
    them (IPv4 and/or IPv6).  master_b: bridge in ns_b to enslave end b to.
    """
    _sh(["ip", "-n", ns_a.name, "link", "add", name_a, "type", "veth",
         "peer", "name", name_b, "netns", ns_b.name])
    for ns, name, addr in ((ns_a, name_a, addr_a), (ns_b, name_b, addr_b)):
        for a in _addrs(addr):
            add_address(ns, name, a)
    if master_b:
        ns_b.ip("link", "set", name_b, "master", master_b)
    ns_a.ip("link", "set", name_a, "up")
    ns_b.ip("link", "set", name_b, "up")


def bridge(ns: Namespace, name: str = "br0", addr=None) -> None:
    """Create an up bridge in ns (e.g. an underlay switch)."""
    ns.ip("link", "add", name, "type", "bridge")
    for a in _addrs(addr):
        add_address(ns, name, a)
    ns.ip("link", "set", name, "up")
