"""Who may use the dashboard and what they may do.

Users live in a TOML file (``dashboard.users_file``, written 0600): per user a role, a display
name and an Argon2id hash (argon2-cffi's :class:`~argon2.PasswordHasher`)::

    [users.alice]
    role = "operator"
    display_name = "Alice Martin"
    hash = "$argon2id$v=19$m=65536,t=3,p=4$..."

Roles are ordered ``viewer < operator < admin``: a viewer reads every page, an operator also
acknowledges alerts, an admin is an operator (user management stays on the command line, which
needs access to the file). Without a users file the dashboard is single-user and local: the
acting user is the OS user (``local:<name>``) with the admin role, and only a loopback address
is allowed.

Sign-in failures are answered with one generic message whether the name exists or not; an
unknown name is verified against a dummy hash so both take the same time. After a failure a
name must wait before its next attempt (1 s, doubling per failure, at most
:data:`MAX_DELAY_S`), which bounds brute force per name without locking a user out for good.
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import os
import re
import threading
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from dashboard.errors import DashboardError

__all__ = [
    "MAX_DELAY_S",
    "MIN_PASSWORD_CHARS",
    "ROLES",
    "AuthError",
    "Authenticator",
    "LoginError",
    "Principal",
    "Role",
    "User",
    "UsersFile",
    "at_least",
    "is_loopback",
    "local_principal",
]

Role = Literal["viewer", "operator", "admin"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

MIN_PASSWORD_CHARS: Final = 10
MAX_PASSWORD_CHARS: Final = 1024
MAX_DELAY_S: Final = 30.0
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_DISPLAY_MAX: Final = 100
_TRACKED_NAMES: Final = 10_000  # names with recent failures kept for the delay (oldest forgotten first)
WRONG: Final = "wrong user name or password"


class AuthError(DashboardError):
    """The users file or a user change is not valid."""


class LoginError(DashboardError):
    """A sign-in was refused (the message never says whether the name exists)."""


def at_least(role: str, minimum: Role) -> bool:
    """Whether ``role`` ranks at or above ``minimum`` (an unknown role ranks below every role)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(minimum)


def is_loopback(address: str) -> bool:
    """Whether the dashboard listening on ``address`` is reachable from this host only."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Principal:
    """The acting user of a session: what the pages show and acknowledgements record."""

    name: str
    role: Role
    display_name: str = ""

    @property
    def label(self) -> str:
        return self.display_name or self.name

    def can(self, minimum: Role) -> bool:
        return at_least(self.role, minimum)


def local_principal() -> Principal:
    """The single user of a dashboard without a users file: the OS user, as admin."""
    return Principal(f"local:{getpass.getuser()}", "admin")


@dataclass(frozen=True)
class User:
    """One entry of the users file."""

    name: str
    role: Role
    display_name: str
    hash: str

    @property
    def principal(self) -> Principal:
        return Principal(self.name, self.role, self.display_name)


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise AuthError(f"invalid user name {name[:70]!r}",
                        hint="use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
    return name


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}", hint="choose one of " + ", ".join(ROLES))
    return role


def _check_password(password: str) -> str:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise AuthError("the password is too short" if len(password) < MIN_PASSWORD_CHARS else
                        "the password is too long",
                        hint=f"use {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")
    return password


def _toml_string(text: str) -> str:
    # A JSON string (with \uXXXX escapes for control characters) is a valid TOML basic string.
    return json.dumps(text, ensure_ascii=False)


class UsersFile:
    """The users file: read whole, changed by rewriting it (0600, atomically)."""

    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = path
        self.hasher = hasher or PasswordHasher()
        self._lock = threading.Lock()

    def load(self) -> dict[str, User]:
        """Every user, by name; a missing file holds none."""
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise AuthError(f"cannot read the users file {self.path}: {error}",
                            hint="fix or recreate it with `forewarn dashboard users add`") from None
        table = data.get("users", {})
        if not isinstance(table, dict):
            raise AuthError(f"the users file {self.path} has no [users.<name>] tables",
                            hint="recreate it with `forewarn dashboard users add`")
        users = {}
        for name, entry in table.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
                raise AuthError(f"user {name!r} in {self.path} has no hash", hint="set it with `users passwd`")
            users[_check_name(name)] = User(name, _check_role(str(entry.get("role", ""))),
                                            str(entry.get("display_name", "")), entry["hash"])
        return users

    def save(self, users: Mapping[str, User]) -> None:
        """Rewrite the file with ``users``: a new file (0600 from its creation) renamed over the old."""
        lines = ["# Forewarn dashboard users, kept by `forewarn dashboard users add|passwd|role|remove|list`.", ""]
        for user in sorted(users.values(), key=lambda u: u.name):
            lines += [f"[users.{_toml_string(user.name)}]", f"role = {_toml_string(user.role)}",
                      f"display_name = {_toml_string(user.display_name)}", f"hash = {_toml_string(user.hash)}", ""]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write("\n".join(lines))
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def _change(self, change: Callable[[dict[str, User]], None]) -> None:
        with self._lock:
            users = self.load()
            change(users)
            self.save(users)

    def add(self, name: str, role: str, password: str, display_name: str = "") -> User:
        """A new user; an existing name is refused (change it with :meth:`passwd` or :meth:`set_role`)."""
        user = User(_check_name(name), _check_role(role), display_name.strip()[:_DISPLAY_MAX],
                    self.hasher.hash(_check_password(password)))

        def change(users: dict[str, User]) -> None:
            if name in users:
                raise AuthError(f"user {name!r} exists", hint="use `users passwd` or `users remove` first")
            users[name] = user

        self._change(change)
        return user

    def passwd(self, name: str, password: str) -> None:
        """A new password for ``name`` (rotation); sessions signed in with the old one end."""
        digest = self.hasher.hash(_check_password(password))
        self._change(lambda users: self._replace(users, name, lambda user: replace(user, hash=digest)))

    def rehash(self, name: str, verified: str, password: str) -> None:
        """Hash ``password`` again with the hasher's current parameters, unless the stored hash
        changed since it was ``verified`` (a concurrent ``passwd`` wins)."""
        digest = self.hasher.hash(password)

        def change(users: dict[str, User]) -> None:
            if name in users and users[name].hash == verified:
                users[name] = replace(users[name], hash=digest)

        self._change(change)

    def set_role(self, name: str, role: str) -> None:
        checked = _check_role(role)
        self._change(lambda users: self._replace(users, name, lambda user: replace(user, role=checked)))

    def remove(self, name: str) -> None:
        def change(users: dict[str, User]) -> None:
            if users.pop(name, None) is None:
                raise AuthError(f"no user {name!r}", hint="`forewarn dashboard users list` shows them")

        self._change(change)

    @staticmethod
    def _replace(users: dict[str, User], name: str, update: Callable[[User], User]) -> None:
        if name not in users:
            raise AuthError(f"no user {name!r}", hint="`forewarn dashboard users list` shows them")
        users[name] = update(users[name])


@dataclass
class _Failures:
    count: int
    not_before: float


class Authenticator:
    """Verifies sign-ins against a :class:`UsersFile`, re-read on every call so that a user
    added, removed or given a new password takes effect without a restart. One per process:
    the failed-sign-in delay is shared by every session."""

    def __init__(self, users: UsersFile, clock: Callable[[], float] = time.monotonic) -> None:
        self.users = users
        self.clock = clock
        self._failures: OrderedDict[str, _Failures] = OrderedDict()
        self._lock = threading.Lock()
        self._dummy = users.hasher.hash("not a password of anyone")

    def delay_s(self, name: str) -> float:
        """Seconds before ``name`` may try again (0 when it may now)."""
        with self._lock:
            failure = self._failures.get(name)
            return 0.0 if failure is None else max(0.0, failure.not_before - self.clock())

    def verify(self, name: str, password: str) -> Principal:
        """The principal of ``name`` when ``password`` is theirs; :class:`LoginError` otherwise."""
        wait = self.delay_s(name)
        if wait > 0:
            raise LoginError(f"too many failed sign-ins for this name; try again in {wait:.0f} s")
        user = self.users.load().get(name)
        try:
            # argon2 compares in constant time; an unknown name costs one verification too.
            self.users.hasher.verify(user.hash if user else self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            user = None
        if user is None:
            self._failed(name)
            raise LoginError(WRONG)
        with self._lock:
            self._failures.pop(name, None)
        if self.users.hasher.check_needs_rehash(user.hash):
            self.users.rehash(name, user.hash, password)
        return user.principal

    def _failed(self, name: str) -> None:
        with self._lock:
            failure = self._failures.pop(name, None) or _Failures(0, 0.0)
            failure.count += 1
            failure.not_before = self.clock() + min(MAX_DELAY_S, 2.0 ** (failure.count - 1))
            self._failures[name] = failure
            while len(self._failures) > _TRACKED_NAMES:
                self._failures.popitem(last=False)

    def current(self, name: str, generation: str) -> Principal | None:
        """The principal of a signed-in session, re-read from the file: None when the user was
        removed or their password changed since (``generation`` is :meth:`generation` at sign-in),
        with the current role otherwise."""
        user = self.users.load().get(name)
        if user is None or _generation(user.hash) != generation:
            return None
        return user.principal

    def generation(self, name: str) -> str:
        user = self.users.load().get(name)
        return "" if user is None else _generation(user.hash)


def _generation(digest: str) -> str:
    # The salt part of the hash changes with every new password; it is not secret.
    return digest.rsplit("$", 2)[-2] if digest.count("$") >= 2 else ""
