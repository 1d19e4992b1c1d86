"""A private OpenLDAP slapd for tests: temp dir, free loopback port, our schema, stopped by PID.

The server runs from a generated ``slapd.conf`` that includes core, cosine, inetorgperson and
``configs/ldap/pfm.schema``, loads the ``otp`` (OATH-LDAP schema), ``argon2`` and ``pw-sha2``
modules, and is seeded offline with ``slapadd`` from ``configs/ldap/base.ldif`` (suffix
rewritten) plus a service account ``cn=pfm,BASE`` that the backend binds as. ACLs are the ones
the README recommends: the service account writes everything but can only add (never change or
delete) audit entries; mailboxes may bind with their ``userPassword``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port, pid_alive

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "configs" / "ldap" / "pfm.schema"
BASE_LDIF = REPO / "configs" / "ldap" / "base.ldif"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")

SERVICE_PASSWORD = "pfm-service-secret"
ROOT_PASSWORD = "root-secret"


def slapd_conf(tmp: Path, base_dn: str, *, otp_overlay: bool = False) -> str:
    """The text of a test ``slapd.conf`` rooted in ``tmp``."""
    service = f"cn=pfm,{base_dn}"
    includes = "\n".join(
        f"include {SCHEMA_DIR / name}.schema" for name in ("core", "cosine", "inetorgperson")
    )
    overlay = "overlay otp\n" if otp_overlay else ""
    return f"""{includes}
modulepath {MODULE_DIR}
moduleload back_mdb
moduleload otp
moduleload argon2
moduleload pw-sha2
include {SCHEMA}
pidfile {tmp}/slapd.pid
argsfile {tmp}/slapd.args
loglevel none
sizelimit unlimited

database mdb
maxsize 67108864
suffix "{base_dn}"
rootdn "cn=root,{base_dn}"
rootpw {ROOT_PASSWORD}
directory {tmp}/db
index objectClass eq
index mail eq,sub
index pfmDomainName eq
index pfmAppPasswordId eq
index pfmTimeSec eq
{overlay}
access to filter=(pfmActive=FALSE) attrs=userPassword
    by dn.exact="{service}" write
    by * none
access to attrs=userPassword
    by dn.exact="{service}" write
    by anonymous auth
    by * none
access to dn.one="ou=audit,{base_dn}"
    by dn.exact="{service}" =rsca
    by * none
access to *
    by dn.exact="{service}" write
    by * none
"""


def seed_ldif(base_dn: str) -> str:
    """The base DIT for ``base_dn`` (from configs/ldap/base.ldif) plus the service account."""
    text = BASE_LDIF.read_text(encoding="utf-8").replace("dc=example,dc=org", base_dn)
    first = base_dn.split(",", 1)[0].split("=", 1)[1]
    text = text.replace("dc: example\no: example", f"dc: {first}\no: {first}")
    return (
        text.rstrip("\n")
        + f"""

dn: cn=pfm,{base_dn}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: pfm
userPassword: {SERVICE_PASSWORD}
"""
    )


class SlapdServer:
    """One private slapd; :meth:`start` seeds and starts it, :meth:`stop` ends it by PID."""

    def __init__(
        self,
        tmp: Path,
        base_dn: str = "dc=example,dc=org",
        *,
        otp_overlay: bool = False,
        binary: str = "/usr/sbin/slapd",
    ) -> None:
        self.tmp = tmp
        self.base_dn = base_dn
        self.binary = binary
        self.otp_overlay = otp_overlay
        self.port = 0
        self.pid: int | None = None
        self.start_seconds = 0.0
        self.conf = tmp / "slapd.conf"
        self.password_file = tmp / "bind.pw"

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def service_dn(self) -> str:
        return f"cn=pfm,{self.base_dn}"

    @property
    def root_dn(self) -> str:
        return f"cn=root,{self.base_dn}"

    def start(self) -> None:
        """Write the config, seed the database offline, start slapd and wait until it binds."""
        began = time.monotonic()
        self.tmp.mkdir(parents=True, exist_ok=True)
        db = self.tmp / "db"
        if not db.exists():
            db.mkdir()
            self.conf.write_text(
                slapd_conf(self.tmp, self.base_dn, otp_overlay=self.otp_overlay),
                encoding="utf-8",
            )
            seed = self.tmp / "seed.ldif"
            seed.write_text(seed_ldif(self.base_dn), encoding="utf-8")
            self._run(["/usr/sbin/slapadd", "-q", "-f", str(self.conf), "-l", str(seed)])
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(SERVICE_PASSWORD)
        if not self.port:
            self.port = free_port()
        self._run([self.binary, "-f", str(self.conf), "-h", f"{self.uri}/"])
        self.pid = int((self.tmp / "slapd.pid").read_text().strip())
        self.wait_ready()
        self.start_seconds = time.monotonic() - began

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Poll ``ldapwhoami`` as the service account until it succeeds."""
        deadline = time.monotonic() + timeout
        while True:
            r = subprocess.run(
                ["ldapwhoami", "-x", "-H", self.uri, "-D", self.service_dn, "-y",
                 str(self.password_file)],
                capture_output=True,
                check=False,
            )  # fmt: skip
            if r.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"slapd not ready: {r.stderr.decode(errors='replace')}")
            time.sleep(0.01)

    def stop(self) -> None:
        """SIGTERM the PID from the pidfile and wait until it is gone."""
        pid = self.pid
        self.pid = None
        if pid is None:
            return
        if pid_alive(pid):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pid_alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def pause(self) -> None:
        """SIGSTOP slapd: connections open but nothing answers (to test timeouts)."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused slapd."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGCONT)

    def ldap(
        self, tool: str, *args: str, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run an ldap-utils tool (ldapsearch, ldapwhoami ...) against this server."""
        return subprocess.run(
            [tool, "-H", self.uri, *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )

    @staticmethod
    def _run(argv: list[str]) -> None:
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({r.returncode}): {r.stderr.strip()}")
