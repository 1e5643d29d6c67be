"""Connecting to brokers that are not Mosquitto 2: every way a 3.1.1-only broker refuses MQTT 5,
a slow CONNACK, reconnect backoff, a connection reset under an acknowledgement; client ids: unique
defaults, and two clients with one id that would kick each other off forever."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge._mqtt_ids import host_client_id
from bridge._subscriber import Subscriber
from bridge.settings import _default_client_id
from forewarn.errors import MqttError
from tests.bridge.fakes import (
    AEDES_LIKE,
    MOSQUITTO_311_LIKE,
    MiniBroker,
    Profile,
    WireBroker,
    mqtt_settings,
    read_packet,
    read_until,
    read_until_error,
    reconnected,
    wait_for,
)


@pytest.mark.parametrize("profile", [
    MOSQUITTO_311_LIKE,  # CONNACK with 3.1.1 return code 1
    Profile(versions=frozenset({4}), refuse_v5="connack_0x84", shared_subscriptions=False),
    AEDES_LIKE,  # closes the socket before any CONNACK
    Profile(versions=frozenset({4}), refuse_v5="reset", shared_subscriptions=False),
], ids=["connack-0x01", "connack-0x84", "close", "reset"])
def test_auto_falls_back_to_3_1_1_on_every_refusal_and_says_so_once(
        profile: Profile, caplog: pytest.LogCaptureFixture) -> None:
    broker = MiniBroker(profile)
    sub = Subscriber(mqtt_settings(broker.port), "b", session_expiry_s=60)
    with caplog.at_level(logging.WARNING, logger="bridge._subscriber"):
        sub.connect()
        sub.subscribe(["forewarn/+/+/telemetry"])
        assert wait_for(lambda: broker.subscribes)
        broker.publish("forewarn/s/m/telemetry", b"{}")
        got = read_until(sub, 1)
        broker.send_raw("b", b"\xe0\x00")  # the broker drops us: the reconnect goes straight to 3.1.1
        assert wait_for(lambda: (sub.read(1), len(broker.connects) >= 3)[1])
    sub.disconnect()
    broker.close()
    assert [level for level, _cid in broker.connects] == [5, 4, 4]
    assert got == [("forewarn/s/m/telemetry", b"{}", 1, 1)] and sub.protocol == "3.1.1"
    downgrades = [r for r in caplog.records if "refused MQTT 5" in r.getMessage()]
    assert len(downgrades) == 1 and downgrades[0].levelno == logging.WARNING


def test_a_3_1_1_attempt_that_fails_the_same_way_is_a_connection_failure() -> None:
    broker = MiniBroker(Profile(versions=frozenset(), refuse_v5="close"))
    sub = Subscriber(mqtt_settings(broker.port), "b")
    with pytest.raises(MqttError, match="closed the connection before CONNACK"):
        sub.connect()
    broker.close()
    assert [level for level, _cid in broker.connects] == [5, 4]


def test_a_slow_connack_is_not_a_refusal_of_mqtt_5() -> None:
    versions: list[int] = []

    def script(conn: socket.socket, _n: int) -> None:
        _first, body = read_packet(conn)
        versions.append(body[6])
        time.sleep(1.5)  # longer than the subscriber waits for CONNACK

    broker = WireBroker(script)
    sub = Subscriber(mqtt_settings(broker.port), "b")
    with pytest.raises(MqttError, match="no CONNACK") as raised:
        sub._wanted = True
        sub._open(timeout_s=0.3)
    broker.close()
    assert versions == [5] and raised.value.reason_code is None and sub.protocol == "5"


def test_backoff_grows_while_connections_die_young_and_resets_after_a_stable_one() -> None:
    broker = MiniBroker()
    sub = Subscriber(mqtt_settings(broker.port, reconnect_min_s=0.05, reconnect_max_s=0.4), "b")
    sub.connect()
    delays = []
    for _ in range(4):
        sub._lost("test drop")
        delays.append(sub._delay)
        assert reconnected(sub)
    sub._connected_at -= 31  # as if this connection had been up for longer than the stable period
    sub._lost("test drop")
    delays.append(sub._delay)
    sub.disconnect()
    broker.close()
    assert delays == [0.1, 0.2, 0.4, 0.4, 0.05]


def test_a_reset_while_acknowledging_reconnects_and_the_broker_sends_again() -> None:
    broker = MiniBroker()
    sub = Subscriber(mqtt_settings(broker.port), "b")
    sub.connect()
    sub.subscribe(["a/#"])
    assert wait_for(lambda: broker.subscribes)
    broker.publish("a/b", b"x")
    (message,) = read_until(sub, 1)
    assert sub._sock is not None
    sub._sock.close()  # what a reset leaves: writing raises OSError
    sub.ack_many([message[3]])  # must not raise
    assert not sub.is_connected
    assert reconnected(sub)
    sub.disconnect()
    broker.close()
    assert broker.pubacks == [] and [level for level, _cid in broker.connects] == [5, 5]


def test_two_clients_with_one_id_stop_kicking_each_other_off(caplog: pytest.LogCaptureFixture) -> None:
    broker = MiniBroker()  # takes the session over with DISCONNECT 0x8E, as MQTT 5 brokers do
    one, two = (Subscriber(mqtt_settings(broker.port), "dup") for _ in range(2))
    with caplog.at_level(logging.ERROR, logger="bridge._subscriber"):
        one.connect()
        two.connect()
        error = read_until_error(one, two)
    one.disconnect()
    two.disconnect()
    broker.close()
    assert error is not None and "'dup'" in str(error) and error.hint and "--client-id" in error.hint
    assert error.reason_code == 0x8E
    named = [r for r in caplog.records if "'dup'" in r.getMessage() and r.levelno == logging.ERROR]
    assert 1 <= len(named) <= 2  # one per client that was kicked off, not one per kick


def test_a_3_1_1_broker_closing_right_after_connack_again_and_again_ends_it() -> None:
    def script(conn: socket.socket, _n: int) -> None:
        read_packet(conn)
        conn.sendall(b"\x20\x02\x00\x00")  # accepted... and closed at once (how 3.1.1 brokers take over)

    broker = WireBroker(script)
    sub = Subscriber(mqtt_settings(broker.port, protocol="3.1.1"), "dup")
    sub.connect()
    error = read_until_error(sub)
    broker.close()
    assert error is not None and "3 times" in str(error) and not sub.is_connected


def test_default_client_ids_are_unique_per_running_bridge_and_come_back_after_a_restart(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from bridge.settings import _default_client_id; "
            f"print(_default_client_id(Path({str(tmp_path)!r})), flush=True); sys.stdin.read()")

    def start() -> tuple[subprocess.Popen[str], str]:
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        assert child.stdout is not None
        return child, child.stdout.readline().strip()

    first, a = start()
    second, b = start()
    first.kill()  # however it ends, its id is free again
    first.communicate()
    third, c = start()
    for child in (second, third):
        child.communicate("")
    base = host_client_id(socket.gethostname())
    assert (a, b, c) == (base, host_client_id(socket.gethostname(), 2), base)
    assert _default_client_id(tmp_path) == _default_client_id(tmp_path)  # stable for the process's life
