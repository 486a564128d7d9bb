"""The .deb and the .rpm: built by cpack from the build directory, checked
(lintian, rpm metadata, file lists, dependencies), then the .deb installed on
this machine, a daemon from it counting in a namespace, upgraded to a newer
version with usage kept and counting through the restart, removed (store
kept) and purged (store gone).

The install test refuses to run on a machine where a vpnmeter package, its
config, its store or its default pin path already exist: it would change or
delete someone's data. It then skips and says why."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import stat
import subprocess

import pytest

from conftest import BUILD, Agent, wait_for
from tests.lab import netns

OLD, NEW = "0.1.0", "0.1.1"
ETC_CONFIG = pathlib.Path("/etc/vpnmeter/vpnmeter.yaml")
STORE = pathlib.Path("/var/lib/vpnmeter")
DEFAULT_PINS = pathlib.Path("/sys/fs/bpf/vpnmeter")
UNIT = pathlib.Path("/usr/lib/systemd/system/vpnmeter.service")
POLICY_RC_D = pathlib.Path("/usr/sbin/policy-rc.d")
WANTS = pathlib.Path("/etc/systemd/system/multi-user.target.wants/vpnmeter.service")
# The unit's CapabilityBoundingSet (checked below): the daemon must work
# with only these.
UNIT_CAPS = "-all,+bpf,+net_admin,+perfmon"
# The unit's ProtectSystem=strict, ProtectKernelTunables=yes and
# ReadWritePaths= (no systemd here to apply them): in a mount namespace of
# its own, every mount read-only but the store and the bpf filesystem.
READ_ONLY_SYSTEM = """
set -e
for mount in $(awk '{ print $5 }' /proc/self/mountinfo | sort -u); do
    case "$mount" in /dev|/dev/*|/proc) continue ;; esac
    mount -o remount,bind,ro "$mount" 2>/dev/null || true
done
mount -o remount,bind,ro /proc/sys 2>/dev/null || mount --bind -o ro /proc/sys /proc/sys
mount --bind /var/lib/vpnmeter /var/lib/vpnmeter && mount -o remount,bind,rw /var/lib/vpnmeter
mount -o remount,bind,rw /sys/fs/bpf
exec "$@"
"""
# Each UDP datagram below: 14 (Ethernet) + 20 (IPv4) + 8 (UDP) + 972 bytes.
FRAME = 1014


def run(argv, check=True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def cpack(out: pathlib.Path, generator: str, version: str | None = None) -> pathlib.Path:
    env = dict(os.environ)
    if version:
        env["VPNMETER_PACKAGE_VERSION"] = version
    run(["cpack", "--config", BUILD / "CPackConfig.cmake", "-G", generator, "-B", out], env=env)
    name = (f"vpnmeter_{version or OLD}_amd64.deb" if generator == "DEB" else
            f"vpnmeter-{version or OLD}.x86_64.rpm")
    assert (out / name).is_file(), f"cpack made {sorted(p.name for p in out.iterdir())}, not {name}"
    return out / name


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """vpnmeter_0.1.0_amd64.deb, vpnmeter-0.1.0.x86_64.rpm and, from the same
    build, vpnmeter_0.1.1_amd64.deb to upgrade to."""
    out = tmp_path_factory.mktemp("packages")
    return {"deb": cpack(out / "old", "DEB"), "rpm": cpack(out / "old", "RPM"),
            "new_deb": cpack(out / "new", "DEB", NEW)}


def deb_field(deb: pathlib.Path, field: str) -> str:
    return run(["dpkg-deb", "--field", deb, field]).stdout.strip()


def test_deb_metadata_files_and_dependencies(packages):
    deb = packages["deb"]
    assert deb_field(deb, "Package") == "vpnmeter"
    assert deb_field(deb, "Version") == OLD
    assert deb_field(deb, "Architecture") == "amd64"
    depends = {d.split()[0] for d in deb_field(deb, "Depends").split(", ")}
    # From the binaries (dpkg-shlibdeps), not a hand-kept list. prometheus-cpp is
    # not among them: /metrics is rendered by the agent (exporters/metrics.cpp),
    # byte for byte what prometheus-cpp's serializer writes, which the unit tests
    # and the benchmark use as the reference; nothing of it is linked at run time.
    for lib in ("libbpf1", "liblmdb0", "libyaml-cpp0.7", "libnl-3-200", "libnl-route-3-200",
                "libcivetweb1", "libsystemd0", "libcurl4", "tzdata"):
        assert lib in depends, f"{lib} missing from Depends: {sorted(depends)}"
    files = {}
    for line in run(["dpkg-deb", "--contents", deb]).stdout.splitlines():
        mode, owner, _, _, _, path = line.split(None, 5)
        files[path.removeprefix(".").rstrip("/")] = (mode, owner)
    expected = {
        "/usr/sbin/vpnmeterd": "-rwxr-xr-x", "/usr/bin/vpnmeter": "-rwxr-xr-x",
        "/etc/vpnmeter/vpnmeter.yaml": "-rw-r--r--", "/var/lib/vpnmeter": "drwx------",
        "/usr/lib/systemd/system/vpnmeter.service": "-rw-r--r--",
        "/usr/share/vpnmeter/grafana/vpnmeter.json": "-rw-r--r--",
        "/usr/share/vpnmeter/prometheus/vpnmeter-rules.yml": "-rw-r--r--",
        "/usr/share/man/man8/vpnmeterd.8.gz": "-rw-r--r--", "/usr/share/man/man1/vpnmeter.1.gz": "-rw-r--r--",
        "/usr/share/doc/vpnmeter/copyright": "-rw-r--r--", "/usr/share/doc/vpnmeter/operator-guide.md": "-rw-r--r--",
    }
    for path, mode in expected.items():
        assert path in files, f"{path} is not in the .deb"
        assert files[path] == (mode, "root/root"), f"{path}: {files[path]}"
    # The BPF object is inside vpnmeterd (the skeleton), not a file beside it.
    assert not [p for p in files if p.endswith(".bpf.o")]
    control = run(["dpkg-deb", "--info", deb, "conffiles"]).stdout.split()
    assert control == [str(ETC_CONFIG)]


def test_lintian_finds_no_errors_or_warnings(packages):
    result = run(["lintian", "--allow-root", "--tag-display-limit", "0", packages["deb"]], check=False)
    complaints = [line for line in result.stdout.splitlines() if line.startswith(("E:", "W:"))]
    assert not complaints, result.stdout
    assert result.returncode == 0, f"lintian exited {result.returncode}:\n{result.stdout}\n{result.stderr}"


def test_rpm_metadata_files_and_requires(packages):
    rpm = packages["rpm"]
    info = dict(line.split(":", 1) for line in run(["rpm", "-qpi", rpm]).stdout.splitlines()
                if ":" in line and not line.startswith(" "))
    info = {k.strip(): v.strip() for k, v in info.items()}
    assert (info["Name"], info["Version"], info["Architecture"]) == ("vpnmeter", OLD, "x86_64"), info
    assert "eBPF" in info["Summary"]
    description = run(["rpm", "-qp", "--queryformat", "%{DESCRIPTION}", rpm]).stdout
    assert description.startswith("vpnmeterd counts every byte"), description
    files = set(run(["rpm", "-qpl", rpm]).stdout.split())
    for path in ("/usr/sbin/vpnmeterd", "/usr/bin/vpnmeter", str(ETC_CONFIG), str(STORE), str(UNIT),
                 "/usr/share/vpnmeter/grafana/vpnmeter.json", "/usr/share/vpnmeter/prometheus/vpnmeter-rules.yml",
                 "/usr/share/man/man8/vpnmeterd.8.gz"):
        assert path in files, f"{path} is not in the .rpm"
    # Directories of the base system are not the package's to own.
    for path in ("/usr", "/usr/bin", "/usr/sbin", "/etc", "/var/lib", "/usr/lib/systemd/system", "/usr/share/lintian/overrides"):
        assert path not in files, f"the .rpm owns {path}"
    assert not [p for p in files if "lintian" in p]
    assert run(["rpm", "-qp", "--configfiles", rpm]).stdout.split() == [str(ETC_CONFIG)]
    modes = dict(reversed(line.rsplit(None, 1)) for line in
                 run(["rpm", "-qp", "--queryformat", "[%{FILEMODES:perms} %{FILENAMES}\n]", rpm]).stdout.splitlines())
    assert modes[str(STORE)] == "drwx------"
    requires = set(run(["rpm", "-qpR", rpm]).stdout.splitlines())
    for soname in ("libbpf.so.1()(64bit)", "liblmdb.so.0()(64bit)", "libyaml-cpp.so.0.7()(64bit)",
                   "libnl-3.so.200()(64bit)", "libsystemd.so.0()(64bit)"):
        assert soname in requires, f"{soname} missing from the requires: {sorted(requires)}"
    scripts = run(["rpm", "-qp", "--scripts", rpm]).stdout
    assert "vpnmeterd --detach" in scripts and "try-restart" in scripts


# ---- installing on this machine ------------------------------------------------------------------


def installed_version() -> str | None:
    result = run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "vpnmeter"], check=False)
    return result.stdout if result.returncode == 0 else None


@pytest.fixture
def machine():
    """This machine without any vpnmeter; purged again afterwards, pass or fail."""
    found = installed_version()
    if found and "not-installed" not in found:
        pytest.skip(f"a vpnmeter package is installed here ({found}); not touching it")
    for path in (ETC_CONFIG.parent, STORE, DEFAULT_PINS):
        if path.exists():
            pytest.skip(f"{path} exists: someone's vpnmeter data; not touching it")
    # Where systemd is init, postinst would start the service on the host's
    # devices: policy-rc.d (which deb-systemd-invoke obeys) forbids it.
    if pathlib.Path("/run/systemd/system").is_dir() and (
            not POLICY_RC_D.exists() or run([POLICY_RC_D, "vpnmeter.service", "start"], check=False).returncode != 101):
        pytest.skip(f"systemd runs here and no {POLICY_RC_D} stops postinst from starting vpnmeter.service")
    yield
    run(["dpkg", "--purge", "vpnmeter"], check=False)
    for path in (ETC_CONFIG.parent, STORE):
        shutil.rmtree(path, ignore_errors=True)


def mode_owner(path: pathlib.Path) -> tuple[str, int, int]:
    st = path.stat()
    return stat.filemode(st.st_mode), st.st_uid, st.st_gid


def usage_upload(agent: Agent, user: str) -> int:
    out = run([agent.vpnmeter, "usage", user, "--by", "month", "--json", "--config", ETC_CONFIG]).stdout
    return json.loads(out)["upload_bytes"]


def active_users(agent: Agent) -> str:
    return run([agent.vpnmeter, "sessions", "--active", "--json", "--config", ETC_CONFIG]).stdout


def udp_burst(ns: netns.Namespace, dst: str, count: int):
    ns.run(["/usr/bin/python3", "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for _ in range({count}): s.sendto(bytes({FRAME - 42}), ('{dst}', 9))"])


def test_install_upgrade_remove_purge(packages, machine, namespaces, tmp_path):
    run(["dpkg", "-i", packages["deb"]])
    assert installed_version() == f"install ok installed {OLD}"

    # Files, modes, the shipped config, the unit.
    assert mode_owner(pathlib.Path("/usr/sbin/vpnmeterd")) == ("-rwxr-xr-x", 0, 0)
    assert mode_owner(pathlib.Path("/usr/bin/vpnmeter")) == ("-rwxr-xr-x", 0, 0)
    assert mode_owner(ETC_CONFIG) == ("-rw-r--r--", 0, 0)
    assert mode_owner(STORE) == ("drwx------", 0, 0)
    check = run(["/usr/sbin/vpnmeterd", "--check-config", ETC_CONFIG])
    assert check.stdout.startswith(f"{ETC_CONFIG}: OK")
    verify = run(["systemd-analyze", "verify", UNIT], check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, ""), "systemd-analyze verify complains"
    unit = dict(line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line and line[0] != "#")
    assert unit["Type"] == "notify" and unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["CapabilityBoundingSet"] == unit["AmbientCapabilities"] == \
        " ".join("CAP_" + cap[1:].upper() for cap in UNIT_CAPS.split(",")[1:])
    assert WANTS.is_symlink(), "postinst did not enable vpnmeter.service"
    assert run(["man", "-w", "vpnmeterd"]).stdout.strip() == "/usr/share/man/man8/vpnmeterd.8.gz"

    # The installed daemon, with only the unit's capabilities, on a read-only
    # system but for the store and bpffs, on a veth in a namespace. alice
    # holds the client's address (an OpenVPN status file, version 2).
    server, client = namespaces("srv"), namespaces("cli")
    run(["ip", "-n", server.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
         client.name])
    for ns, host in ((server, 1), (client, 2)):
        netns.add_address(ns, "eth0", f"10.67.0.{host}/24")
    status = tmp_path / "openvpn.status"
    status.write_text(
        "TITLE,OpenVPN 2.6.14\nTIME,2026-11-23 07:23:03,1795414983\n"
        "HEADER,CLIENT_LIST,Common Name,Real Address,Virtual Address,Virtual IPv6 Address,Bytes Received,"
        "Bytes Sent,Connected Since,Connected Since (time_t),Username,Client ID,Peer ID,Data Channel Cipher\n"
        "CLIENT_LIST,alice,10.99.0.10:40823,10.67.0.2,,0,0,2026-11-23 07:23:01,1795414981,UNDEF,0,0,AES-256-GCM\n"
        "HEADER,ROUTING_TABLE,Virtual Address,Common Name,Real Address,Last Ref,Last Ref (time_t)\n"
        "ROUTING_TABLE,10.67.0.2,alice,10.99.0.10:40823,2026-11-23 07:23:01,1795414981\nEND\n")
    agent = Agent(server, tmp_path, ["eth0"],
                  openvpn=[{"name": "pkg", "interface": "eth0", "status_file": str(status)}])
    # The operator's edit of the conffile: kept by the upgrade.
    ETC_CONFIG.write_text(agent.config_path.read_text().replace(agent.store_path, str(STORE)))
    agent.config_path, agent.store_path = ETC_CONFIG, str(STORE)
    agent.vpnmeterd, agent.vpnmeter = "/usr/sbin/vpnmeterd", "/usr/bin/vpnmeter"
    agent.wrapper = ["unshare", "--mount", "sh", "-c", READ_ONLY_SYSTEM, "sandbox",
                     "setpriv", f"--bounding-set={UNIT_CAPS}", "--"]
    try:
        agent.start(wait_attached="eth0")
        for ns in (server, client):
            ns.ip("link", "set", "eth0", "up")
        wait_for(lambda: '"alice"' in active_users(agent), 10, "alice's session")
        udp_burst(client, "10.67.0.1", 10)
        wait_for(lambda: usage_upload(agent, "alice") == 10 * FRAME, 10, "alice's usage in the store")

        agent.stop("TERM")
        udp_burst(client, "10.67.0.1", 10)  # no daemon: the pinned maps count
        assert mode_owner(STORE / "data.mdb")[0] == "-rw-------"

        run(["dpkg", "-i", packages["new_deb"]])
        assert installed_version() == f"install ok installed {NEW}"
        assert "status_file" in ETC_CONFIG.read_text(), "the upgrade replaced the edited config"
        assert usage_upload(agent, "alice") == 10 * FRAME, "the upgrade lost usage"

        agent.start(wait_attached="eth0")  # the new package's daemon
        wait_for(lambda: usage_upload(agent, "alice") == 20 * FRAME, 10,
                 "the bytes sent while the daemon was down, in the store")
        udp_burst(client, "10.67.0.1", 5)
        wait_for(lambda: usage_upload(agent, "alice") == 25 * FRAME, 10, "counting after the upgrade")
        agent.stop("TERM")

        # A plain remove: the programs and the pins go (prerm runs
        # vpnmeterd --detach with the config), the store and the edited
        # config stay.
        assert pathlib.Path(agent.pin_path).exists()
        removed = run(["dpkg", "-r", "vpnmeter"])
        assert f"unpinned maps under {agent.pin_path}" in removed.stdout + removed.stderr
        assert not pathlib.Path(agent.pin_path).exists()
    except BaseException:
        print(f"--- vpnmeterd log ---\n{agent.log()}")
        raise
    finally:
        agent.close()  # stops and detaches it if still there
    assert "deinstall ok config-files" in installed_version()
    assert not pathlib.Path("/usr/sbin/vpnmeterd").exists()
    assert (STORE / "data.mdb").stat().st_size > 0 and ETC_CONFIG.exists()

    run(["dpkg", "--purge", "vpnmeter"])
    assert installed_version() is None or "not-installed" in installed_version()
    for path in (ETC_CONFIG.parent, STORE, WANTS):
        assert not path.exists() and not path.is_symlink(), f"{path} survived the purge"
