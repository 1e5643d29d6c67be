"""Fixtures for the dashboard's AppTest tests: a runtime with an in-memory store (empty or
filled with a synthetic fleet) and an in-memory Kafka for acknowledgements, installed for
the app instead of the process-wide one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest

from dashboard.runtime import Runtime, install
from dashboard.settings import DashboardSettings
from dashboard.store import Store
from dashboard.synthetic import populate
from forewarn.testing import FakeProducer, InMemoryKafka
from forewarn.topics import Topics

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PAGES = ("fleet", "machine", "alerts", "models", "pipeline")


class FakeRuntime(Runtime):
    """A runtime whose acknowledgements land in an in-memory Kafka."""

    kafka: InMemoryKafka


def make_runtime(filled: bool) -> FakeRuntime:
    settings = DashboardSettings(dashboard={"consume": False, "refresh_s": 60})
    store = Store()
    if filled:
        populate(store, machines=120, predictions=12_000)
    kafka = InMemoryKafka()
    runtime = FakeRuntime(settings, store, Topics.from_settings(settings.topics), FakeProducer(kafka))
    runtime.kafka = kafka
    return runtime


@pytest.fixture(scope="module")
def filled_runtime() -> Iterator[FakeRuntime]:
    runtime = make_runtime(True)
    yield runtime
    runtime.close()


@pytest.fixture
def empty_runtime() -> Iterator[FakeRuntime]:
    runtime = make_runtime(False)
    yield runtime
    runtime.close()


@pytest.fixture
def app() -> Iterator[Callable[[Runtime], AppTest]]:
    """Factory: ``app(runtime)`` → an AppTest of the dashboard using that runtime."""

    def make(runtime: Runtime) -> AppTest:
        install(runtime)
        return AppTest.from_file(APP, default_timeout=60)

    # Without a users file the app serves a loopback address only, as `forewarn dashboard` runs it.
    config.set_option("server.address", "127.0.0.1")
    yield make
    config.set_option("server.address", None)
    install(None)


def open_page(at: AppTest, page: str) -> AppTest:
    if page != "fleet":
        at.switch_page(f"views/{page}.py")
    return at.run()


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def charts(at: AppTest) -> list[object]:
    return list(at.get("vega_lite_chart"))
