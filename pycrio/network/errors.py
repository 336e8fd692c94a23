"""Errors of pycrio's CNI layer, as subclasses of pycrio's error tree."""

from __future__ import annotations

from pycrio.errors import DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument


class CNIPluginError(Internal):
    """A plugin exited non-zero; carries the CNI ``code``, ``msg`` and ``details``."""

    def __init__(
        self,
        plugin: str,
        command: str,
        cni_code: int,
        msg: str,
        details: str = "",
        network: str = "",
    ) -> None:
        where = f"network {network!r}: " if network else ""
        text = f"{where}CNI plugin {plugin} {command} failed (code {cni_code}): {msg}"
        if details:
            text += f" ({details})"
        super().__init__(text)
        self.plugin = plugin
        self.command = command
        self.cni_code = cni_code
        self.msg = msg
        self.details = details
        self.network = network
        #: result collected from the plugins that succeeded before this one (ADD)
        self.partial_result: dict[str, object] | None = None


class CNITimeout(DeadlineExceeded):
    """A plugin ran past its time limit and was killed."""


class PluginNotFound(FailedPrecondition):
    """No executable for a plugin type in any plugin directory."""


class NetworkNotReady(FailedPrecondition):
    """No usable CNI network configuration yet."""


class ConfigError(InvalidArgument):
    """A network configuration file is broken."""
