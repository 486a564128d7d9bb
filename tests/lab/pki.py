"""Throw-away PKI for OpenVPN made with the openssl CLI (no easy-rsa).

EC prime256v1 keys keep generation fast (a few ms per cert).  A private
openssl config is written next to the keys so the host's openssl.cnf cannot
change the result.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field

_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = vpnmeter-lab
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_CN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _openssl(*args: str) -> None:
    res = subprocess.run(["openssl", *args], capture_output=True, text=True,
                         timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed:\n"
                           f"{res.stderr.strip()}")


@dataclass
class Pki:
    """Paths of the generated files; clients maps CN -> (cert, key)."""
    dir: str
    ca: str
    server_cert: str
    server_key: str
    tls_crypt: str | None
    clients: dict[str, tuple[str, str]] = field(default_factory=dict)
    _serial: int = 1

    def _leaf(self, cn: str, ext: str) -> tuple[str, str]:
        if not _CN_RE.match(cn):
            raise ValueError(f"unsupported common name {cn!r}")
        base = os.path.join(self.dir, cn)
        cnf = os.path.join(self.dir, "lab.cnf")
        _openssl("req", "-new", *_EC, "-keyout", base + ".key",
                 "-out", base + ".csr", "-subj", f"/CN={cn}", "-config", cnf)
        self._serial += 1
        _openssl("x509", "-req", "-in", base + ".csr", "-CA", self.ca,
                 "-CAkey", os.path.join(self.dir, "ca.key"),
                 "-set_serial", str(self._serial), "-days", "7", "-sha256",
                 "-extfile", cnf, "-extensions", ext, "-out", base + ".crt")
        os.chmod(base + ".key", 0o600)
        return base + ".crt", base + ".key"

    def add_client(self, cn: str) -> tuple[str, str]:
        """Issue a client cert (EKU clientAuth) for common name cn."""
        if cn in ("ca", os.path.basename(self.server_cert)[:-4]):
            raise ValueError(f"common name {cn!r} clashes with a lab file")
        self.clients[cn] = self._leaf(cn, "client")
        return self.clients[cn]


def make_pki(directory: str, clients=(), server_cn: str = "server",
             tls_crypt: bool = True) -> Pki:
    """CA + server cert + one client cert per CN (+ tls-crypt key) in dir."""
    os.makedirs(directory, exist_ok=True)
    cnf = os.path.join(directory, "lab.cnf")
    with open(cnf, "w") as f:
        f.write(_CNF)
    ca = os.path.join(directory, "ca.crt")
    _openssl("req", "-x509", *_EC, "-keyout", os.path.join(directory, "ca.key"),
             "-out", ca, "-days", "7", "-sha256", "-subj",
             f"/CN=vpnmeter-lab-ca-{os.getpid()}", "-config", cnf,
             "-extensions", "v3_ca")
    tc = None
    if tls_crypt:
        tc = os.path.join(directory, "tls-crypt.key")
        res = subprocess.run(["openvpn", "--genkey", "tls-crypt", tc],
                             capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            raise RuntimeError(f"openvpn --genkey failed: {res.stderr}")
    pki = Pki(dir=directory, ca=ca, server_cert="", server_key="",
              tls_crypt=tc)
    pki.server_cert, pki.server_key = pki._leaf(server_cn, "server")
    for cn in clients:
        pki.add_client(cn)
    return pki
