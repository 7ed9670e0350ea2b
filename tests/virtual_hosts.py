"""Hosts with addresses of their own on one machine, for tests and the fault matrix: each host
is a Linux network namespace joined by a veth pair to a bridge that this module creates in the
root namespace (whose own address on the bridge is the gateway, where a driver in the root
namespace listens). Everything is created under names of this process and removed on exit;
the subnet is chosen among 10.213.0.0/16's /24s that no interface of this machine uses, and
nothing is routed beyond it.

Faults are real: ``iptables`` rules in a host's namespace (a random share of packets dropped,
the host cut off), its link set down and up, a ``tbf`` bandwidth cap on both directions of its
link. Needs root, ``ip`` (iproute2), ``tc`` and ``iptables``."""

import contextlib
import dataclasses
import ipaddress
import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time

COMMAND_TIMEOUT = 20
_networks = itertools.count()  # this process's networks, for unique interface names


class VirtualHostsUnavailable(RuntimeError):
    """This machine cannot make network namespaces (not root, or ``ip`` is missing)."""


def _run(*command, namespace=None, check=True):
    if namespace is not None:
        command = ("ip", "netns", "exec", namespace, *command)
    return subprocess.run(command, capture_output=True, text=True, check=check,
                          timeout=COMMAND_TIMEOUT)


@dataclasses.dataclass
class VirtualHost:
    """One host: a network namespace ``namespace`` with ``address`` on its interface
    ``inside``, whose peer ``outside`` is on the bridge in the root namespace."""

    namespace: str
    address: str
    inside: str
    outside: str

    def command(self, command):
        """``command`` (a list) as run inside this host."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def drop_share(self, probability):
        """Drop a random ``probability`` of the packets this host receives and sends on its
        link (loopback inside the host is untouched)."""
        for chain, side in (("INPUT", "-i"), ("OUTPUT", "-o")):
            _run("iptables", "-A", chain, side, self.inside, "-m", "statistic", "--mode",
                 "random", "--probability", str(probability), "-j", "DROP",
                 namespace=self.namespace)

    def cut(self):
        """Drop every packet on this host's link: cut off from the others, link still up."""
        for chain, side in (("INPUT", "-i"), ("OUTPUT", "-o")):
            _run("iptables", "-A", chain, side, self.inside, "-j", "DROP",
                 namespace=self.namespace)

    def clear_rules(self):
        """Remove every ``iptables`` rule of this host."""
        for chain in ("INPUT", "OUTPUT"):
            _run("iptables", "-F", chain, namespace=self.namespace)

    def link(self, up):
        """Set this host's link down (``up=False``) or up again, from the bridge's side."""
        _run("ip", "link", "set", self.outside, "up" if up else "down")

    def link_down_for(self, seconds):
        """Set this host's link down, and up again ``seconds`` later (whatever happens)."""
        self.link(up=False)
        try:
            time.sleep(seconds)
        finally:
            self.link(up=True)

    def cap_bandwidth(self, rate):
        """Cap both directions of this host's link at ``rate`` (a ``tc`` rate, e.g.
        ``"4mbit"``) with a token bucket (``tbf``), whose queue adds delay when full."""
        shape = ["tbf", "rate", rate, "burst", "32kbit", "latency", "200ms"]
        _run("tc", "qdisc", "replace", "dev", self.inside, "root", *shape,
             namespace=self.namespace)
        _run("tc", "qdisc", "replace", "dev", self.outside, "root", *shape)

    def uncap_bandwidth(self):
        """Remove the bandwidth cap."""
        _run("tc", "qdisc", "del", "dev", self.inside, "root", namespace=self.namespace,
             check=False)
        _run("tc", "qdisc", "del", "dev", self.outside, "root", check=False)

    def listening_addresses(self):
        """The local addresses of this host's listening TCP sockets (``ss``)."""
        return set(_listeners(self.namespace))


_OWNER = re.compile(r"pid=(\d+)")


def _listeners(namespace=None):
    """``{address: set of owning pids}`` of the listening TCP sockets of ``namespace``
    (None: the root namespace); an IPv4-mapped IPv6 address is given as IPv4."""
    found = {}
    for line in _run("ss", "-ltnpH", namespace=namespace).stdout.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        address = fields[3].rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
        owners = {int(pid) for pid in _OWNER.findall(line)}
        found.setdefault(address, set()).update(owners)
    return found


def _descendants(root_pid):
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/stat") as handle:
                parents[int(name)] = int(handle.read().rsplit(")", 1)[1].split()[1])
    tree, grew = {root_pid}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


class ListenerWatch:
    """Every ``interval`` seconds, from a thread, the addresses TCP listeners are bound to:
    in each host's namespace (``by_host``, by namespace), and in the root namespace those of
    the process ``root_pid`` and its descendants (``of_root``, e.g. a driver and its JVM)."""

    def __init__(self, network, root_pid, interval=0.3):
        self.by_host = {host.namespace: set() for host in network.hosts}
        self.of_root = set()
        self.error = None  # what stopped the watch early, if anything did
        self._network, self._root_pid, self._interval = network, root_pid, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(COMMAND_TIMEOUT * 2)

    def _watch(self):
        try:
            while not self._stop.is_set():
                for host in self._network.hosts:
                    self.by_host[host.namespace].update(_listeners(host.namespace))
                tree = _descendants(self._root_pid)
                self.of_root.update(address for address, owners in _listeners().items()
                                    if owners & tree)
                self._stop.wait(self._interval)
        except (OSError, subprocess.SubprocessError) as error:  # seen by the test
            self.error = error


@dataclasses.dataclass
class VirtualNetwork:
    """The bridge ``bridge`` with the root namespace's ``gateway`` address, and ``hosts``."""

    bridge: str
    gateway: str
    hosts: list


def _used_networks():
    links = json.loads(_run("ip", "-j", "-4", "addr").stdout)
    return [ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
            for link in links for a in link.get("addr_info", [])]


def _free_subnet():
    used = _used_networks()
    start = os.getpid() % 250
    for offset in range(250):
        subnet = ipaddress.ip_network(f"10.213.{(start + offset) % 250}.0/24")
        if not any(subnet.overlaps(network) for network in used):
            return subnet
    raise VirtualHostsUnavailable("no free /24 in 10.213.0.0/16")


def check_available():
    """Raise ``VirtualHostsUnavailable`` saying why, if this machine cannot make hosts."""
    if os.geteuid() != 0:
        raise VirtualHostsUnavailable("network namespaces need root")
    missing = [tool for tool in ("ip", "tc", "iptables", "ss") if shutil.which(tool) is None]
    if missing:
        raise VirtualHostsUnavailable(f"missing {', '.join(missing)} (iproute2, iptables)")
    # Root without the capabilities (a default container) cannot make namespaces: try one.
    probe = f"sk{os.getpid() % 10000}probe"
    made = _run("ip", "netns", "add", probe, check=False)
    _run("ip", "netns", "del", probe, check=False)
    if made.returncode != 0:
        raise VirtualHostsUnavailable(f"'ip netns add' failed: {made.stderr.strip()}")


@contextlib.contextmanager
def virtual_hosts(n_hosts):
    """Make ``n_hosts`` hosts on a new bridge; yield the ``VirtualNetwork``; remove it all."""
    check_available()
    tag = f"sk{os.getpid() % 10000}n{next(_networks)}"
    subnet = _free_subnet()
    addresses = [str(a) for a in subnet.hosts()]
    bridge = f"{tag}br"
    network = VirtualNetwork(bridge, addresses[0], [])
    try:
        _run("ip", "link", "add", bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{addresses[0]}/{subnet.prefixlen}", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        for i in range(n_hosts):
            host = VirtualHost(f"{tag}h{i}", addresses[i + 1], f"{tag}i{i}", f"{tag}o{i}")
            network.hosts.append(host)
            _run("ip", "netns", "add", host.namespace)
            _run("ip", "link", "add", host.outside, "type", "veth", "peer", "name",
                 host.inside)
            _run("ip", "link", "set", host.inside, "netns", host.namespace)
            _run("ip", "link", "set", host.outside, "master", bridge)
            _run("ip", "link", "set", host.outside, "up")
            _run("ip", "addr", "add", f"{host.address}/{subnet.prefixlen}", "dev", host.inside,
                 namespace=host.namespace)
            _run("ip", "link", "set", host.inside, "up", namespace=host.namespace)
            _run("ip", "link", "set", "lo", "up", namespace=host.namespace)
        yield network
    finally:
        for host in network.hosts:
            _run("ip", "link", "del", host.outside, check=False)
            _run("ip", "netns", "del", host.namespace, check=False)
        _run("ip", "link", "del", bridge, check=False)
