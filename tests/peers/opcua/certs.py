#!/usr/bin/env python3
"""Self-signed application instance certificates for the secured OPC UA test, made with
asyncua's own generator: server.der + server-key.pem, client.der + client-key.pem (PKCS#8) in
the directory given, and the client's certificate copied into <dir>/trusted/ for the server."""

import ipaddress
import shutil
import sys
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID


def make(out: Path, name: str, uri: str, usage):
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        name,
        {"organizationName": "mes-edge test"},
        [
            x509.UniformResourceIdentifier(uri),
            x509.DNSName("localhost"),
            x509.DNSName("127.0.0.1"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
        extended=[usage],
    )
    (out / f"{name}.der").write_bytes(cert.public_bytes(Encoding.DER))
    (out / f"{name}-key.pem").write_bytes(cert_gen.dump_private_key_as_pem(key))


def main():
    out = Path(sys.argv[1])
    client_uri = sys.argv[2]
    (out / "trusted").mkdir(parents=True, exist_ok=True)
    make(out, "server", "urn:freeopcua:python:server", ExtendedKeyUsageOID.SERVER_AUTH)
    make(out, "client", client_uri, ExtendedKeyUsageOID.CLIENT_AUTH)
    shutil.copy(out / "client.der", out / "trusted" / "client.der")
    print("CERTS", out, flush=True)


if __name__ == "__main__":
    main()
