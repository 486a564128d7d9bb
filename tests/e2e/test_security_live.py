"""Security promises of the real agent: a configuration file others could
change is refused (at start, by --check-config and on SIGHUP), and the
store's files are private. (The API's 401 without a token and tenant
isolation are in test_api_live.py; no shell-outs is the no-shell-outs CTest
check; the fuzz targets under tests/fuzz check both API promises too.)"""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess

from conftest import VPNMETERD, wait_for

NOBODY = 65534


def vpnmeterd(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(VPNMETERD), *args], capture_output=True, text=True, timeout=30)


def write_config(tmp_path: pathlib.Path, mode: int) -> pathlib.Path:
    path = tmp_path / "vpnmeter.yaml"
    path.write_text(f"interfaces: [tun0]\n"
                    f"bpf: {{ pin_path: /sys/fs/bpf/vpnmeter-security-{os.getpid()} }}\n"
                    f"storage: {{ path: {tmp_path / 'store'} }}\n"
                    f"http: {{ listen: \"\" }}\n")
    path.chmod(mode)
    return path


def test_a_world_writable_config_is_refused_at_start_and_by_check_config(tmp_path):
    path = write_config(tmp_path, 0o666)
    checked = vpnmeterd("--check-config", "--config", str(path))
    assert checked.returncode == 2, checked
    assert checked.stderr == (f"vpnmeterd: {path}: refusing a world-writable configuration (mode 0666): any user "
                              f"could change what vpnmeterd does; chmod o-w {path}\n")

    started = vpnmeterd("--config", str(path))  # the daemon itself: refused before it touches anything
    assert started.returncode == 2 and "world-writable" in started.stderr, started
    assert not (tmp_path / "store").exists()
    assert not os.path.exists(f"/sys/fs/bpf/vpnmeter-security-{os.getpid()}")

    path.chmod(0o644)
    checked = vpnmeterd("--check-config", "--config", str(path))
    assert checked.returncode == 0 and checked.stdout.startswith(f"{path}: OK"), checked


def test_as_root_a_config_owned_by_another_user_is_refused(tmp_path):
    assert os.geteuid() == 0, "the live tests run as root"
    path = write_config(tmp_path, 0o644)
    os.chown(path, NOBODY, NOBODY)
    checked = vpnmeterd("--check-config", "--config", str(path))
    assert checked.returncode == 2, checked
    assert f"{path}: refusing a configuration owned by uid {NOBODY} while running as root (mode 0644)" \
        in checked.stderr, checked
    os.chown(path, 0, 0)
    assert vpnmeterd("--check-config", "--config", str(path)).returncode == 0


def test_reload_of_a_config_made_world_writable_is_rejected_and_the_store_is_private(agents, namespaces):
    ns = namespaces("security")
    agent = agents(ns, ["tun*"])
    agent.start()
    store = pathlib.Path(agent.store_path)
    wait_for(lambda: (store / "data.mdb").exists() or agent.proc.poll() is not None, 10, "the store")
    assert agent.proc.poll() is None, agent.log()
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE((store / name).stat().st_mode) == 0o600, name

    agent.config_path.chmod(0o666)
    agent.proc.send_signal(1)  # SIGHUP
    wait_for(lambda: "reload rejected" in agent.log(), 10, "the reload to be rejected")
    assert f"{agent.config_path}: refusing a world-writable configuration (mode 0666)" in agent.log()
    assert agent.proc.poll() is None, "a rejected reload keeps the agent running"
