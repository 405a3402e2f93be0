"""Firmware autoselection: `<os firmware='efi'>` from QEMU's firmware descriptors.

QEMU's firmware packages describe their images in JSON files
(/usr/share/qemu/firmware, overridden by the same file name in
/etc/qemu/firmware): the interface (uefi, bios), the machines they boot, the
flash images (code and the NVRAM template) and features such as secure-boot,
enrolled-keys and requires-smm.  As libvirt 9.0 does, the guest's definition
keeps only `firmware='efi'` (plus wanted/unwanted features); at each start the
first descriptor in file-name order that fits is written into the live
definition (loader, NVRAM from its template, SMM when required), and the
guest's NVRAM file is made from the template the first time.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.names import name_path
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

log = logging.getLogger(__name__)

DESCRIPTOR_DIRS = (Path("/etc/qemu/firmware"), Path("/usr/share/qemu/firmware"))
FIRMWARE_FEATURES = ("enrolled-keys", "secure-boot")
_INTERFACE = {"efi": "uefi", "bios": "bios"}


@dataclass
class Descriptor:
    path: Path
    interfaces: list[str]
    device: str                                  # flash / memory / kernel
    executable: str | None
    nvram_template: str | None
    targets: list[tuple[str, list[str]]]         # (architecture, machine globs)
    features: set[str] = field(default_factory=set)
    mode: str = "split"                          # flash mode (split / combined / stateless)
    raw: bool = True                             # every image in raw format


def _parse(path: Path) -> Descriptor | None:
    try:
        data = json.loads(path.read_text())
        mapping = data["mapping"]
        device = mapping["device"]
        exe = mapping.get("executable") or {}
        tmpl = mapping.get("nvram-template") or {}
        if device == "memory":
            exe = {"filename": mapping.get("filename"), "format": "raw"}
        return Descriptor(
            path=path, interfaces=list(data.get("interface-types", [])), device=device,
            executable=exe.get("filename"), nvram_template=tmpl.get("filename"),
            targets=[(t["architecture"], list(t.get("machines", [])))
                     for t in data.get("targets", [])],
            features=set(data.get("features", [])), mode=mapping.get("mode", "split"),
            raw=all(part.get("format", "raw") == "raw" for part in (exe, tmpl) if part))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("firmware descriptor %s: %s", path, exc)
        return None


def descriptors(dirs: tuple[Path, ...] = DESCRIPTOR_DIRS) -> list[Descriptor]:
    """Every descriptor, in file-name order; a name in an earlier directory hides
    the same name in a later one (an empty file hides without replacing)."""
    chosen: dict[str, Path] = {}
    for d in dirs:
        try:
            names = sorted(p for p in os.listdir(d) if p.endswith(".json"))
        except OSError:
            continue
        for n in names:
            chosen.setdefault(n, d / n)
    out = []
    for n in sorted(chosen):
        path = chosen[n]
        try:
            if path.stat().st_size == 0:
                continue
        except OSError:
            continue
        desc = _parse(path)
        if desc is not None:
            out.append(desc)
    return out


def wanted_features(d: domxml.DomainDef) -> dict[str, bool]:
    """<os><firmware><feature enabled='yes|no' name=.../>: what the user asks for."""
    out: dict[str, bool] = {}
    for elem in d.os_extra:
        if elem.tag == "firmware":
            for f in elem.findall("feature"):
                out[f.get("name")] = f.get("enabled") == "yes"
    return out


def check_definition(d: domxml.DomainDef) -> None:
    """libvirt's checks at define time for a definition with `firmware=`, and
    its order of the wanted firmware features."""
    firmware = d.os_attrs.get("firmware")
    for elem in d.os_extra:
        if elem.tag != "firmware":
            continue
        if firmware != "efi":
            raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                           "firmware feature is only supported for 'efi' firmware",
                           domain=P.VIR_FROM_DOMAIN)
        feats = elem.findall("feature")
        for f in feats:
            if f.get("name") not in FIRMWARE_FEATURES:
                raise VirError(P.VIR_ERR_XML_ERROR,
                               f"Invalid value for attribute 'name' in element 'feature': "
                               f"'{f.get('name')}'.", domain=P.VIR_FROM_XML)
            if f.get("enabled") not in ("yes", "no"):
                raise VirError(P.VIR_ERR_XML_ERROR,
                               f"Invalid value for attribute 'enabled' in element 'feature': "
                               f"'{f.get('enabled')}'.", domain=P.VIR_FROM_XML)
        # libvirt keeps one entry per feature and writes them in its own order
        latest = {f.get("name"): f for f in feats}
        for f in feats:
            elem.remove(f)
        for name in FIRMWARE_FEATURES:
            if name in latest:
                elem.append(latest[name])
    if firmware is None:
        return
    if firmware not in _INTERFACE:
        raise VirError(P.VIR_ERR_XML_ERROR, f"unknown firmware value {firmware}",
                       domain=P.VIR_FROM_DOMAIN)
    for elem in d.os_extra:
        if elem.tag == "loader":
            for attr in ("type", "readonly", "secure"):
                if elem.get(attr) is not None or (attr == "type" and (elem.text or "").strip()):
                    raise _detail(f"loader attribute '{attr}' cannot be specified when "
                                  "firmware autoselection is enabled")
        if elem.tag == "nvram" and elem.get("template") is not None:
            raise _detail("nvram attribute 'template' cannot be specified when "
                          "firmware autoselection is enabled")


def _detail(text: str) -> VirError:
    return VirError(P.VIR_ERR_XML_DETAIL, domain=P.VIR_FROM_DOMAIN, message=text)


def _fits(desc: Descriptor, want: str, arch: str, machine: str,
          features: dict[str, bool]) -> bool:
    if want not in desc.interfaces or not desc.raw or desc.mode != "split":
        return False
    if desc.device not in ("flash", "memory") or not desc.executable:
        return False
    if not any(a == arch and any(fnmatch.fnmatchcase(machine, g) for g in globs)
               for a, globs in desc.targets):
        return False
    return all((name in desc.features) == on for name, on in features.items())


def select(d: domxml.DomainDef, dirs: tuple[Path, ...] = DESCRIPTOR_DIRS) -> Descriptor | None:
    """The descriptor a start of ``d`` uses, or None when ``d`` names no firmware."""
    firmware = d.os_attrs.get("firmware")
    if firmware is None:
        return None
    want = _INTERFACE[firmware]
    features = wanted_features(d)
    for desc in descriptors(dirs):
        if _fits(desc, want, d.arch or "x86_64", d.machine or "", features):
            return desc
    raise VirError(P.VIR_ERR_OPERATION_FAILED,
                   f"Unable to find any firmware to satisfy '{firmware}'", domain=P.VIR_FROM_QEMU)


def _smm_off(d: domxml.DomainDef) -> bool:
    feats = d.raw.get("features")
    smm = feats.find("smm") if feats is not None else None
    return smm is not None and smm.get("state", "on") == "off"


def apply(live: domxml.DomainDef, nvram_dir: Path) -> Path | None:
    """Write the selected firmware into ``live`` (as libvirt's live XML shows it:
    no `firmware=` left, a read-only pflash loader, the NVRAM with its template,
    SMM on where the firmware needs it).  Returns the NVRAM path to create from
    its template, or None."""
    desc = select(live)
    if desc is None:
        return None
    if "requires-smm" in desc.features and _smm_off(live):
        raise VirError(P.VIR_ERR_OPERATION_INVALID,
                       "domain has SMM turned off but chosen firmware requires it",
                       domain=P.VIR_FROM_QEMU)
    del live.os_attrs["firmware"]
    given_nvram = next((e for e in live.os_extra if e.tag == "nvram"), None)
    live.os_extra = [e for e in live.os_extra if e.tag not in ("loader", "nvram")]
    loader = etree.Element("loader")
    nvram_path: Path | None = None
    if desc.device == "flash":
        loader.set("readonly", "yes")
        if "secure-boot" in desc.features:
            loader.set("secure", "yes")
        loader.set("type", "pflash")
    else:
        loader.set("type", "rom")
    loader.text = desc.executable
    extra = [loader]
    if desc.device == "flash" and desc.nvram_template:
        text = (given_nvram.text or "").strip() if given_nvram is not None else ""
        nvram_path = Path(text) if text else name_path(nvram_dir, f"{live.name}_VARS", ".fd")
        nvram = etree.Element("nvram", template=desc.nvram_template)
        nvram.text = str(nvram_path)
        extra.append(nvram)
    firmware_elems = [e for e in live.os_extra if e.tag == "firmware"]
    rest = [e for e in live.os_extra if e.tag != "firmware"]
    live.os_extra = firmware_elems + extra + rest
    if "requires-smm" in desc.features:
        feats = live.raw.get("features")
        if feats is None:
            feats = etree.Element("features")
            live.raw["features"] = feats
        if feats.find("smm") is None:
            etree.SubElement(feats, "smm", state="on")
    return nvram_path


def create_nvram(path: Path, template: str, uid: int | None = None, gid: int | None = None) -> None:
    """The guest's NVRAM from the firmware's template, the first time (blocking:
    call in a thread).  Written to a temporary name and renamed, so a crash
    never leaves half a file that a later start would take as the guest's."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        shutil.copyfile(template, tmp)
        os.chmod(tmp, 0o600)
        if uid is not None:
            os.chown(tmp, uid, gid if gid is not None else -1)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                       f"Failed to create NVRAM file {path} from template {template}: "
                       f"{exc.strerror}", domain=P.VIR_FROM_QEMU) from None


def prepare(live: domxml.DomainDef, nvram_dir: Path) -> None:
    """Before a start (blocking: call in a thread): the autoselected firmware
    written into ``live``, and the guest's NVRAM made from its template if it
    has none yet (for a named loader as much as for a selected one)."""
    apply(live, nvram_dir)
    for elem in live.os_extra:
        if elem.tag == "nvram" and elem.get("template") and (elem.text or "").strip():
            create_nvram(Path(elem.text.strip()), elem.get("template"))
