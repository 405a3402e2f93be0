"""Secrets, as a test:/// connection through libvirtd sees them.

libvirt's test driver has no secret driver of its own: run in-process
(``virsh -c test:///default``) every secret call is VIR_ERR_NO_SUPPORT.
Through libvirtd, though, a test:/// connection is served by the daemon's
secret driver (src/secret/secret_driver.c), and that is what clients such as
nova rely on (SECRET_LOOKUP_BY_USAGE answering VIR_ERR_NO_SECRET).  pyvirtd
serves them with the host secret driver's own procedures
(pyvirtd/secrets/objects.py), kept in the test state's memory only.
"""

from __future__ import annotations

from pyvirtd.secrets.objects import SecretList, SecretProcedures

from .state import TestState


class SecretMixin(SecretProcedures):
    state: TestState

    @property
    def secrets(self) -> SecretList:
        return self.state.secrets
