"""wcs.tls: the certificate/key pair is checked at start-up (files named in every refusal), and the
TLS layer closes failed or stalled handshakes with one warning (memory transports, a Clock)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from tests.unit.fakes import RecordingProtocol, warnings
from wcs.tls import (
    HANDSHAKE_TIMEOUT,
    HandshakeGuard,
    TLSConfigError,
    ensure_self_signed,
    server_context,
    tls_server_factory,
)

PEER = IPv4Address("TCP", "192.0.2.5", 50000)


def self_signed(tmp_path: Path, name: str) -> tuple[str, str]:
    return ensure_self_signed(str(tmp_path / name))


def issue(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: Any
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(signer, hashes.SHA256())
    )


def pem_key(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


# -- the pair, at start-up ----------------------------------------------------------------------


def test_a_matching_pair_gives_a_ready_context(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "a")
    options = server_context(cert, key)
    assert options.getContext() is not None


def test_a_chain_file_serves_the_leaf_with_its_issuers(tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = issue("test CA", ca_key, ca_name, ca_key)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue("localhost", leaf_key, ca_name, ca_key)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca)))
    key = tmp_path / "leaf.key"
    key.write_bytes(pem_key(leaf_key))
    options = server_context(str(chain), str(key))
    assert options.extraCertChain is not None and len(options.extraCertChain) == 1


def test_a_mismatched_pair_is_refused_naming_both_files(tmp_path: Path) -> None:
    cert_a, _ = self_signed(tmp_path, "a")
    _, key_b = self_signed(tmp_path, "b")
    with pytest.raises(TLSConfigError) as info:
        server_context(cert_a, key_b)
    message = str(info.value)
    assert cert_a in message
    assert key_b in message
    assert "do not match" in message


def test_a_chain_whose_first_certificate_is_not_the_keys_is_refused(tmp_path: Path) -> None:
    """The leaf must come first: the key is checked against the first certificate."""
    cert_a, key_a = self_signed(tmp_path, "a")
    cert_b, _ = self_signed(tmp_path, "b")
    chain = tmp_path / "wrong-order.pem"
    chain.write_bytes(Path(cert_b).read_bytes() + Path(cert_a).read_bytes())
    with pytest.raises(TLSConfigError, match="do not match"):
        server_context(str(chain), key_a)


@pytest.mark.parametrize(
    ("cert_text", "key_text", "bad", "words"),
    [
        (b"not a certificate\n", None, "cert", "holds no PEM certificate"),
        (b"", None, "cert", "holds no PEM certificate"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            None,
            "cert",
            "holds no PEM certificate",
        ),
        (None, b"garbage", "key", "holds no PEM private key"),
        (None, "cert", "key", "holds no PEM private key (is it the certificate?)"),
    ],
)
def test_an_unusable_file_is_named(
    tmp_path: Path, cert_text: bytes | None, key_text: bytes | str | None, bad: str, words: str
) -> None:
    cert, key = self_signed(tmp_path, "a")
    if cert_text is not None:
        Path(cert).write_bytes(cert_text)
    if key_text == "cert":
        Path(key).write_bytes(Path(cert).read_bytes())
    elif isinstance(key_text, bytes):
        Path(key).write_bytes(key_text)
    with pytest.raises(TLSConfigError) as info:
        server_context(cert, key)
    message = str(info.value)
    assert message.startswith(cert if bad == "cert" else key)
    assert words in message


def test_an_encrypted_key_is_named(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "a")
    loaded = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    Path(key).write_bytes(pem_key(loaded, password=b"secret"))
    with pytest.raises(TLSConfigError, match=f"^{key}: the private key is encrypted"):
        server_context(cert, key)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path, "a")
    missing = str(tmp_path / "nope.key")
    with pytest.raises(TLSConfigError, match=f"cannot read {missing}"):
        server_context(cert, missing)


# -- the handshake guard ------------------------------------------------------------------------


class AppFactory(Factory):
    def __init__(self) -> None:
        self.apps: list[RecordingProtocol] = []

    def buildProtocol(self, addr: Any) -> RecordingProtocol:
        app = RecordingProtocol()
        self.apps.append(app)
        return app


@pytest.fixture
def options(tmp_path: Path) -> ssl.CertificateOptions:
    return server_context(*self_signed(tmp_path, "server"))


def serve(options: ssl.CertificateOptions, clock: Clock) -> tuple[AppFactory, Any, StringTransport]:
    apps = AppFactory()
    factory = tls_server_factory(options, apps, clock, "https")
    proto = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    return apps, proto, transport


def test_garbage_instead_of_a_handshake_is_one_warning(
    options: ssl.CertificateOptions, log_events: list[LogEvent]
) -> None:
    clock = Clock()
    apps, proto, transport = serve(options, clock)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to the HTTPS port
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    assert warnings(log_events) == ["TLS 192.0.2.5:50000 on https: handshake failed: http request"]
    assert not [e for e in log_events if "log_failure" in e]  # no traceback anywhere
    assert apps.apps[0].received == []
    assert len(apps.apps[0].lost) == 1
    clock.advance(HANDSHAKE_TIMEOUT)  # the deadline went with the connection: no second line
    assert len(warnings(log_events)) == 1


def test_a_stalled_handshake_is_aborted_at_the_deadline(
    options: ssl.CertificateOptions, log_events: list[LogEvent]
) -> None:
    clock = Clock()
    _, proto, transport = serve(options, clock)
    proto.dataReceived(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
    clock.advance(HANDSHAKE_TIMEOUT - 0.1)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting
    assert warnings(log_events) == [
        "TLS 192.0.2.5:50000 on https: closing: no handshake within 10 s"
    ]
    proto.connectionLost(Failure(ConnectionDone()))
    assert len(warnings(log_events)) == 1  # the abort is not reported a second time


def test_a_peer_that_leaves_before_the_handshake_is_not_a_warning(
    options: ssl.CertificateOptions, log_events: list[LogEvent]
) -> None:
    clock = Clock()
    _, proto, _ = serve(options, clock)
    proto.connectionLost(Failure(ConnectionDone()))
    assert warnings(log_events) == []
    assert not clock.getDelayedCalls()  # nor is the deadline left running


@pytest.mark.parametrize("wrapped", [False, True], ids=["app", "app-under-a-wrapper"])
def test_a_completed_handshake_cancels_the_deadline_and_passes_data(
    options: ssl.CertificateOptions, log_events: list[LogEvent], wrapped: bool
) -> None:
    """Also with a ProtocolWrapper over the guard (the WSS listener's byte budget): it copies
    the guard's interfaces from its transport and forwards unknown attributes back to it, which
    made the handshake notification call itself until RecursionError."""
    clock = Clock()
    apps = AppFactory()
    app_factory: Any = WrappingFactory(apps) if wrapped else apps
    server_factory = tls_server_factory(options, app_factory, clock, "wss")
    client_factory = TLSMemoryBIOFactory(
        ssl.CertificateOptions(), True, ClientFactory.forProtocol(Protocol), clock
    )
    client, server, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(PEER),
        lambda: client_factory.buildProtocol(PEER),
        clock=clock,
    )
    pump.flush()
    guard = server.wrappedProtocol
    assert isinstance(guard, HandshakeGuard)
    assert guard.done
    client.write(b"hello")
    pump.flush()
    clock.advance(HANDSHAKE_TIMEOUT * 3)
    pump.flush()
    assert b"".join(apps.apps[0].received) == b"hello"
    assert apps.apps[0].lost == []
    assert warnings(log_events) == []
    assert not [e for e in log_events if "log_failure" in e]
