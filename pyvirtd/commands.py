"""Administration subcommands: ``pyvirtd cert``, ``sasl-user``, ``polkit-policy``, ``qemu-user``.

They run instead of the daemon when the first argument names one of them, so
``pyvirtd --root DIR`` and the other daemon options keep working unchanged.

    pyvirtd cert [--dir DIR] --hostname NAME [NAME...] [--client-cn CN] [--days N]
    pyvirtd sasl-user [--root DIR | --system | --session | --file FILE] add NAME
    pyvirtd sasl-user [...] remove NAME
    pyvirtd sasl-user [...] list
    pyvirtd polkit-policy > /usr/share/polkit-1/actions/org.pyvirtd.policy
    pyvirtd qemu-user [--user NAME] [--group NAME]

``sasl-user add`` reads the password from the terminal, or from the first
line of standard input when that is not a terminal.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

SUBCOMMANDS = ("cert", "sasl-user", "polkit-policy", "qemu-user")


def _cert(args: argparse.Namespace) -> int:
    from pyvirtd import certs
    layout = certs.Layout.in_dir(args.dir) if args.dir else certs.Layout.system()
    written = certs.generate(layout, args.hostname, client_cn=args.client_cn, days=args.days)
    for path in written:
        print(path)
    return 0


def _credential_file(args: argparse.Namespace) -> Path:
    from pyvirtd.auth.sasl import credential_file
    from pyvirtd.paths import Paths
    if args.file:
        return args.file
    if args.root:
        return credential_file(Paths.for_root(args.root.resolve()))
    if args.system or (not args.session and os.geteuid() == 0):
        return credential_file(Paths.system())
    return credential_file(Paths.session())


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise SystemExit("pyvirtd: passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def _sasl_user(args: argparse.Namespace) -> int:
    from pyvirtd.auth.sasl import ScramUsers
    users = ScramUsers(_credential_file(args))
    if args.action == "list":
        for name in users.names():
            print(name)
    elif args.action == "add":
        password = _read_password()
        if not password:
            print("pyvirtd: empty password", file=sys.stderr)
            return 2
        users.add(args.name, password)
    else:
        if not users.remove(args.name):
            print(f"pyvirtd: no SASL user {args.name!r}", file=sys.stderr)
            return 1
    return 0


def _qemu_user(args: argparse.Namespace) -> int:
    """Create the system user and group confined QEMUs run as, if missing (as a
    package's postinst would); a member of ``kvm`` where that group exists."""
    import grp
    import pwd
    import subprocess

    try:
        grp.getgrnam(args.group)
    except KeyError:
        subprocess.run(["groupadd", "--system", args.group], check=True)
    try:
        pwd.getpwnam(args.user)
        print(f"{args.user}: exists")
        return 0
    except KeyError:
        pass
    extra = []
    try:
        grp.getgrnam("kvm")
        extra = ["--groups", "kvm"]
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", "--gid", args.group, *extra,
                    "--comment", "pyvirtd QEMU guests", args.user], check=True)
    print(f"{args.user}: created")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pyvirtd")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("cert", help="make a CA, a server and a client certificate")
    c.add_argument("--dir", type=Path, help="write here instead of /etc/pki/{CA,libvirt}")
    c.add_argument("--hostname", nargs="+", required=True,
                   help="names (or IP addresses) clients use for this host")
    c.add_argument("--client-cn", default="pyvirtd-client",
                   help="common name of the client certificate")
    c.add_argument("--days", type=int, default=3650, help="validity in days")

    s = sub.add_parser("sasl-user", help="manage SCRAM-SHA-256 users")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--root", type=Path, metavar="DIR")
    where.add_argument("--system", action="store_true")
    where.add_argument("--session", action="store_true")
    where.add_argument("--file", type=Path, help="the credential file itself")
    act = s.add_subparsers(dest="action", required=True)
    act.add_parser("add").add_argument("name")
    act.add_parser("remove").add_argument("name")
    act.add_parser("list")

    sub.add_parser("polkit-policy",
                   help="print polkit action definitions for every permission checked")

    q = sub.add_parser("qemu-user", help="create the user confined QEMU guests run as")
    q.add_argument("--user", default="pyvirtd-qemu")
    q.add_argument("--group", default="pyvirtd-qemu")

    args = p.parse_args(argv)
    if args.command == "qemu-user":
        return _qemu_user(args)
    if args.command == "polkit-policy":
        from pyvirtd.auth.polkit import policy_xml
        sys.stdout.write(policy_xml())
        return 0
    return _cert(args) if args.command == "cert" else _sasl_user(args)
