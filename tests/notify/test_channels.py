"""The channels against real local receivers (no broker): what a webhook's answer means, what
an email carries, and the settings and CLI refusals that keep secrets off command lines."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from forewarn.cli import cli
from notify.book import Notice, Tracked
from notify.channels import AppriseSender, WebhookSender, build_senders, message_id
from notify.errors import DeliveryFailed
from notify.messages import Outgoing, render
from notify.settings import AppriseChannel, EmailChannel, NotifyOptions, WebhookChannel
from tests.notify.helpers import T0, alert
from tests.notify.receivers import WebhookReceiver
from tests.stacks import free_port


def message(channel: str = "hook") -> Outgoing:
    t = Tracked(1, alert(), 0, "all")
    (out,) = render(channel, [(t, Notice(f"{t.alert_id}|opened|0|{channel}", channel, "opened", 0, T0))],
                    digest_min=5, digest_lines=5, dashboard_url="http://dash.example:8501/")
    return out


@pytest.fixture
def answering() -> Iterator[tuple[str, list[int]]]:
    """An HTTP server answering each POST with the next status of a list (200 when it runs out)."""
    statuses: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(statuses.pop(0) if statuses else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", statuses
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "retriable"), [(500, True), (503, True), (429, True), (408, True),
                                                   (400, False), (401, False), (404, False), (410, False)])
def test_webhook_answers_decide_between_retry_and_dead_letter(answering: tuple[str, list[int]], status: int,
                                                              retriable: bool) -> None:
    url, statuses = answering
    statuses.append(status)
    sender = WebhookSender("hook", WebhookChannel(url=url))
    with pytest.raises(DeliveryFailed, match=f"HTTP {status}") as failed:
        sender.send(message())
    assert failed.value.retriable is retriable
    sender.send(message())  # 200 now


def test_webhook_down_is_retried_and_a_token_comes_from_its_file(tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    sender = WebhookSender("hook", WebhookChannel(url=receiver.url(), token_file=token, headers={"X-Plant": "a"}))
    with pytest.raises(DeliveryFailed, match="unreachable") as failed:
        sender.send(message())
    assert failed.value.retriable
    receiver.start()
    try:
        sender.send(message())
    finally:
        receiver.stop()
    (request,) = receiver.requests
    assert request.headers["authorization"] == "Bearer s3cret-token" and request.headers["x-plant"] == "a"
    assert request.headers["idempotency-key"] == request.body["key"] == "site-a/pump-0001:1|opened|0|hook"
    assert request.body["notifications"][0]["alert"]["machine_id"] == "site-a/pump-0001"


def test_a_missing_secret_file_is_a_failed_delivery_naming_the_file_not_the_secret(tmp_path: Path) -> None:
    sender = WebhookSender("hook", WebhookChannel(url="http://127.0.0.1:1/", token_file=tmp_path / "gone"))
    with pytest.raises(DeliveryFailed, match="gone"):
        sender.send(message())


def test_message_ids_follow_the_idempotency_key() -> None:
    assert message_id("a|opened|0|mail") == message_id("a|opened|0|mail") != message_id("a|opened|1|mail")
    out = message()
    assert "http://dash.example:8501/alerts" in out.body and out.title.startswith("[CRITICAL] site-a/pump-0001")


def test_settings_refuse_what_would_leak_or_route_nowhere(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="password in clear"):
        EmailChannel(host="h", security="none", username="u", sender="a@b", to=["c@d"])
    with pytest.raises(ValidationError, match="names channel"):
        NotifyOptions.model_validate({"channels": {}, "rules": [{"name": "r", "channels": ["nowhere"]}]})
    with pytest.raises(ValidationError, match="HH:MM-HH:MM"):
        NotifyOptions.model_validate({"channels": {"h": {"kind": "webhook", "url": "http://x/"}},
                                      "rules": [{"name": "r", "channels": ["h"], "hours": "9-17"}]})
    with pytest.raises(ValidationError, match="unknown time zone"):
        NotifyOptions(timezone="Mars/Olympus")
    assert not hasattr(EmailChannel, "password") and "password" not in EmailChannel.model_fields


def test_apprise_urls_are_checked_at_start(tmp_path: Path) -> None:
    urls = tmp_path / "urls"
    urls.write_text("# ops chat\nnot-a-service://x\n")
    with pytest.raises(Exception, match="URL 1 of") as refused:
        build_senders({"chat": AppriseChannel(urls_file=urls)})
    assert "not-a-service" not in str(refused.value)  # the URL (a token) is never echoed
    urls.write_text("ntfy://ntfy.example/plant-a\n")
    assert isinstance(build_senders({"chat": AppriseChannel(urls_file=urls)})["chat"], AppriseSender)


def _toml(tmp_path: Path, body: str) -> dict[str, str]:
    path = tmp_path / "forewarn.toml"
    path.write_text(body)
    return {"FOREWARN_CONFIG": str(path)}


def test_cli_without_rules_and_send_test(tmp_path: Path) -> None:
    runner = CliRunner()
    env = _toml(tmp_path, "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n")
    result = runner.invoke(cli, ["notify"], env=env)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: no notification rules: nothing would ever be sent (add [notify.channels.<name>] and "
        "[[notify.rules]] to forewarn.toml)"]
    receiver = WebhookReceiver().start()
    try:
        env = _toml(tmp_path, f'[notify.channels.hook]\nkind = "webhook"\nurl = "{receiver.url()}"\n')
        result = runner.invoke(cli, ["notify", "--send-test", "hook"], env=env)
        assert result.exit_code == 0, result.output
        assert result.output.startswith("hook: test message delivered")
        assert len(receiver.requests) == 1
        result = runner.invoke(cli, ["notify", "--send-test", "pager"], env=env)
        assert result.exit_code == 2 and "no channel 'pager' (the channels are: hook)" in result.output
    finally:
        receiver.stop()
    down = _toml(tmp_path, f'[notify.channels.hook]\nkind = "webhook"\nurl = "{receiver.url()}"\n')
    result = runner.invoke(cli, ["notify", "--send-test", "hook"], env=down)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "unreachable" in result.output
