"""Client ids every broker takes (MQTT 3.1.1, 3.1.3.1: 1 to 23 characters MUST be allowed): the
bridge's default id and the ids of its probe and watch connections fit, stay the same across
restarts and differ between bridges; a configured longer id is used as it is; a broker's
"identifier rejected" is one actionable line."""

from __future__ import annotations

import pytest

from bridge._mqtt_ids import PORTABLE_MAX, derived_client_id, fit_client_id, host_client_id
from bridge._subscriber import Subscriber
from bridge.broker_watch import BrokerWatch, QueueCaps
from bridge.metrics import BridgeMetrics
from bridge.settings import BridgeOptions
from forewarn.errors import MqttError
from tests.bridge.fakes import MiniBroker, Profile, mqtt_settings

# An aedes-like 3.1.1 broker that also refuses ids past 23 characters (as brokers speaking 3.1 do).
STRICT_311 = Profile(versions=frozenset({4}), refuse_v5="close", shared_subscriptions=False,
                     max_client_id=PORTABLE_MAX)


@pytest.mark.parametrize("host", ["h", "a-very-long-host-name.plant-7.example.internal", "ünïcødé-host"])
def test_default_ids_and_their_helpers_fit_23_characters_and_are_stable(host: str) -> None:
    ids = [host_client_id(host, slot) for slot in range(1, 65)]
    assert len(set(ids)) == len(ids)
    for client_id in ids:
        for candidate in (client_id, derived_client_id(client_id, "probe"), derived_client_id(client_id, "watch")):
            assert 1 <= len(candidate) <= PORTABLE_MAX and candidate.isascii(), candidate
    assert ids == [host_client_id(host, slot) for slot in range(1, 65)]  # the same after a restart
    assert host_client_id(host) != host_client_id(host + "x")  # another host, another id


def test_long_ids_are_fitted_deterministically_keeping_their_role_and_apart() -> None:
    short = "kill9-abcdef-probe"
    assert fit_client_id(short) == short  # short enough: unchanged
    a, b = (fit_client_id(f"forewarn-bridge-{host}-watch") for host in ("plant-a-line-1", "plant-a-line-2"))
    assert len(a) == len(b) == PORTABLE_MAX and a.endswith("-watch") and b.endswith("-watch")
    assert a != b  # ids that differ only near their end stay apart
    assert fit_client_id("forewarn-bridge-plant-a-line-1-watch") == a  # stable
    assert len(fit_client_id("x" * 200)) == PORTABLE_MAX


def test_a_configured_longer_id_is_used_as_it_is() -> None:
    broker = MiniBroker()
    client_id = "a-configured-bridge-id-of-forty-characters"[:40]
    options = BridgeOptions(client_id=client_id)
    sub = Subscriber(mqtt_settings(broker.port, protocol="3.1.1"), options.client_id)
    sub.connect()
    sub.disconnect()
    broker.close()
    assert broker.connects == [(4, client_id)]


@pytest.mark.parametrize(("protocol", "profile", "code"), [
    ("auto", STRICT_311, 0x02),  # MQTT 5 refused (closed), then 3.1.1 return code 2
    ("5", Profile(versions=frozenset({5}), max_client_id=PORTABLE_MAX), 0x85),
])
def test_identifier_rejected_says_to_choose_an_id_of_at_most_23_characters(protocol: str, profile: Profile,
                                                                           code: int) -> None:
    broker = MiniBroker(profile)
    client_id = "forewarn-bridge-some-long-host-name"
    sub = Subscriber(mqtt_settings(broker.port, protocol=protocol), client_id)
    with pytest.raises(MqttError) as caught:
        sub.connect()
    broker.close()
    line = caught.value.one_line()
    assert caught.value.reason_code == code
    assert "\n" not in line and client_id in line and "at most 23" in line and "bridge.client_id" in line


def test_the_shared_subscription_probe_connects_with_a_fitted_id() -> None:
    broker = MiniBroker(STRICT_311)
    client_id = host_client_id("some-host", 64)  # the longest default id
    sub = Subscriber(mqtt_settings(broker.port), client_id, probe_timeout_s=0.3)
    sub.subscribe(["$share/forewarn-bridge/forewarn/+/+/+"])
    sub.connect()
    sub.disconnect()
    broker.close()
    assert (4, derived_client_id(client_id, "probe")) in broker.connects
    assert broker.connects[-1] == (4, client_id)
    assert not broker.errors


def test_the_broker_watch_fits_the_id_it_is_given() -> None:
    caps = QueueCaps(messages=1000, bytes=10_000, warn_fraction=0.8)
    watch = BrokerWatch(mqtt_settings(1883), "a-configured-bridge-id-of-forty-chars-watch", caps, BridgeMetrics())
    assert len(watch._client.client_id) == PORTABLE_MAX and watch._client.client_id.endswith("-watch")
