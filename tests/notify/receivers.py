"""Real receivers for the notifier's integration tests: an HTTP webhook receiver (stdlib
http.server in a thread, stoppable and restartable on the same port, so it can be "down") and an
SMTP server (aiosmtpd) that insists on STARTTLS and a login before it takes a message."""

from __future__ import annotations

import datetime as dt
import email
import email.message
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.stacks import free_port

SMTP_USER = "forewarn-notify"
SMTP_PASSWORD = "a long smtp password that only the file holds"


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: Any  # the decoded JSON
    at: float  # time.monotonic() when it arrived


class WebhookReceiver:
    """Records every POST (JSON body) on ``127.0.0.1:port``; :meth:`stop` closes the port (the
    receiver is down: connections are refused), :meth:`start` opens it again."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(Request(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                     json.loads(raw or b"null"), time.monotonic()))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def on(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def keys(self, path: str = "/hook") -> list[str]:
        """Idempotency keys of the notices POSTed to ``path`` (a digest gives one per notice)."""
        return [n["key"] for r in self.on(path) for n in r.body["notifications"]]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate (its own CA) for 127.0.0.1 and localhost, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forewarn test smtp")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "smtp.pem", folder / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class SmtpReceiver:
    """aiosmtpd on a free port: STARTTLS required before MAIL, a login (``SMTP_USER`` /
    ``SMTP_PASSWORD``) required before anything is taken; keeps every message taken."""

    def __init__(self, folder: Path) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.port = free_port()
        self.cert_file, key_file = self_signed(folder)
        self.password_file = folder / "smtp-password"
        self.password_file.write_text(SMTP_PASSWORD + "\n")
        self.password_file.chmod(0o600)
        self.messages: list[email.message.Message] = []
        self.refused_logins = 0
        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                receiver.messages.append(email.message_from_bytes(envelope.original_content or envelope.content))
                return "250 OK"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
            ok = (isinstance(auth_data, LoginPassword) and auth_data.login == SMTP_USER.encode()
                  and auth_data.password == SMTP_PASSWORD.encode())
            if not ok:
                receiver.refused_logins += 1
            return AuthResult(success=ok, handled=False)

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, key_file)
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=context,
                                      require_starttls=True, authenticator=authenticator, auth_required=True,
                                      auth_require_tls=True)

    def start(self) -> SmtpReceiver:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def channel(self, to: str = "shift@plant.example") -> dict[str, Any]:
        """The ``[notify.channels.<name>]`` table that reaches this server."""
        return {"kind": "email", "host": "127.0.0.1", "port": self.port, "security": "starttls",
                "username": SMTP_USER, "password_file": str(self.password_file), "ca_file": str(self.cert_file),
                "sender": "forewarn@plant.example", "to": [to], "timeout_s": 10}

    def keys(self) -> list[str]:
        return [str(m["X-Forewarn-Key"]) for m in self.messages]


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every)
