"""The pod network manager the pod lifecycle calls (hostNetwork pods never do).

It keeps the default CNI network current (config directory watched), attaches
a pod with ADD (undone with DEL if anything fails), detaches it with DEL using
the cached config and ``prevResult`` (also after a daemon restart, and when
the netns is already gone), and switches localhost routing on the pod bridge
for host ports reached through 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Collection, Mapping, Sequence

from pycrio.errors import AlreadyExists, Internal, InvalidArgument, PycrioError
from pycrio.network.cache import CacheEntry, ResultCache
from pycrio.network.cni import CNI, DEFAULT_TIME_LIMIT, RuntimeConf, supports_gc, supports_status
from pycrio.network.config import NetworkConfigList, discover, parse_conflist
from pycrio.network.errors import CNIPluginError, NetworkNotReady
from pycrio.network.invoke import DEFAULT_PLUGIN_DIRS, format_cni_args
from pycrio.network.localnet import Localnet
from pycrio.network.masq import remove_ipmasq_chain, uses_ipmasq
from pycrio.network.result import JSONDict, ResultError, parse_result
from pycrio.network.types import (
    Bandwidth,
    DNSSettings,
    NetworkStatus,
    PodNetworkResult,
    PortMapping,
    bandwidth_from_annotations,
)
from pycrio.network.watcher import DirWatcher
from pycrio.sandbox.namespaces import is_namespace_file

log = logging.getLogger(__name__)

NOT_READY = "NetworkPluginNotReady"
_DEBOUNCE = 0.05
# CNI error codes no retry can fix: incompatible version, unsupported field,
# bad environment, undecodable or invalid config
_PERMANENT_CODES = frozenset({1, 2, 4, 6, 7})
_POD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


def _bridge_of(net: NetworkConfigList) -> str:
    plugin = net.plugin_of_type("bridge")
    if plugin is None:
        return ""
    name = plugin.raw.get("bridge")
    return name if isinstance(name, str) and name else "cni0"


def _has_portmap(net: NetworkConfigList) -> bool:
    return any("portMappings" in p.capabilities for p in net.plugins)


def _is_permanent(exc: BaseException) -> bool:
    return isinstance(exc, CNIPluginError) and exc.cni_code in _PERMANENT_CODES


class NetworkManager:
    def __init__(
        self,
        conf_dir: str,
        cache_dir: str,
        plugin_dirs: Sequence[str] = DEFAULT_PLUGIN_DIRS,
        *,
        default_network: str | None = None,
        ifname: str = "eth0",
        time_limit: float = DEFAULT_TIME_LIMIT,
        poll_interval: float = 2.0,
        proc_sys: str = "/proc/sys",
    ) -> None:
        self.conf_dir = conf_dir
        self.cni = CNI(plugin_dirs, time_limit=time_limit)
        self.cache = ResultCache(cache_dir)
        self.ifname = ifname
        self.poll_interval = poll_interval
        self._wanted_default = default_network
        self._networks: dict[str, NetworkConfigList] = {}
        self._default: NetworkConfigList | None = None
        self._status = NetworkStatus(False, NOT_READY, "CNI configuration not loaded yet")
        self._ready = asyncio.Event()
        self._changed = asyncio.Condition()
        self._generation = 0
        self._reload_lock = asyncio.Lock()
        self._pod_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._localnet = Localnet(proc_sys)
        self._localnet_lock = asyncio.Lock()
        self._localnet_users: dict[str, set[str]] = {}
        self._watcher: DirWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the configs and start watching the config directory."""
        await asyncio.to_thread(os.makedirs, self.conf_dir, 0o755, True)
        for entry in await asyncio.to_thread(self.cache.entries):
            if entry.localnet_bridge:
                self._localnet_users.setdefault(entry.localnet_bridge, set()).add(entry.container_id)
        await self.reload()
        self._watcher = DirWatcher(self.conf_dir, self.poll_interval)
        self._watcher.start()
        self._task = asyncio.create_task(self._watch(), name="cni-config-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None

    async def _watch(self) -> None:
        assert self._watcher is not None
        while True:
            ready = self._status.ready
            changed = await self._watcher.wait(None if ready else self.poll_interval)
            if changed:
                await asyncio.sleep(_DEBOUNCE)  # let a burst of writes settle
                await self._watcher.wait(0)
            if changed or not ready:
                try:
                    await self.reload()
                except Exception:
                    log.exception("reloading CNI configuration failed")

    async def reload(self) -> None:
        """Read the config directory again and pick the default network."""
        async with self._reload_lock:
            nets, errors = await asyncio.to_thread(discover, self.conf_dir)
            usable: list[NetworkConfigList] = []
            problems = [f"{os.path.basename(p)}: {e}" for p, e in errors]
            for net in nets:
                try:
                    await self.cni.validate(net)
                except PycrioError as exc:
                    log.warning("CNI network %s (%s) unusable: %s", net.name, net.source, exc)
                    problems.append(f"{os.path.basename(net.source)}: {exc}")
                    continue
                usable.append(net)
            chosen = self._pick_default(usable)
            status = await self._status_for(chosen, problems)
            old = self._default
            self._networks = {n.name: n for n in usable}
            self._default = chosen
            self._status = status
            if chosen is not None and (old is None or old.raw != chosen.raw):
                log.info("CNI default network is now %s (%s)", chosen.name, chosen.source)
            if status.ready:
                self._ready.set()
            else:
                self._ready.clear()
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def _pick_default(self, usable: list[NetworkConfigList]) -> NetworkConfigList | None:
        if self._wanted_default:
            return next((n for n in usable if n.name == self._wanted_default), None)
        return usable[0] if usable else None

    async def _status_for(self, net: NetworkConfigList | None, problems: list[str]) -> NetworkStatus:
        if net is None:
            what = f"network {self._wanted_default!r}" if self._wanted_default else "network"
            msg = f"no usable CNI {what} configuration in {self.conf_dir}"
            if problems:
                msg += ": " + "; ".join(problems)
            return NetworkStatus(False, NOT_READY, msg)
        if supports_status(net):
            try:
                await self.cni.status(net)
            except PycrioError as exc:
                return NetworkStatus(False, NOT_READY, f"CNI STATUS of network {net.name}: {exc}")
        return NetworkStatus(True, "", "")

    def status(self) -> NetworkStatus:
        """(ready, reason, message) for the CRI NetworkReady condition."""
        return self._status

    @property
    def default_network_name(self) -> str | None:
        return self._default.name if self._default is not None else None

    async def wait_ready(self, limit: float) -> bool:
        """Wait up to ``limit`` seconds for a usable default network."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await self._ready.wait()
        return self._ready.is_set()

    async def wait_reload(self, limit: float) -> bool:
        """Wait up to ``limit`` seconds for the next completed reload."""
        async with self._changed:
            start = self._generation
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit):
                    await self._changed.wait_for(lambda: self._generation != start)
            return self._generation != start

    # ------------------------------------------------------------------ pods

    @contextlib.asynccontextmanager
    async def _pod_lock(self, pod_id: str) -> AsyncIterator[None]:
        lock, users = self._pod_locks.get(pod_id, (asyncio.Lock(), 0))
        self._pod_locks[pod_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._pod_locks[pod_id]
            if users <= 1:
                del self._pod_locks[pod_id]
            else:
                self._pod_locks[pod_id] = (lock, users - 1)

    def _cni_args(
        self, pod_id: str, pod_name: str, pod_namespace: str, pod_uid: str
    ) -> list[tuple[str, str]]:
        pairs = [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", pod_namespace),
            ("K8S_POD_NAME", pod_name),
            ("K8S_POD_INFRA_CONTAINER_ID", pod_id),
            ("K8S_POD_UID", pod_uid),
        ]
        try:
            format_cni_args(pairs)
        except ValueError as exc:
            raise InvalidArgument(str(exc))
        return pairs

    def _require_default(self) -> NetworkConfigList:
        if self._default is None or not self._status.ready:
            raise NetworkNotReady(f"network not ready: {self._status.message}")
        return self._default

    async def setup_pod(
        self,
        pod_id: str,
        netns_path: str,
        *,
        pod_name: str,
        pod_namespace: str,
        pod_uid: str = "",
        port_mappings: Sequence[PortMapping] = (),
        bandwidth: Bandwidth | None = None,
        dns: DNSSettings | None = None,
        ips: Sequence[str] = (),
        mac: str = "",
        annotations: Mapping[str, str] | None = None,
    ) -> PodNetworkResult:
        """Attach the pod's netns to the default network (CNI ADD).

        ``port_mappings`` with host_port 0 are skipped; ``bandwidth`` defaults
        to the pod's ``kubernetes.io/{ingress,egress}-bandwidth`` annotations.
        If any step fails, what was done is undone (CNI DEL) before raising.
        Calling it again for a pod already attached with the same netns
        returns the cached result.
        """
        if not _POD_ID.match(pod_id):
            raise InvalidArgument(f"bad pod id {pod_id!r}")
        net = self._require_default()
        if not is_namespace_file(netns_path, "net"):
            raise InvalidArgument(f"{netns_path!r} is not a network namespace")
        mappings = [pm.validated() for pm in port_mappings if pm.host_port > 0]
        if bandwidth is None and annotations:
            bandwidth = bandwidth_from_annotations(annotations)
        caps: JSONDict = {}
        if mappings:
            caps["portMappings"] = [pm.to_cni() for pm in mappings]
        if bandwidth is not None and bandwidth.to_cni():
            caps["bandwidth"] = bandwidth.to_cni()
        if dns is not None:
            caps["dns"] = dns.to_cni()
        if ips:
            caps["ips"] = list(ips)
        if mac:
            caps["mac"] = mac
        bridge = _bridge_of(net)
        via_localhost = any(pm.reachable_via_localhost for pm in mappings)
        wants_localnet = bool(bridge) and _has_portmap(net) and via_localhost
        entry = CacheEntry(
            network_name=net.name,
            container_id=pod_id,
            ifname=self.ifname,
            config=net.raw,
            netns=netns_path,
            cni_args=self._cni_args(pod_id, pod_name, pod_namespace, pod_uid),
            capability_args=caps,
            localnet_bridge=bridge if wants_localnet else "",
        )
        rt = RuntimeConf(pod_id, netns_path, self.ifname, tuple(entry.cni_args), caps)
        async with self._pod_lock(pod_id):
            old = await asyncio.to_thread(self.cache.read, net.name, pod_id, self.ifname)
            if old is not None and old.result is not None:
                if old.netns != netns_path:
                    raise AlreadyExists(f"pod {pod_id} is already attached to network {net.name}")
                return self._to_pod_result(old.network_name, old.result)
            if old is not None:
                # an ADD that never finished (daemon died mid-way): clear it out first
                with contextlib.suppress(PycrioError):
                    await self.cni.delete(parse_conflist(old.config, "cache"), rt, None)
            await asyncio.to_thread(self.cache.write, entry)
            try:
                raw = await self.cni.add(net, rt)
                pod_result = self._to_pod_result(net.name, raw)
                entry.result = raw
                await asyncio.to_thread(self.cache.write, entry)
                if entry.localnet_bridge:
                    await self._localnet_acquire(entry.localnet_bridge, pod_id)
            except BaseException as exc:
                partial = getattr(exc, "partial_result", None) or entry.result
                # the undo survives a cancelled caller (a kubelet timeout)
                undo = asyncio.create_task(self._undo_add(net, rt, entry, partial))
                self._background.add(undo)
                undo.add_done_callback(self._background.discard)
                await asyncio.shield(undo)
                raise
        log.info("pod %s attached to %s: %s", pod_id, net.name, ", ".join(pod_result.ips))
        return pod_result

    def _to_pod_result(self, network: str, raw: JSONDict) -> PodNetworkResult:
        try:
            parsed = parse_result(raw)
        except ResultError as exc:
            raise Internal(f"network {network}: bad CNI result: {exc}")
        return PodNetworkResult(
            network=network,
            ips=parsed.sandbox_ips(self.ifname),
            interfaces=list(parsed.interfaces),
            result=parsed,
            raw=raw,
        )

    async def _undo_add(
        self, net: NetworkConfigList, rt: RuntimeConf, entry: CacheEntry, partial: JSONDict | None
    ) -> None:
        try:
            await self.cni.delete(net, rt, partial)
        except Exception as exc:
            log.error("undoing the failed CNI ADD of pod %s failed too: %s", rt.container_id, exc)
            # When some plugin's ADD went through, keep the cache entry so a later
            # teardown_pod or gc retries. When the first plugin already failed, it
            # cleaned up after itself (as the reference plugins do) and a DEL that
            # fails too would only fail forever: forget the attempt.
            if partial is not None and not _is_permanent(exc):
                return
        await asyncio.to_thread(self.cache.remove, net.name, rt.container_id, rt.ifname)
        if entry.localnet_bridge:
            await self._localnet_release(entry.localnet_bridge, rt.container_id)

    async def teardown_pod(self, pod_id: str, netns_path: str | None = None) -> None:
        """Detach the pod (CNI DEL); idempotent; works when the netns is gone.

        With a cache entry, DEL uses the config and result the pod was added
        with; without one it still runs DEL with the default network so IPAM
        can release whatever it holds for this pod.
        """
        netns = netns_path if netns_path and is_namespace_file(netns_path, "net") else ""
        async with self._pod_lock(pod_id):
            entries = await asyncio.to_thread(self.cache.entries, pod_id)
            if not entries:
                if self._default is not None:
                    args = (("IgnoreUnknown", "1"), ("K8S_POD_INFRA_CONTAINER_ID", pod_id))
                    await self.cni.delete(self._default, RuntimeConf(pod_id, netns, self.ifname, args), None)
                return
            for entry in entries:
                net = parse_conflist(entry.config, f"cache of {pod_id}")
                rt = RuntimeConf(pod_id, netns, entry.ifname, tuple(entry.cni_args), entry.capability_args)
                try:
                    await self.cni.delete(net, rt, entry.result)
                except CNIPluginError as exc:
                    if not _is_permanent(exc):
                        raise  # the cache entry stays for the next attempt
                    # retrying cannot help: forget the attachment instead of failing forever
                    log.warning("CNI DEL of pod %s will never succeed (%s); dropping it", pod_id, exc)
                if not netns and uses_ipmasq(net):
                    await remove_ipmasq_chain(net.name, pod_id, self._families(entry.result))
                await asyncio.to_thread(self.cache.remove, entry.network_name, pod_id, entry.ifname)
                if entry.localnet_bridge:
                    await self._localnet_release(entry.localnet_bridge, pod_id)
        log.info("pod %s detached from its network", pod_id)

    @staticmethod
    def _families(raw: JSONDict | None) -> set[int]:
        if raw is None:
            return {4, 6}
        try:
            return {ip.family for ip in parse_result(raw).ips} or {4}
        except ResultError:
            return {4, 6}

    async def check_pod(self, pod_id: str, netns_path: str) -> None:
        """CNI CHECK of an attached pod (0.4.0+ networks); raises what a plugin reports."""
        for entry in await asyncio.to_thread(self.cache.entries, pod_id):
            if entry.result is None:
                continue
            net = parse_conflist(entry.config, f"cache of {pod_id}")
            rt = RuntimeConf(pod_id, netns_path, entry.ifname, tuple(entry.cni_args), entry.capability_args)
            await self.cni.check(net, rt, entry.result)

    async def pod_result(self, pod_id: str) -> PodNetworkResult | None:
        """The cached attachment of a pod (e.g. for status after a restart)."""
        for entry in await asyncio.to_thread(self.cache.entries, pod_id):
            if entry.result is not None:
                return self._to_pod_result(entry.network_name, entry.result)
        return None

    async def gc(self, valid_pod_ids: Collection[str]) -> list[str]:
        """Tear down cached attachments of pods not in ``valid_pod_ids`` and run CNI GC.

        Returns the pod ids torn down. GC reaches networks of spec 1.1.0+.
        """
        valid = set(valid_pod_ids)
        entries = await asyncio.to_thread(self.cache.entries)
        stale = sorted({e.container_id for e in entries if e.container_id not in valid})
        for pod_id in stale:
            try:
                await self.teardown_pod(pod_id, None)
            except PycrioError as exc:
                log.warning("GC teardown of pod %s failed: %s", pod_id, exc)
        for net in list(self._networks.values()):
            if supports_gc(net):
                mine = [
                    (e.container_id, e.ifname)
                    for e in entries
                    if e.container_id in valid and e.network_name == net.name
                ]
                try:
                    await self.cni.gc(net, mine)
                except PycrioError as exc:
                    log.warning("CNI GC of network %s failed: %s", net.name, exc)
        return stale

    # ------------------------------------------------------------------ localnet

    async def _localnet_acquire(self, bridge: str, pod_id: str) -> None:
        async with self._localnet_lock:
            users = self._localnet_users.setdefault(bridge, set())
            await self._localnet.enable(bridge)
            users.add(pod_id)

    async def _localnet_release(self, bridge: str, pod_id: str) -> None:
        async with self._localnet_lock:
            users = self._localnet_users.get(bridge, set())
            users.discard(pod_id)
            if not users:
                self._localnet_users.pop(bridge, None)
                await self._localnet.disable(bridge)

    def localnet_users(self) -> Mapping[str, frozenset[str]]:
        return {b: frozenset(u) for b, u in self._localnet_users.items()}


__all__ = ["NOT_READY", "NetworkManager"]
