"""Probing QEMU binaries (QMP) for capabilities, cached on disk.

Contract:

    caps = await probe_all(cache_dir)       # every qemu-system-* found; cached by
                                            # binary path+size+mtime and host kernel
    caps.capabilities_xml(host)             # virsh capabilities
    caps.domain_capabilities_xml(emulator, arch, machine, virttype)
"""
