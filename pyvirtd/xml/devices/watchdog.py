"""<watchdog>: i6300esb, ib700, itco with an action (virDomainWatchdogDef)."""

from __future__ import annotations

from dataclasses import dataclass

from pyvirtd.xml.devices._base import AttributeDevice, unsupported

MODELS = ("i6300esb", "ib700", "diag288", "itco")
ACTIONS = ("reset", "shutdown", "poweroff", "pause", "dump", "none", "inject-nmi")
# libvirt's action -> QEMU's -watchdog-action (dump is done by libvirt after a pause).
QEMU_ACTIONS = {"reset": "reset", "shutdown": "shutdown", "poweroff": "poweroff",
                "pause": "pause", "dump": "pause", "none": "none", "inject-nmi": "inject-nmi"}


@dataclass
class Watchdog(AttributeDevice):
    model: str = "i6300esb"
    action: str | None = None

    TAG = "watchdog"
    ATTRS = (("model", MODELS, "watchdog model", "watchdog must contain model name"),
             ("action", ACTIONS, "watchdog action", None))

    def fill_defaults(self, ctx: dict | None = None) -> None:
        if self.action is None:
            self.action = "reset"

    def validate(self, ctx: dict | None = None) -> None:
        if self.model == "diag288":
            raise unsupported("watchdog model 'diag288' is not supported on this architecture")
        if self.model == "itco" and ctx is not None and not ctx.get("q35"):
            raise unsupported("the itco watchdog device needs a q35 machine")
