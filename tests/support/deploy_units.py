"""The systemd units of deploy/systemd, read the way the tests need them: their settings, and
their ExecStart as a ztpki command line a test can run on loopback (the unit's paths mapped
to the test's, its ${VARIABLES} filled in, the credentials directory a test directory).

So the proxy end-to-end tests start the node with the very options ztpki-node.service gives
it, and test_deploy_files.py checks every option against `ztpki ... --help`."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tests.support.nginx import DEPLOY
from tests.support.services import run_ztpki

SYSTEMD = DEPLOY / "systemd"
NODE_UNIT = SYSTEMD / "ztpki-node.service"
CA_UNIT = SYSTEMD / "ztpki-ca@.service"
INSTALLED = "/opt/ztpki/bin/ztpki"  # where docs/deploy.md installs ztpki (a virtualenv)
CREDENTIALS = "${CREDENTIALS_DIRECTORY}"
# Options and commands of issue 16 that other branches add: excused while absent, checked
# like the rest as soon as they exist.
PENDING: dict[tuple[str, str], set[str]] = {}
PENDING_COMMANDS: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Unit:
    path: Path
    entries: tuple[tuple[str, str, str], ...]  # (section, key, value), in file order

    @classmethod
    def parse(cls, path: Path) -> Unit:
        """systemd's syntax as far as our units use it: sections, Key=Value, comments, and
        lines continued with a backslash."""
        text = re.sub(r"\\\n", " ", path.read_text())
        entries, section = [], ""
        for line in text.splitlines():
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not Key=Value: {line!r}"
            entries.append((section, key.strip(), value.strip()))
        return cls(path, tuple(entries))

    def values(self, key: str, section: str = "Service") -> list[str]:
        return [v for s, k, v in self.entries if s == section and k == key]

    def one(self, key: str, section: str = "Service") -> str:
        (value,) = self.values(key, section)
        return value

    @property
    def exec_start(self) -> list[str]:
        return shlex.split(self.one("ExecStart"))

    def write_credentials(self, directory: Path, secrets: Mapping[str, str]) -> Path:
        """A credentials directory as systemd makes it for the service: one 0400 file per
        LoadCredential= name; ``secrets`` must give exactly those."""
        loaded = {v.split(":", 1)[0] for v in self.values("LoadCredential")}
        assert set(secrets) == loaded, (self.path.name, sorted(loaded))
        directory.mkdir(mode=0o700)
        for name, secret in secrets.items():
            (directory / name).write_text(f"{secret}\n")
            (directory / name).chmod(0o400)
        return directory

    def command(
        self, paths: Mapping[str, str], variables: Mapping[str, str], credentials: Path
    ) -> list[str]:
        """ExecStart's ztpki arguments for a test: each unit path in ``paths`` replaced by the
        test's, ${VAR} by ``variables``, the credentials directory by ``credentials``; options
        still PENDING on this branch are left out, with their value."""
        argv = self.exec_start
        assert argv[0] == INSTALLED, self.path.name
        words, _ = ztpki_command(argv)
        known = ztpki_options(words) or frozenset()
        out: list[str] = []
        args = iter(argv[1:])
        for arg in args:
            if arg in PENDING.get(words, set()) and arg not in known:
                next(args)  # every PENDING option takes a value
                continue
            arg = arg.replace(CREDENTIALS, str(credentials))
            for unit_path, test_path in paths.items():
                arg = arg.replace(unit_path, test_path)
            out.append(re.sub(r"\$\{([A-Z_]+)\}", lambda m: variables[m.group(1)], arg))
        return out


def ztpki_command(argv: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """(subcommand path, option names) of a ztpki command line."""
    args = argv[1:]
    first_option = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
    return tuple(args[:first_option]), [a.split("=", 1)[0] for a in args if a.startswith("--")]


@cache
def ztpki_options(words: tuple[str, ...]) -> frozenset[str] | None:
    """The long options `ztpki WORDS --help` lists; None if there is no such command."""
    result = run_ztpki(*words, "--help", check=False)
    if result.returncode == 2 and "No such command" in result.stderr:
        return None
    assert result.returncode == 0, result.stderr
    return frozenset(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", result.stdout, re.MULTILINE))


def unknown_options(argv: list[str]) -> list[str]:
    """The options of a ztpki command line that its command does not have (PENDING ones
    excused while absent); a missing command is an error unless PENDING_COMMANDS names it."""
    words, options = ztpki_command(argv)
    known = ztpki_options(words)
    if known is None:
        return [] if words in PENDING_COMMANDS else [f"(no command `ztpki {' '.join(words)}`)"]
    pending = PENDING.get(words, set())
    return [o for o in options if o not in known and o not in pending]
