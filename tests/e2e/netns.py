"""Test hosts on one machine: each a Linux network namespace with its own loopback and one routed
address on a bridge that the test creates (root only). A process started in a host reaches the
others only through their routed addresses, never through its own 127.0.0.1, so a test can show
that nothing quietly assumes one machine. Everything is removed again by the test that made it."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field


def can_make_namespaces() -> tuple[bool, str]:
    """(True, "") when this process may create network namespaces, else (False, why not)."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    probe = f"vdprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return False, f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], check=False)
    return True, ""


def _ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", *(("-n", namespace) if namespace else ()), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")


@dataclass(frozen=True)
class Host:
    """One test host.

    :param name: its name in the test (``worker-1``, ``emulator``, ...).
    :param namespace: the network namespace it lives in.
    :param address: its routed IPv4 address.
    """

    name: str
    namespace: str
    address: str

    def command(self, *args: str) -> list[str]:
        """``args`` run inside this host (``ip netns exec`` execs them: the pid is theirs)."""
        return [*self.prefix, *args]

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.namespace) if self.namespace else ()

    @property
    def isolated(self) -> bool:
        """False on the loopback fallback: every "host" is this machine."""
        return bool(self.namespace)


@dataclass
class HostNetwork:
    """A bridge in the root namespace and the hosts attached to it.

    :param tag: a short, unique tag for the names of everything made (interfaces are <= 15 chars).
    :param subnet: the hosts' subnet; the bridge (the root namespace, i.e. this machine's own
        processes) takes its first address.
    """

    tag: str
    subnet: str = "10.231.0.0/24"
    hosts: dict[str, Host] = field(default_factory=dict)
    _namespaces: list[str] = field(default_factory=list)
    _bridge: str | None = None

    def __post_init__(self) -> None:
        self._network = ipaddress.ip_network(self.subnet)
        self._addresses = self._network.hosts()
        self.gateway = str(next(self._addresses))

    def create(self) -> HostNetwork:
        bridge = f"vdbr{self.tag}"[:15]
        _ip("link", "add", bridge, "type", "bridge")
        self._bridge = bridge
        _ip("addr", "add", f"{self.gateway}/{self._network.prefixlen}", "dev", bridge)
        _ip("link", "set", bridge, "up")
        return self

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        namespace = f"vd{self.tag}h{index}"
        outside, inside = f"vd{self.tag}o{index}"[:15], f"vd{self.tag}i{index}"[:15]
        address = str(next(self._addresses))
        _ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", namespace)
        _ip("link", "set", outside, "master", str(self._bridge), "up")
        _ip("link", "set", "lo", "up", namespace=namespace)
        _ip("addr", "add", f"{address}/{self._network.prefixlen}", "dev", inside, namespace=namespace)
        _ip("link", "set", inside, "up", namespace=namespace)
        host = self.hosts[name] = Host(name, namespace, address)
        return host

    def remove(self) -> None:
        """Delete the namespaces (their veth ends go with them) and the bridge. The processes started
        in the hosts must have been stopped, by their pids, before."""
        for namespace in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)
        self._namespaces.clear()
        if self._bridge is not None:
            subprocess.run(["ip", "link", "delete", self._bridge], capture_output=True, check=False)
            self._bridge = None


@contextlib.contextmanager
def routed_hosts(*names: str, subnet: str = "10.231.0.0/24") -> Iterator[HostNetwork]:
    """A test network with one host per name, removed afterwards."""
    network = HostNetwork(tag=f"{os.getpid() % 100000}", subnet=subnet)
    try:
        network.create()
        for name in names:
            network.add_host(name)
        yield network
    finally:
        network.remove()


@dataclass
class LoopbackNetwork:
    """The fallback when namespaces cannot be made: every host is this machine's 127.0.0.1 (so the
    services need ports of their own). Weaker, and said so: a process *can* reach the others
    through its own loopback here."""

    subnet: str = "127.0.0.1/32"
    hosts: dict[str, Host] = field(default_factory=dict)

    def add_host(self, name: str) -> Host:
        host = self.hosts[name] = Host(name, "", "127.0.0.1")
        return host


@contextlib.contextmanager
def test_hosts(*names: str) -> Iterator[HostNetwork | LoopbackNetwork]:
    """Hosts in network namespaces; without them (not root) the loopback fallback, said in a
    warning, except with ``CI=true``, where namespaces are required. ``VIBEDREAM_E2E_LOOPBACK=1``
    forces the fallback (to try it as root)."""
    possible, why = can_make_namespaces()
    if os.environ.get("VIBEDREAM_E2E_LOOPBACK") == "1":
        possible, why = False, "VIBEDREAM_E2E_LOOPBACK=1"
    if possible:
        with routed_hosts(*names) as network:
            yield network
        return
    if os.environ.get("CI") == "true" and os.environ.get("VIBEDREAM_E2E_LOOPBACK") != "1":
        raise RuntimeError(f"CI must run the multi-host tests in network namespaces: {why}")
    warnings.warn(
        f"no network namespaces ({why}): the multi-host tests fall back to loopback, where nothing "
        "stops a component from reaching another through 127.0.0.1",
        UserWarning,
        stacklevel=3,
    )
    loopback = LoopbackNetwork()
    for name in names:
        loopback.add_host(name)
    yield loopback
