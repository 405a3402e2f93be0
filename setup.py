"""Package discovery for pyvirtd; all metadata lives in pyproject.toml.

The hypervisor drivers live in the top-level ``drivers/`` directory but are
imported as ``pyvirtd.drivers.*``. pyproject.toml maps that directory with
``package-dir``; this file lists the packages under both roots so a new
driver or subpackage needs no edit here.  schemas/ is mapped the same way.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["pyvirtd", "pyvirtd.*"])
packages += [
    "pyvirtd." + name
    for name in find_packages(include=["drivers", "drivers.*"])
]
# The RelaxNG schemas: a data-only directory, installed as pyvirtd/schemas
# (pyvirtd/xml/schema.py looks there, then at the checkout's schemas/).
packages.append("pyvirtd.schemas")

setup(packages=packages)
