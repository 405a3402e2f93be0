"""Hypervisor drivers, installed as the ``pyvirtd.drivers`` package; one subpackage each."""
