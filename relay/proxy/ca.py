"""The proxy's certificate authority and the leaf certificates it mints for decrypted hosts.

The CA is loaded from ``PROXY_CERT_FILE`` / ``PROXY_KEY_FILE``, or generated
once into ``<data dir>/proxy/`` (``ca.pem``, and ``ca-key.pem`` with mode
0600) and loaded from there afterwards. A leaf is ECDSA P-256, valid for
``LEAF_LIFETIME``, with the host as its only subject alternative name; the
server contexts built from them (ALPN ``http/1.1`` only, TLS 1.2 at least)
are cached per host, at most ``MAX_CACHED`` of them, and minted in a worker
thread so the event loop never waits on the key generation.
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay.errors import StartupError

CA_LIFETIME = datetime.timedelta(days=3650)
LEAF_LIFETIME = datetime.timedelta(days=7)
# A cached leaf is minted again once less than this is left of it.
LEAF_RENEW_BEFORE = datetime.timedelta(days=1)
MAX_CACHED = 1024
CA_NAME = "relay AI Gateway Proxy CA"


class CAError(StartupError):
    """The proxy's CA cannot be loaded or created."""


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes

    @classmethod
    def generate(cls) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        now = datetime.datetime.now(datetime.UTC)
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key, cert.public_bytes(serialization.Encoding.PEM))

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            # The leaves are ECDSA; an RSA CA would do, but one kind keeps it simple.
            raise CAError("the proxy CA key must be an EC (ECDSA) key")
        return cls(cert, key, cert.public_bytes(serialization.Encoding.PEM))

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def mint(self, host: str) -> tuple[bytes, bytes, datetime.datetime]:
        """A leaf for ``host``: (certificate chain PEM, key PEM, not valid after)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        expires = now + LEAF_LIFETIME
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(expires)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return chain, key_pem, expires


def ca_paths(data_dir: Path) -> tuple[Path, Path]:
    directory = data_dir / "proxy"
    return directory / "ca.pem", directory / "ca-key.pem"


def load_or_create_ca_files(cert_file: str, key_file: str, data_dir: Path) -> CertificateAuthority:
    """The configured CA, or the one in the data directory (generated on first use)."""
    if bool(cert_file) != bool(key_file):
        raise CAError("PROXY_CERT_FILE and PROXY_KEY_FILE must be given together")
    if cert_file:
        try:
            return CertificateAuthority.load(
                Path(cert_file).read_bytes(), Path(key_file).read_bytes()
            )
        except (OSError, ValueError) as exc:
            raise CAError(f"cannot load the proxy CA ({cert_file}): {exc}") from None
    cert_path, key_path = ca_paths(data_dir)
    try:
        if cert_path.exists() and key_path.exists():
            return CertificateAuthority.load(cert_path.read_bytes(), key_path.read_bytes())
        ca = CertificateAuthority.generate()
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        # The key is created 0600 (never readable by others, not even for a moment).
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(ca.key_pem())
        cert_path.write_bytes(ca.cert_pem)
        return ca
    except (OSError, ValueError) as exc:
        raise CAError(f"cannot load or create the proxy CA in {cert_path.parent}: {exc}") from None


def load_or_create_ca(options: object) -> CertificateAuthority:
    from relay.options import Options
    from relay.services import data_dir

    assert isinstance(options, Options)
    return load_or_create_ca_files(
        options.proxy_cert_file, options.proxy_key_file, data_dir(options)
    )


class LeafContexts:
    """Server-side TLS contexts per host, each with a leaf of ``ca``; bounded, renewed."""

    def __init__(self, ca: CertificateAuthority, max_cached: int = MAX_CACHED) -> None:
        self.ca = ca
        self.max_cached = max_cached
        self._cache: collections.OrderedDict[str, tuple[ssl.SSLContext, datetime.datetime]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self.minted = 0

    def cached(self, host: str) -> ssl.SSLContext | None:
        with self._lock:
            entry = self._cache.get(host)
            if entry is None:
                return None
            context, expires = entry
            if expires - datetime.datetime.now(datetime.UTC) < LEAF_RENEW_BEFORE:
                del self._cache[host]
                return None
            self._cache.move_to_end(host)
            return context

    def context_for(self, host: str) -> ssl.SSLContext:
        """The context for ``host``, minted now if need be (blocking: call it in a thread)."""
        found = self.cached(host)
        if found is not None:
            return found
        chain, key, expires = self.ca.mint(host)
        context = server_context(chain, key)
        with self._lock:
            self.minted += 1
            self._cache[host] = (context, expires)
            self._cache.move_to_end(host)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return context


def server_context(chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    # load_cert_chain reads files only: a private directory, gone at once.
    with tempfile.TemporaryDirectory(prefix="relay-leaf-") as directory:
        cert_path = Path(directory) / "cert.pem"
        key_path = Path(directory) / "key.pem"
        cert_path.write_bytes(chain_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_pem)
        context.load_cert_chain(cert_path, key_path)
    return context


def listener_context_files(cert_file: str, key_file: str) -> ssl.SSLContext | None:
    """The server context of the proxy's own listener (TLS 1.2 at least), or None: plain TCP."""
    if bool(cert_file) != bool(key_file):
        raise CAError("PROXY_TLS_CERT_FILE and PROXY_TLS_KEY_FILE must be given together")
    if not cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        # (The error names the file, never what is in it.)
        raise CAError(f"cannot load the proxy's TLS certificate ({cert_file}): {exc}") from None
    return context


def listener_context(options: object) -> ssl.SSLContext | None:
    from relay.options import Options

    assert isinstance(options, Options)
    return listener_context_files(options.proxy_tls_cert_file, options.proxy_tls_key_file)
