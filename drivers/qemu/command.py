"""Building QEMU's command line from a domain definition (modern syntax).

Contract:

    argv = build_command(defn, binary=..., machine_defaults=..., monitor_path=...,
                         pid_path=..., name_marker=...)

-S (start paused; the driver sends `cont`), the QMP monitor on a unix socket,
-blockdev/-device for disks, -netdev/-device for NICs, -chardev pty for serial
consoles, -display none / -vnc, and every device the domain XML model knows.
"""
