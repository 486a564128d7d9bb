"""Test lab: real OpenVPN setups inside network namespaces.

Shared by the demo and the end-to-end tests; needs root, openvpn, openssl,
iperf3 and iproute2.  Everything it creates is named vpnm-<pid>-... and is
removed on close(), at exit, and on SIGTERM/SIGINT.
"""

from .netns import (LabError, Namespace, add_address, bridge, cleanup_all,
                    own_namespaces, stop_process, stop_processes,
                    sweep_stale, veth_pair)
from .openvpn import OpenVpnLab, VpnClient, log_tail
from .pki import Pki, make_pki
from .traffic import IperfResult, run_client, start_server

__all__ = [
    "LabError", "Namespace", "add_address", "bridge", "cleanup_all",
    "own_namespaces", "stop_process", "stop_processes",
    "sweep_stale", "veth_pair",
    "OpenVpnLab", "VpnClient", "log_tail", "Pki", "make_pki",
    "IperfResult", "run_client", "start_server",
]
