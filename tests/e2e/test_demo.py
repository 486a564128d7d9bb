"""The demo (scripts/demo.py) runs, sees per-client usage grow, and cleans up."""

from __future__ import annotations

import os
import subprocess

from conftest import BUILD, ROOT
from tests.lab import netns


def test_demo_runs_and_cleans_up():
    env = dict(os.environ, VPNMETER_BUILD_DIR=str(BUILD))
    proc = subprocess.Popen(["/usr/bin/python3", "scripts/demo.py", "--seconds", "20"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the demo cleans up on SIGTERM
        out, _ = proc.communicate(timeout=60)
        raise AssertionError(f"demo did not finish within 180 s:\n{out[-4000:]}")
    assert proc.returncode == 0, f"demo exited {proc.returncode}:\n{out[-4000:]}"
    for name in ("alice", "bob", "carol"):
        assert name in out, f"{name} missing from the demo's output:\n{out[-4000:]}"
    assert "demo OK" in out, out[-4000:]
    assert netns.own_namespaces(proc.pid) == [], "demo left namespaces behind"
    assert not os.path.exists(f"/sys/fs/bpf/vpnmeter-demo-{proc.pid}"), "demo left its pins"
