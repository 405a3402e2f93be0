"""pyvirtd: a libvirt-compatible hypervisor management daemon."""

__version__ = "0.1.0"
