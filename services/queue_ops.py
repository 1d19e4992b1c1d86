"""Run the Postfix queue tools for one instance: ``postqueue -j``, ``postsuper``, ``postcat``.

Every command gets ``-c CONFIG_DIR`` and a timeout. Queue ids for ``postsuper`` go on stdin
(``postsuper -h -`` etc.), so any number of them fits. Failures become a
:class:`QueueOpsError` whose ``kind`` says what went wrong (``missing``: Postfix is not
installed; ``config``: no usable config dir; ``permission``; ``not_found``: no such queue
file; ``timeout``; ``failed``: anything else), with Postfix's own message in the text.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.mailqueue import ParseResult, PostcatView, parse_postcat, parse_postqueue

Action = Literal["hold", "release", "requeue", "delete"]
ErrorKind = Literal["missing", "config", "permission", "not_found", "timeout", "failed"]

# postsuper option per action and the word of its summary line on stderr
# ("postsuper: Placed on hold: 3 messages").
ACTIONS: dict[str, tuple[str, str]] = {
    "hold": ("-h", "Placed on hold"),
    "release": ("-H", "Released from hold"),
    "requeue": ("-r", "Requeued"),
    "delete": ("-d", "Deleted"),
}
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_PERMISSION_RE = re.compile(r"permission denied|reserved for the superuser|not permitted", re.I)


class QueueOpsError(Exception):
    """A Postfix queue command could not be run or failed."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What ``postsuper`` reported for one action."""

    action: str
    requested: int
    affected: int
    warnings: tuple[str, ...] = ()


def find_tool(name: str) -> str | None:
    """The path of a Postfix tool: ``$PATH`` first, then the sbin dirs (often not on it)."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def _stderr_message(stderr: str) -> str:
    """Postfix's fatal/last line, e.g. ``open /x/main.cf: No such file or directory``."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ": fatal: " in ln:
            return ln.split(": fatal: ", 1)[1]
    return lines[-1] if lines else ""


class PostfixQueue:
    """The queue of the Postfix instance configured in ``config_dir``."""

    def __init__(self, config_dir: str = "/etc/postfix", timeout: float = 120.0) -> None:
        self.config_dir = config_dir
        self.timeout = timeout

    # ------------------------------------------------------------------ plumbing

    def _check_config_dir(self) -> None:
        main_cf = Path(self.config_dir) / "main.cf"
        try:
            ok = main_cf.is_file()
        except OSError:
            ok = False
        if not ok:
            raise QueueOpsError(
                "config",
                f"no Postfix configuration in {self.config_dir} ({main_cf} not found); "
                "set [postfix] config_dir or pass --postfix-config DIR",
            )

    def _run(
        self, tool: str, args: Sequence[str], stdin: str | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        exe = find_tool(tool)
        if exe is None:
            raise QueueOpsError(
                "missing", f"{tool} not found: is Postfix installed (Debian package 'postfix')?"
            )
        self._check_config_dir()
        cmd = [exe, "-c", self.config_dir, *args]
        try:
            return subprocess.run(
                cmd,
                input=stdin.encode() if stdin is not None else None,
                stdin=subprocess.DEVNULL if stdin is None else None,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise QueueOpsError(
                "timeout", f"{tool} did not finish within {self.timeout:g} s"
            ) from None
        except PermissionError:
            raise QueueOpsError("permission", f"no permission to run {exe}") from None
        except OSError as exc:
            raise QueueOpsError("failed", f"cannot run {exe}: {exc.strerror or exc}") from None

    def _fail(self, tool: str, proc: subprocess.CompletedProcess[bytes]) -> QueueOpsError:
        msg = _stderr_message(proc.stderr.decode("utf-8", "replace"))
        text = f"{tool} failed (exit {proc.returncode}): {msg or 'no message'}"
        if "open logfile" in msg:
            # postlogd is down (Postfix stopped) and maillog_file is not writable for the tool
            return QueueOpsError("failed", f"{text} (is Postfix running?)")
        if _PERMISSION_RE.search(msg):
            hint = " (run as root)" if os.geteuid() != 0 else ""
            return QueueOpsError("permission", f"{text}{hint}")
        if "main.cf" in msg and os.geteuid() != 0:
            # an unprivileged postqueue only honours -c for directories listed in
            # alternate_config_directories of the default main.cf
            return QueueOpsError(
                "permission",
                f"{text}; non-root users may only use config directories listed in "
                "alternate_config_directories of the default main.cf (run as root)",
            )
        if "main.cf" in msg:
            return QueueOpsError("config", text)
        if "mail system is down" in msg.lower():
            return QueueOpsError("failed", f"{text} (start Postfix or run as root)")
        return QueueOpsError("failed", text)

    # ------------------------------------------------------------------ operations

    def list(self) -> ParseResult:
        """``postqueue -j``: every queued message (garbage lines counted, not raised)."""
        proc = self._run("postqueue", ["-j"])
        if proc.returncode != 0:
            raise self._fail("postqueue", proc)
        return parse_postqueue(proc.stdout)

    def show(self, queue_id: str, body: bool = False) -> PostcatView:
        """``postcat -e -h [-b] -q QID``: envelope and headers (and body when asked)."""
        proc = self._run("postcat", ["-e", "-h", *(["-b"] if body else []), "-q", queue_id])
        if proc.returncode != 0:
            msg = _stderr_message(proc.stderr.decode("utf-8", "replace"))
            if "no such file or directory" in msg.lower() and "queue file" in msg:
                raise QueueOpsError("not_found", f"no message {queue_id} in the queue")
            raise self._fail("postcat", proc)
        try:
            return parse_postcat(proc.stdout.decode("utf-8", "replace"), with_body=body)
        except ValueError as exc:
            raise QueueOpsError("failed", f"postcat: {exc}") from None

    def act(self, action: Action, queue_ids: Iterable[str]) -> ActionResult:
        """Run ``postsuper -h|-H|-r|-d -`` with the ids on stdin; return what it did."""
        option = ACTIONS[action][0]
        ids = list(dict.fromkeys(queue_ids))
        if not ids:
            return ActionResult(action, 0, 0)
        proc = self._run("postsuper", [option, "-"], stdin="".join(f"{q}\n" for q in ids))
        if proc.returncode != 0:
            raise self._fail("postsuper", proc)
        return parse_postsuper(action, len(ids), proc.stderr.decode("utf-8", "replace"))


def parse_postsuper(action: str, requested: int, stderr: str) -> ActionResult:
    """Read ``postsuper``'s stderr: the summary count and any warnings."""
    _, summary = ACTIONS[action]
    affected: int | None = None
    per_id = 0
    warnings = []
    rx = re.compile(rf"{re.escape(summary)}: (\d+) messages?$")
    for line in stderr.splitlines():
        text = line.partition(": ")[2] if line.startswith("postsuper") else line
        m = rx.search(text)
        if m:
            affected = int(m.group(1))
        elif text.startswith("warning: "):
            warnings.append(text[len("warning: ") :])
        elif re.match(r"[0-9A-Za-z]+: \S", text):
            per_id += 1
    return ActionResult(
        action, requested, per_id if affected is None else affected, tuple(warnings)
    )
