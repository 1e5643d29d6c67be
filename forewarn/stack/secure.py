"""What the secure stack's brokers and clients authenticate with, under ``HOME/secure``.

::

    secure/                      (0700)
      ca.pem  ca.key             the local CA (ca.key 0600); clients trust ca.pem
      server.pem  server.key     the brokers' certificate (localhost, 127.0.0.1), signed by the CA
      secrets/<principal>        one password per principal (0600): random, never printed
      clients/<principal>.toml   the client settings of that component: FOREWARN_CONFIG=... points at it

A *principal* is a component identity: the same name is the MQTT username (Mosquitto's password
file and ACL) and the Kafka SCRAM user (``User:<name>`` in Kafka's ACLs). Which principal may do
what is defined next to each broker's configuration (``forewarn.stack.mosquitto`` and
``forewarn.stack.kafka``); this module only creates and hands out the material. Everything is
created once and reused, so clients configured from ``clients/*.toml`` keep working across
``stack down``/``up``; the server certificate is renewed when it nears its expiry.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from forewarn.errors import StackError
from forewarn.settings import KafkaSettings, MqttSettings
from forewarn.stack import pki

__all__ = ["PRINCIPALS", "SCRAM_MECHANISM", "SecureMaterial"]

log = logging.getLogger(__name__)

PRINCIPALS: Final = ("admin", "bridge", "scoring", "edge", "dashboard", "registry", "simulator", "notify")
"""The stack's components. ``admin`` is the Kafka super user (brokers, topic creation);
``registry`` publishes models; ``simulator`` stands for the plant (devices, gateways and its
maintenance system); the others are the services of the same name."""

SCRAM_MECHANISM: Final = "SCRAM-SHA-512"
SERVER_NAMES: Final = ("localhost",)
SERVER_IPS: Final = ("127.0.0.1",)
RENEW_DAYS: Final = 30
_PRINCIPAL_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _toml(value: object) -> str:
    # JSON strings, numbers and booleans are valid TOML values.
    return json.dumps(str(value) if isinstance(value, Path) else value)


@dataclass(frozen=True)
class SecureMaterial:
    """The CA, the brokers' certificate and the principals' passwords of one stack home."""

    root: Path

    @classmethod
    def for_home(cls, home: Path) -> SecureMaterial:
        return cls((home / "secure").resolve())

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def clients_dir(self) -> Path:
        return self.root / "clients"

    # -- creation ------------------------------------------------------------------------------

    def ensure(self, principals: tuple[str, ...] = PRINCIPALS,
               progress: Callable[[str], None] = lambda _m: None) -> None:
        """Create whatever is missing: the CA, the server certificate (renewed within
        ``RENEW_DAYS`` of expiry) and a password per principal."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o700)
        if self.ca_cert.is_file() and self.ca_key.is_file():
            ca = pki.load(self.ca_cert, self.ca_key)
        else:
            progress(f"creating a local CA in {self.root}")
            ca = pki.make_ca()
            pki.write_private(self.ca_key, ca.key_pem())
            self.ca_cert.write_bytes(ca.cert_pem())
        renew = not (self.server_cert.is_file() and self.server_key.is_file())
        if not renew:
            renew = pki.expires_within(pki.load(self.server_cert, self.server_key).cert, RENEW_DAYS)
        if renew:
            progress("issuing the brokers' certificate (localhost, 127.0.0.1)")
            server = pki.issue(ca, "localhost", dns=SERVER_NAMES, ips=SERVER_IPS, server=True, client=True)
            pki.write_private(self.server_key, server.key_pem())
            self.server_cert.write_bytes(server.cert_pem())
        for principal in principals:
            self.add_principal(principal)

    def add_principal(self, name: str) -> Path:
        """Give ``name`` a password (kept if it has one); returns the password file."""
        if not _PRINCIPAL_RE.match(name):
            raise StackError(f"principal {name!r} is not a valid name",
                             hint="use letters, digits, '.', '_' or '-' (at most 64)")
        path = self.password_file(name)
        if not path.is_file():
            pki.write_private(path, (secrets.token_urlsafe(24) + "\n").encode())
        return path

    def rotate(self, name: str) -> Path:
        """A new password for ``name`` (the brokers must be told: see the broker modules)."""
        path = self.password_file(name)
        pki.write_private(path, (secrets.token_urlsafe(24) + "\n").encode())
        return path

    # -- reading -----------------------------------------------------------------------------

    def password_file(self, name: str) -> Path:
        return self.secrets_dir / name

    def password(self, name: str) -> str:
        try:
            return self.password_file(name).read_text().strip()
        except OSError:
            raise StackError(f"no credentials for {name!r} in {self.secrets_dir}",
                             hint="run `forewarn stack up --secure` first") from None

    def principals(self) -> list[str]:
        if not self.secrets_dir.is_dir():
            return []
        return sorted(p.name for p in self.secrets_dir.iterdir() if p.is_file() and not p.name.startswith("."))

    # -- client settings ------------------------------------------------------------------------

    def kafka_client(self, principal: str, base: KafkaSettings) -> KafkaSettings:
        """``base`` authenticated as ``principal``: SASL_SSL, SCRAM-SHA-512, the CA trusted."""
        return base.model_copy(update={
            "security_protocol": "SASL_SSL", "sasl_mechanism": SCRAM_MECHANISM, "sasl_username": principal,
            "sasl_password": None, "sasl_password_file": self.password_file(principal),
            "ssl_ca_location": self.ca_cert})

    def mqtt_client(self, principal: str, base: MqttSettings) -> MqttSettings:
        """``base`` authenticated as ``principal``: TLS (the CA trusted) with a password."""
        return base.model_copy(update={
            "tls": True, "ca_file": self.ca_cert, "username": principal, "password": None,
            "password_file": self.password_file(principal)})

    def write_client_config(self, principal: str, kafka: KafkaSettings | None, mqtt: MqttSettings | None) -> Path:
        """``clients/<principal>.toml``: the connection settings of that component (a section for
        each broker it has a login on: ``None`` leaves that one out), secrets by file reference
        only. Returns its path."""
        lines = [f"# Generated by `forewarn stack up --secure` for {principal!r}; use it with",
                 f"# FOREWARN_CONFIG={self.clients_dir / (principal + '.toml')}. The password is in "
                 "the file named below."]
        if kafka is not None:
            k = self.kafka_client(principal, kafka)
            lines += ["[kafka]",
                      f"bootstrap_servers = {_toml(k.bootstrap_servers)}",
                      f"security_protocol = {_toml(k.security_protocol)}",
                      f"sasl_mechanism = {_toml(k.sasl_mechanism)}",
                      f"sasl_username = {_toml(k.sasl_username)}",
                      f"sasl_password_file = {_toml(k.sasl_password_file)}",
                      f"ssl_ca_location = {_toml(k.ssl_ca_location)}",
                      ""]
        if mqtt is not None:
            m = self.mqtt_client(principal, mqtt)
            lines += ["[mqtt]",
                      f"host = {_toml(m.host)}",
                      f"port = {_toml(m.port)}",
                      "tls = true",
                      f"ca_file = {_toml(m.ca_file)}",
                      f"username = {_toml(m.username)}",
                      f"password_file = {_toml(m.password_file)}",
                      ""]
        path = self.clients_dir / f"{principal}.toml"
        pki.write_private(path, "\n".join(lines).encode())
        return path
