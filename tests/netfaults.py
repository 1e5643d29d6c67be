"""Network faults on this machine, for the fault campaign: network namespaces on a private
switch, links cut and healed, a link slowed and made lossy. Traffic never leaves the machine.

:class:`Network` is one private L2 segment: a Linux bridge device (the switch) in the host's
namespace, holding the host's address, and a namespace per Kafka node plus one for a client
(the MQTT→Kafka bridge process), each plugged into the switch by a veth pair. Nothing is routed
(no IP forwarding): every address is on the one subnet, so the host's processes (Mosquitto, the
scoring workers, the campaign's publisher) reach the nodes as neighbours, and so do the nodes
each other. Cutting a namespace's link (its veth's switch end down) cuts it off from everyone
at once, with no RST or ICMP: connections just stop, as behind a failed switch port.

"Slow and lossy": this kernel has no ``netem`` (nor ``prio``, ``fq_codel``, ``sfq`` or
``clsact``), so there is no random loss or added delay. :meth:`Link.shape` puts the Kafka ports'
traffic of a link, both ways, into an ``htb`` class whose leaf is a ``tbf`` with a small queue:
the link is as slow as its rate, packets wait in the queue (delay up to limit/rate), and what
exceeds the queue is dropped. That loss is real (TCP retransmits it) but comes in bursts when the
sender outruns the rate, not at random.

Every run has its own short names (``fwn<4 hex>``, interface names within Linux's 15
characters) and subnet (a free ``10.231.N.0/24``), so a test and a benchmark can run side by
side. Before anything is made, a file under ``/run/forewarn-netfaults`` records the owner (pid
and start time); :meth:`Network.destroy` runs on exit from the ``with`` block, and every new
Network first removes what a killed earlier run left (namespaces, the processes in them, links)
when its owner is gone. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from forewarn.stack._process import ProcessId

STATE = Path("/run/forewarn-netfaults")
_TOKEN = re.compile(r"^fwn[0-9a-f]{4}")
_SUBNETS = "10.231.{}.0/24"


class NetError(RuntimeError):
    """An ip or tc command failed."""


def ip(*args: str, check: bool = True) -> str:
    return _run(["ip", *args], check)


def tc(*args: str, netns: str | None = None, check: bool = True) -> str:
    return _run(["tc", *(("-n", netns) if netns else ()), *args], check)


def _run(argv: list[str], check: bool) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


def available() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        ip("-V")
        tc("-V")
    except (OSError, NetError) as error:
        return f"iproute2 is missing: {error}"
    return None


@dataclass(frozen=True)
class Shaping:
    """A slow, lossy link: ``rate`` (tc units, e.g. ``256kbit``), tbf ``burst`` bytes, and a
    queue of ``limit`` bytes beyond which packets are dropped."""

    rate: str = "256kbit"
    burst: int = 4096
    limit: int = 8192

    def __str__(self) -> str:
        return f"{self.rate}, burst {self.burst} B, drop-tail queue {self.limit} B"


class Link:
    """A namespace's veth pair: ``outer`` on the switch (host namespace), ``eth0`` inside."""

    def __init__(self, namespace: str, outer: str) -> None:
        self.namespace, self.outer = namespace, outer

    def cut(self) -> None:
        """Take the switch end down: nothing reaches the namespace, it reaches nothing."""
        ip("link", "set", self.outer, "down")

    def heal(self) -> None:
        ip("link", "set", self.outer, "up")

    def is_up(self) -> bool:
        """The switch end is administratively up (not cut)."""
        flags = ip("-o", "link", "show", self.outer).split("<", 1)[1].split(">", 1)[0].split(",")
        return "UP" in flags

    def shape(self, ports: Sequence[int], shaping: Shaping) -> None:
        """The traffic to and from ``ports`` (TCP) through this link, both ways, at ``shaping``;
        the rest unshaped. Egress of ``eth0`` (to the ports) and of the switch end (from them)."""
        for netns, dev, field in ((self.namespace, "eth0", "dport"), (None, self.outer, "sport")):
            self._unshape(netns, dev)
            tc("qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20", netns=netns)
            tc("class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", shaping.rate,
               "ceil", shaping.rate, netns=netns)
            tc("class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate", "10gbit", netns=netns)
            tc("qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", "tbf", "rate", shaping.rate,
               "burst", str(shaping.burst), "limit", str(shaping.limit), netns=netns)
            for port in ports:
                tc("filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match", "ip",
                   field, str(port), "0xffff", "flowid", "1:10", netns=netns)

    def shaped_stats(self) -> dict[str, int]:
        """Packets and bytes sent, packets dropped and times over the rate, by the shaped queues
        of both ends so far (zeros when unshaped)."""
        total = {"sent_packets": 0, "sent_bytes": 0, "dropped": 0, "overlimits": 0}
        for netns, dev in ((self.namespace, "eth0"), (None, self.outer)):
            for q in json.loads(tc("-s", "-j", "qdisc", "show", "dev", dev, netns=netns) or "[]"):
                if q.get("kind") == "tbf":
                    total["sent_packets"] += int(q.get("packets", 0))
                    total["sent_bytes"] += int(q.get("bytes", 0))
                    total["dropped"] += int(q.get("drops", 0))
                    total["overlimits"] += int(q.get("overlimits", 0))
        return total

    def unshape(self) -> None:
        self._unshape(self.namespace, "eth0")
        self._unshape(None, self.outer)

    @staticmethod
    def _unshape(netns: str | None, dev: str) -> None:
        tc("qdisc", "del", "dev", dev, "root", netns=netns, check=False)


@dataclass(frozen=True)
class Namespace:
    name: str
    address: str
    link: Link

    @property
    def prefix(self) -> tuple[str, ...]:
        """The argv prefix that runs a command in this namespace."""
        return ("ip", "netns", "exec", self.name)


class Network:
    """A switch with the host's address and ``nodes`` node namespaces plus a client namespace
    plugged into it (see the module doc). ``with Network(3) as net: ...``."""

    def __init__(self, nodes: int = 3) -> None:
        self._nodes = nodes
        self.subnet = ""
        self.host_address = ""
        self.nodes: list[Namespace] = []
        self._client: Namespace | None = None
        self._name(f"fwn{random.getrandbits(16):04x}")

    def _name(self, token: str) -> None:
        self.token, self.switch = token, f"{token}-sw"
        self._state_file = STATE / f"{token}.json"

    # -- making and removing -------------------------------------------------------------------

    def create(self) -> Self:
        STATE.mkdir(parents=True, exist_ok=True)
        with _locked():
            sweep()
            while self._state_file.exists():  # a live run holds this token: take another
                self._name(f"fwn{random.getrandbits(16):04x}")
            third = _free_subnet()
            me = ProcessId.of(os.getpid())
            assert me is not None
            self._state_file.write_text(json.dumps({"pid": me.pid, "start": me.start, "subnet": third}))
        base = f"10.231.{third}"
        self.subnet, self.host_address = _SUBNETS.format(third), f"{base}.1"
        try:
            ip("link", "add", self.switch, "type", "bridge", "forward_delay", "0")
            ip("addr", "add", f"{self.host_address}/24", "dev", self.switch)
            ip("link", "set", self.switch, "up")
            self._client = self._plug("cl", f"{base}.2")
            self.nodes = [self._plug(f"k{i}", f"{base}.{10 + i}") for i in range(1, self._nodes + 1)]
        except BaseException:
            self.destroy()
            raise
        return self

    def _plug(self, role: str, address: str) -> Namespace:
        name, outer = f"{self.token}-{role}", f"{self.token}{role}"
        ip("netns", "add", name)
        ip("link", "add", outer, "type", "veth", "peer", "name", f"{outer}p")
        ip("link", "set", f"{outer}p", "netns", name)
        ip("-n", name, "link", "set", f"{outer}p", "name", "eth0")
        ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        ip("-n", name, "link", "set", "lo", "up")
        ip("link", "set", outer, "master", self.switch)
        ip("link", "set", outer, "up")
        return Namespace(name, address, Link(name, outer))

    def destroy(self) -> None:
        """Remove every namespace (and the processes left in them), link and the switch."""
        _teardown(self.token)
        self._state_file.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()

    # -- what the stack needs ------------------------------------------------------------------

    @property
    def client(self) -> Namespace:
        """The namespace for a client process (the campaign's MQTT→Kafka bridge)."""
        if self._client is None:
            raise NetError("the network has not been created")
        return self._client

    @property
    def node_addresses(self) -> tuple[str, ...]:
        return tuple(n.address for n in self.nodes)

    @property
    def node_prefixes(self) -> tuple[tuple[str, ...], ...]:
        return tuple(n.prefix for n in self.nodes)

    def namespace_of(self, address: str) -> Namespace:
        return next(n for n in [*self.nodes, self.client] if n.address == address)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with (STATE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _free_subnet() -> int:
    """A third octet N whose 10.231.N.0/24 no address or route of this machine and no live run uses."""
    used = set(re.findall(r"10\.231\.(\d+)\.", ip("-4", "addr") + ip("-4", "route")))
    for state in STATE.glob("fwn*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            used.add(str(json.loads(state.read_text())["subnet"]))
    free = [n for n in range(256) if str(n) not in used]
    if not free:
        raise NetError("no free 10.231.N.0/24 subnet")
    return random.choice(free)


def _owner_alive(token: str) -> bool:
    try:
        owner: dict[str, Any] = json.loads((STATE / f"{token}.json").read_text())
    except (OSError, ValueError):
        return False
    return ProcessId(int(owner["pid"]), int(owner["start"])).alive


def sweep() -> list[str]:
    """Remove what runs whose owner is gone left behind; returns their tokens."""
    found = {m.group(0) for name in ip("netns", "list").split() if (m := _TOKEN.match(name))}
    found |= {m.group(0) for line in ip("-o", "link").splitlines()
              if (m := _TOKEN.match(line.split(":")[1].strip().split("@")[0]))}
    found |= {p.stem for p in STATE.glob("fwn*.json")}
    dead = sorted(t for t in found if not _owner_alive(t))
    for token in dead:
        _teardown(token)
        (STATE / f"{token}.json").unlink(missing_ok=True)
    return dead


def _teardown(token: str) -> None:
    namespaces = [n for n in ip("netns", "list", check=False).split() if n.startswith(f"{token}-")]
    for name in namespaces:  # a namespace lives on while a process is in it: end them first
        pids = [int(p) for p in ip("netns", "pids", name, check=False).split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        ip("netns", "del", name, check=False)
    for line in ip("-o", "link", check=False).splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(token) and not name.endswith("-sw"):
            ip("link", "del", name, check=False)
    ip("link", "del", f"{token}-sw", check=False)
