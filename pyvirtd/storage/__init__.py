"""Storage: the daemon-wide subsystem that serves storage pools and volumes to
every hypervisor connection (qemu:///system, qemu:///session, ...).

    subsystem.py   pools: lifecycle, listing, lookup, persistence, events
    volumes.py     volume procedures
    transfer.py    vol-upload / vol-download streams (sparse)
    pool.py        one pool's state; its files under the state and run dirs
    tools.py       running qemu-img, mkfs, mount ... off the event loop
    backends/      what each pool type does with real storage (dir, fs)
"""

from pyvirtd.storage.subsystem import StorageSubsystem

__all__ = ["StorageSubsystem"]
