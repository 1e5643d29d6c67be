"""Dashboard users and roles: Argon2id hashes in a 0600 file, verification with one generic
refusal and a bounded per-name delay, rehashing, sessions that end with a new password, the
``forewarn dashboard users`` commands (passwords never on the command line), the refusal to
listen beyond loopback without a login, and the login gate and roles in the app."""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import msgspec
import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from streamlit.testing.v1 import AppTest

from dashboard import actions, queries
from dashboard import cli as dashboard_cli
from dashboard.auth import (
    MAX_DELAY_S,
    ROLES,
    WRONG,
    Authenticator,
    AuthError,
    LoginError,
    Principal,
    UsersFile,
    at_least,
    is_loopback,
)
from dashboard.cli import check_exposure, streamlit_command
from dashboard.errors import DashboardError
from dashboard.runtime import Runtime
from dashboard.settings import DashboardSettings
from dashboard.synthetic import populate
from forewarn.cli import cli
from forewarn.contract import Alert
from tests.dashboard.conftest import PAGES, FakeRuntime, make_runtime, no_exceptions, open_page

# Cheap parameters keep the unit tests fast; the CLI and the app use argon2-cffi's defaults.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
SECRET = "correct horse battery"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def users(tmp_path: Path) -> UsersFile:
    users = UsersFile(tmp_path / "conf" / "users.toml", FAST)
    users.add("vera", "viewer", "viewer password", "Vera Viewer")
    users.add("olga", "operator", SECRET, "Olga Operator")
    return users


def test_users_file_holds_argon2id_hashes_only_and_is_0600(users: UsersFile) -> None:
    text = users.path.read_text()
    assert "$argon2id$" in text and SECRET not in text and "viewer password" not in text
    assert stat.S_IMODE(users.path.stat().st_mode) == 0o600
    loaded = users.load()
    assert {n: (u.role, u.display_name) for n, u in loaded.items()} == {
        "vera": ("viewer", "Vera Viewer"), "olga": ("operator", "Olga Operator")}
    users.remove("vera")
    assert set(users.load()) == {"olga"} and stat.S_IMODE(users.path.stat().st_mode) == 0o600


@pytest.mark.parametrize(("name", "role", "password", "why"), [
    ("bad name", "viewer", SECRET, "invalid user name"),
    ("x" * 65, "viewer", SECRET, "invalid user name"),
    ("ann", "root", SECRET, "unknown role"),
    ("ann", "viewer", "short", "too short"),
    ("olga", "viewer", SECRET, "exists"),
])
def test_invalid_users_are_refused(users: UsersFile, name: str, role: str, password: str, why: str) -> None:
    with pytest.raises(AuthError, match=why):
        users.add(name, role, password)
    assert set(users.load()) == {"vera", "olga"}


def test_verify_right_wrong_and_unknown(users: UsersFile) -> None:
    auth = Authenticator(users, Clock())
    assert auth.verify("olga", SECRET) == Principal("olga", "operator", "Olga Operator")
    assert auth.verify("olga", SECRET).label == "Olga Operator"
    for name, password in (("vera", SECRET), ("nobody", SECRET), ("olga", "")):
        with pytest.raises(LoginError) as refused:
            auth.verify(name, password)
        assert str(refused.value) == WRONG  # the same words whether the name exists or not


def test_failed_sign_ins_delay_the_name_doubling_to_a_bound(users: UsersFile) -> None:
    clock = Clock()
    auth = Authenticator(users, clock)
    with pytest.raises(LoginError, match=WRONG):
        auth.verify("olga", "guess number 1")
    assert auth.delay_s("olga") == 1.0 and auth.delay_s("vera") == 0.0
    with pytest.raises(LoginError, match="too many failed sign-ins"):
        auth.verify("olga", SECRET)  # even the right password waits
    delays = []
    for n in range(8):
        clock.now += auth.delay_s("olga")
        with pytest.raises(LoginError, match=WRONG):
            auth.verify("olga", f"guess number {n + 2}")
        delays.append(auth.delay_s("olga"))
    assert delays == [2.0, 4.0, 8.0, 16.0, MAX_DELAY_S, MAX_DELAY_S, MAX_DELAY_S, MAX_DELAY_S]
    assert auth.verify("vera", "viewer password").role == "viewer"  # other names are not slowed
    clock.now += MAX_DELAY_S
    assert auth.verify("olga", SECRET).name == "olga"
    assert auth.delay_s("olga") == 0.0  # a success forgets the failures


def test_a_hash_of_old_parameters_is_replaced_at_sign_in(users: UsersFile) -> None:
    before = users.load()["olga"].hash
    assert "m=1024,t=1,p=1" in before
    current = UsersFile(users.path)  # argon2-cffi's default parameters
    auth = Authenticator(current)
    auth.verify("olga", SECRET)
    after = current.load()["olga"].hash
    assert after != before and not current.hasher.check_needs_rehash(after)
    assert auth.verify("olga", SECRET).name == "olga"


def test_a_session_ends_with_a_new_password_or_removal_and_follows_role_changes(users: UsersFile) -> None:
    clock = Clock()
    auth = Authenticator(users, clock)
    generation = auth.generation("olga")
    assert auth.current("olga", generation) == Principal("olga", "operator", "Olga Operator")
    users.set_role("olga", "admin")
    assert auth.current("olga", generation) == Principal("olga", "admin", "Olga Operator")
    users.passwd("olga", "a brand new password")
    assert auth.current("olga", generation) is None
    with pytest.raises(LoginError):
        auth.verify("olga", SECRET)
    clock.now += auth.delay_s("olga")
    assert auth.verify("olga", "a brand new password").role == "admin"
    users.remove("olga")
    assert auth.current("olga", auth.generation("olga")) is None


def test_roles_are_ordered() -> None:
    assert ROLES == ("viewer", "operator", "admin")
    assert [r for r in ROLES if at_least(r, "operator")] == ["operator", "admin"]
    assert all(at_least(r, "viewer") for r in ROLES) and not at_least("root", "viewer")
    assert [a for a in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "0.0.0.0", "10.0.0.5", "::", "example.com")
            if is_loopback(a)] == ["127.0.0.1", "127.0.0.2", "::1", "localhost"]


# -- the users commands --------------------------------------------------------------------


def run(args: list[str], input: str | None = None) -> click.testing.Result:
    return CliRunner().invoke(cli, args, input=input, catch_exceptions=False)


def test_users_commands_read_passwords_from_prompt_or_stdin(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    base = ["dashboard", "users", "--users-file", str(path)]
    added = run([*base, "add", "alice", "--role", "operator", "--display-name", "Alice M"],
                input=f"{SECRET}\n{SECRET}\n")
    assert added.exit_code == 0, added.output
    assert SECRET not in added.output  # hidden prompt: no echo
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    piped = run([*base, "add", "bob", "--password-stdin"], input="bob's long password\n")
    assert piped.exit_code == 0, piped.output
    listed = run([*base, "list"])
    assert listed.stdout.splitlines() == ["alice\toperator\tAlice M", "bob\tviewer\t"]
    auth = Authenticator(UsersFile(path))
    assert auth.verify("alice", SECRET).label == "Alice M" and auth.verify("bob", "bob's long password")

    # A mistyped confirmation asks again; the second pair is kept.
    changed = run([*base, "passwd", "alice"], input="first try pw\nfirst typo pw\nthe new secret\nthe new secret\n")
    assert changed.exit_code == 0 and "do not match" in changed.output
    assert auth.verify("alice", "the new secret").name == "alice"
    assert run([*base, "role", "bob", "admin"]).exit_code == 0
    assert run([*base, "remove", "bob"]).exit_code == 0
    assert run([*base, "list"]).stdout.splitlines() == ["alice\toperator\tAlice M"]


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["add", "alice", "--password-stdin"], "short\n", "error: the password is too short (use 10 to 1024"),
    (["passwd", "nobody", "--password-stdin"], f"{SECRET}\n", "error: no user 'nobody'"),
    (["remove", "nobody"], None, "error: no user 'nobody'"),
    (["add", "al ice", "--password-stdin"], f"{SECRET}\n", "error: invalid user name"),
])
def test_users_commands_refuse_in_one_line(tmp_path: Path, args: list[str], stdin: str | None, message: str) -> None:
    result = run(["dashboard", "users", "--users-file", str(tmp_path / "u.toml"), *args], input=stdin)
    assert result.exit_code == 2 and result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1


def test_no_users_command_takes_a_password_argument(tmp_path: Path) -> None:
    def walk(command: click.Command) -> Iterator[click.Parameter]:
        yield from command.params
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                yield from walk(sub)

    names = {name for p in walk(dashboard_cli.users) for name in p.opts if "pass" in name}
    assert names == {"--password-stdin"}  # a flag: it takes no value
    refused = run(["dashboard", "users", "--users-file", str(tmp_path / "u.toml"), "add", "eve",
                   "--password", SECRET])
    assert refused.exit_code == 2 and "No such option" in refused.output and not (tmp_path / "u.toml").exists()


def test_users_need_a_configured_file() -> None:
    result = run(["dashboard", "users", "list"])
    assert result.exit_code == 2 and "no users file is configured" in result.stderr


# -- binding -------------------------------------------------------------------------------


def settings(**dashboard: object) -> DashboardSettings:
    return DashboardSettings(dashboard=dashboard)


def test_every_interface_without_a_login_is_refused(tmp_path: Path) -> None:
    result = run(["dashboard", "--address", "0.0.0.0", "--store", str(tmp_path / "s.db")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: refusing to listen on 0.0.0.0 without a login")
    assert len(result.stderr.splitlines()) == 1
    check_exposure(settings(address="127.0.0.1"))
    check_exposure(settings(address="::1"))
    with pytest.raises(DashboardError, match=r"refusing to listen on 10\.1\.2\.3"):
        check_exposure(settings(address="10.1.2.3"))


def test_allow_unauthenticated_warns(capsys: pytest.CaptureFixture[str]) -> None:
    check_exposure(settings(address="0.0.0.0", allow_unauthenticated=True))
    assert "warning: the dashboard listens on 0.0.0.0 without a login" in capsys.readouterr().err


def test_a_users_file_allows_every_interface_but_must_hold_users(users: UsersFile, tmp_path: Path) -> None:
    check_exposure(settings(address="0.0.0.0", users_file=users.path))
    with pytest.raises(DashboardError, match="holds no user"):
        check_exposure(settings(address="0.0.0.0", users_file=tmp_path / "missing.toml"))


def test_streamlit_runs_with_its_exposure_options_explicit() -> None:
    command = streamlit_command(settings())
    options = dict(zip(command[5::2], command[6::2], strict=True))
    assert options["--server.address"] == "127.0.0.1"
    assert (options["--server.enableXsrfProtection"], options["--server.enableCORS"],
            options["--server.enableStaticServing"], options["--client.showErrorDetails"]) == (
        "true", "true", "false", "none")


# -- the app -------------------------------------------------------------------------------


@pytest.fixture
def secured(users: UsersFile) -> Iterator[FakeRuntime]:
    runtime = make_runtime(False)
    runtime.settings = DashboardSettings(dashboard={"consume": False, "refresh_s": 60, "users_file": users.path})
    populate(runtime.store, machines=60, predictions=6000, seed=3)
    yield runtime
    runtime.close()


def sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="login_name").input(name)
    at.text_input(key="login_password").input(password)
    return at.button[0].click().run()


def test_every_page_needs_a_signed_in_user(app: Callable[[Runtime], AppTest], secured: FakeRuntime) -> None:
    for page in PAGES:
        at = open_page(app(secured), page)
        assert [t.value for t in at.title] == ["Forewarn"] and len(at.text_input) == 2
        assert not at.dataframe and not at.metric
    at = open_page(app(secured), "alerts")
    sign_in(at, "nobody", SECRET)
    assert [e.value for e in at.error] == [WRONG] and not at.dataframe


def signed_in_on_alerts(at: AppTest, name: str, password: str, label: str, role: str) -> AppTest:
    sign_in(at.run(), name, password)
    no_exceptions(at)
    assert [t.value for t in at.title] == ["Fleet"]
    assert any(m.value.startswith(f"**{label}** · {role}") for m in at.sidebar.markdown)
    return open_page(at, "alerts")


def test_a_viewer_reads_alerts_but_cannot_acknowledge(app: Callable[[Runtime], AppTest], secured: FakeRuntime) -> None:
    at = signed_in_on_alerts(app(secured), "vera", "viewer password", "Vera Viewer", "viewer")
    assert [t.value for t in at.title] == ["Alerts"] and at.dataframe
    assert not [b for b in at.button if b.key == "ack_button"]
    assert any("Read only" in c.value and "operator" in c.value for c in at.caption)
    # The action checks the role itself.
    rows = queries.alert_list(secured.store, ["open"]).head(1).to_dict("records")
    assert rows
    with pytest.raises(DashboardError, match="may not acknowledge"):
        actions.acknowledge(secured, rows, Principal("vera", "viewer"))
    assert not secured.kafka.messages(secured.topics.alerts)
    # Signing out shows the login form again.
    at.sidebar.button(key="sign_out").click().run()
    assert len(at.text_input) == 2 and not at.dataframe


def test_an_operator_acknowledges_with_a_note(app: Callable[[Runtime], AppTest], secured: FakeRuntime) -> None:
    at = signed_in_on_alerts(app(secured), "olga", SECRET, "Olga Operator", "operator")
    first = queries.alert_list(secured.store, ["open"]).iloc[0]
    at.multiselect(key="ack_alerts").select(str(first["alert_id"])).run()
    at.text_area(key="ack_note").input("vibration checked, bearing ordered").run()
    at.button(key="ack_button").click().run()
    no_exceptions(at)
    sent = secured.kafka.messages(secured.topics.alerts)
    event = msgspec.json.decode(sent[0].value(), type=Alert)
    assert (len(sent), event.alert_id, event.acknowledged_by, event.note) == (
        1, first["alert_id"], "Olga Operator", "vibration checked, bearing ordered")
    with pytest.raises(DashboardError, match="the note has 501 characters"):
        actions.acknowledge(secured, [first.to_dict()], Principal("olga", "operator"), "x" * 501)
    assert len(secured.kafka.messages(secured.topics.alerts)) == 1
