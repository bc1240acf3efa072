"""TLS for HTTPS/WSS: the configured PEM pair (checked at start-up) or a self-signed pair made
once and reused; a TLS layer that closes failed or stalled handshakes with one logged reason."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IProtocolFactory,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from wcs.limits import LogThrottle, transparent_prefix

log = Logger(namespace="wcs.tls")

SELF_SIGNED_DIR = "tls"
# A client has this long from connecting to finishing the handshake (a few round trips).
HANDSHAKE_TIMEOUT = 10.0


def ensure_self_signed(directory: str = SELF_SIGNED_DIR) -> tuple[str, str]:
    """Return (cert, key) paths in `directory`, generating them on first use."""
    cert_path = os.path.join(directory, "server.crt")
    key_path = os.path.join(directory, "server.key")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname or "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    if hostname and hostname != "localhost":
        alt_names.append(x509.DNSName(hostname))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Write-then-rename, so a crash never leaves half a key that later runs would trust.
    for path, data, mode in (
        (key_path, key_pem, 0o600),
        (cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644),
    ):
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return cert_path, key_path


class TLSConfigError(ValueError):
    """The certificate or key cannot serve TLS; the message names the file(s) at fault."""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise TLSConfigError(f"cannot read {path}: {err.strerror or err}") from None


def _openssl_reason(err: SSL.Error) -> str:
    """OpenSSL's error queue as one short line (its reasons, without library names)."""
    reasons = [str(e[-1]) for e in (err.args[0] if err.args else []) if isinstance(e, tuple)]
    return ", ".join(r for r in reasons if r) or str(err)


def server_context(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """Twisted TLS options from PEM files (the cert file may hold a chain).

    Everything OpenSSL would otherwise only find at the first handshake is checked here, so a
    bad pair stops start-up: each file parses, the key is the certificate's, OpenSSL accepts
    both. Raises TLSConfigError naming the file(s).
    """
    cert_pem = _read(cert_path)
    key_pem = _read(key_path)
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as err:
        raise TLSConfigError(f"{cert_path} holds no PEM certificate ({err})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # cryptography's way of saying the key needs a password
        raise TLSConfigError(
            f"{key_path}: the private key is encrypted; wcs needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as err:
        hint = " (is it the certificate?)" if b"-----BEGIN CERTIFICATE" in key_pem else ""
        raise TLSConfigError(f"{key_path} holds no PEM private key{hint} ({err})") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if certs[0].public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) != key.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise TLSConfigError(
            f"the certificate {cert_path} and the private key {key_path} do not match "
            "(the key is not the certificate's)"
        )
    try:
        options = ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
            certificate=crypto.X509.from_cryptography(certs[0]),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in certs[1:]] or None,
        )
        # Twisted makes the OpenSSL context lazily, at the first handshake: make it now.
        options.getContext()
    except (SSL.Error, TypeError, ValueError) as err:
        reason = _openssl_reason(err) if isinstance(err, SSL.Error) else str(err)
        raise TLSConfigError(
            f"OpenSSL refuses the certificate {cert_path} with the key {key_path}: {reason}"
        ) from None
    return options


@implementer(IHandshakeListener)
class HandshakeGuard(ProtocolWrapper):
    """Sits under TLS, over the application: a handshake that fails (garbage, plain HTTP, no
    shared cipher) is one throttled warning, not silence or a traceback, and one that does not
    finish in HANDSHAKE_TIMEOUT is aborted with a logged reason."""

    factory: HandshakeGuardFactory

    def __init__(self, factory: HandshakeGuardFactory, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self.done = False
        self.timed_out = False
        self.peer = "?"
        self._deadline: IDelayedCall | None = None

    def logPrefix(self) -> str:
        return transparent_prefix(self.wrappedProtocol, self)

    def makeConnection(self, transport: Any) -> None:
        peer = transport.getPeer()
        self.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self._deadline = self.factory.clock.callLater(self.factory.timeout, self._timed_out)
        super().makeConnection(transport)

    def handshakeCompleted(self) -> None:
        self.done = True
        self._cancel()
        wrapped = self.wrappedProtocol
        # Only a protocol that handles it itself: a ProtocolWrapper over us (the WSS byte
        # budget) copies our interfaces from its transport and forwards unknown attributes back
        # to us, so asking it would call this method again, endlessly.
        if IHandshakeListener.providedBy(wrapped) and hasattr(type(wrapped), "handshakeCompleted"):
            wrapped.handshakeCompleted()

    def _timed_out(self) -> None:
        self._deadline = None
        self.timed_out = True
        self.factory.failures.warn(
            "TLS {peer} on {label}: closing: no handshake within {timeout:g} s",
            peer=self.peer,
            label=self.factory.label,
            timeout=self.factory.timeout,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _cancel(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel()
        # A peer that closes before or during the handshake (a port probe) is not an error.
        if not self.done and not self.timed_out and isinstance(reason.value, SSL.Error):
            self.factory.failures.warn(
                "TLS {peer} on {label}: handshake failed: {reason}",
                peer=self.peer,
                label=self.factory.label,
                reason=_openssl_reason(reason.value),
            )
        super().connectionLost(reason)


class HandshakeGuardFactory(WrappingFactory[HandshakeGuard]):
    protocol = HandshakeGuard
    noisy = False

    def __init__(
        self,
        wrapped: IProtocolFactory,
        clock: IReactorTime,
        label: str,
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        super().__init__(wrapped)
        self.clock = clock
        self.label = label
        self.timeout = timeout
        self.failures = LogThrottle(clock, log)

    def logPrefix(self) -> str:
        return transparent_prefix(self.wrappedFactory, self)

    def buildProtocol(self, addr: IAddress | None) -> HandshakeGuard | None:  # type: ignore[override]
        wrapped = self.wrappedFactory.buildProtocol(addr)
        return None if wrapped is None else HandshakeGuard(self, wrapped)

    def registerProtocol(self, p: ProtocolWrapper) -> None:
        pass  # nothing to track per connection (WrappingFactory would keep them all)

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        pass


def tls_server_factory(
    options: ssl.CertificateOptions,
    wrapped: IProtocolFactory,
    clock: IReactorTime,
    label: str,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> TLSMemoryBIOFactory:
    """Serve `wrapped` over TLS, with failed and stalled handshakes closed and logged."""
    return TLSMemoryBIOFactory(
        options, False, HandshakeGuardFactory(wrapped, clock, label, timeout), clock
    )
