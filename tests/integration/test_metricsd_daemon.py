"""pfm-metricsd as a running daemon: real corpus files, rotation, syslog UDP, signals."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from metricsd.__main__ import main as metricsd_main
from metricsd.server import MetricsService
from tests.conftest import free_port, integration_required
from tests.integration.metricsd_harness import (
    Scrape,
    check_names,
    http_get,
    make_service,
    scrape,
    scrape_until,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"


def corpus_file(tmp_path: Path, rel: str) -> tuple[Path, int]:
    """Decompress a corpus log into tmp_path; (path, line count)."""
    src = CORPUS / rel
    if not src.exists():
        msg = f"corpus not found at {src}"
        if integration_required():
            pytest.fail(msg)
        pytest.skip(msg)
    dst = tmp_path / Path(rel).name.removesuffix(".gz")
    with gzip.open(src, "rb") as f, dst.open("wb") as out:
        shutil.copyfileobj(f, out)
    return dst, dst.read_bytes().count(b"\n")


@pytest.fixture
async def running() -> AsyncIterator[list[MetricsService]]:
    """Services a test starts; stopped at teardown."""
    services: list[MetricsService] = []
    yield services
    for s in services:
        await s.stop(1.0)


async def start(services: list[MetricsService], svc: MetricsService) -> MetricsService:
    await svc.start()
    services.append(svc)
    return svc


def lines_done(total: int) -> Callable[[Scrape], bool]:
    return lambda s: (
        s.sum("pfm_metricsd_lines_total") >= total and s.sum("pfm_metricsd_pending_lines") == 0
    )


# --------------------------------------------------------------------------- corpus


async def test_postfix_corpus_exposition(tmp_path: Path, running: list[MetricsService]) -> None:
    """The real Postfix log, tailed from its start, scrapes as valid Prometheus text with the
    reference counts."""
    log, n = corpus_file(tmp_path, "postfix/maillog.real.log.gz")
    ref = json.loads((CORPUS / "postfix" / "real.ref.json").read_text())["counters"]
    svc = await start(
        running,
        make_service(
            {
                "sources": [{"type": "file", "path": str(log), "from_start": True}],
                "postfix_config_dir": str(tmp_path / "no-postfix"),
            }
        ),
    )
    s = await scrape_until(svc.port, lines_done(n))
    check_names(s.families)
    assert n == ref["lines.total"]
    assert s.sum("pfm_metricsd_lines_total", kind="postfix") == n
    assert s.sum("postfix_log_lines_total") == n
    assert s.sum("postfix_unsupported_lines_total") == 0
    assert s.sum("pfm_metricsd_unsupported_lines_total") == 0
    assert s.sum("postfix_deliveries_total", status="sent") == ref["delivery.all.status.sent"]
    assert (
        s.sum("postfix_deliveries_total", status="deferred") == ref["delivery.all.status.deferred"]
    )
    rcpt = ref["smtpd.ALL.noqueue_reject.RCPT"]
    assert s.sum("postfix_smtpd_rejects_total", stage="RCPT", form="noqueue") == rcpt
    assert s.sum("postfix_smtpd_rejects_total", code="454") == ref["smtpd.ALL.reject_by_code.454"]
    assert (
        s.sum("postfix_smtpd_connects_total", service="submission/smtpd")
        == ref["smtpd.submission.connect"]
    )
    assert s.sum("postfix_qmgr_removed_total") == ref["qmgr.removed"]
    src = f"file:{log}"
    assert s.get("pfm_metricsd_source_lines_total", source=src, type="file") == n
    assert s.get("pfm_metricsd_source_up", source=src, type="file") == 1
    assert s.get("postfix_up") == 0  # no Postfix configured there
    assert not s.has("postfix_queue_scrape_success")  # queue_scrape = false
    # the histogram is well formed: +Inf bucket equals the count
    inf = s.sum("postfix_delivery_delay_seconds_bucket", stage="transmission", le="+Inf")
    assert inf == s.sum("postfix_delivery_delay_seconds_count", stage="transmission") > 0


async def test_dovecot_corpus_exposition(tmp_path: Path, running: list[MetricsService]) -> None:
    """The real Dovecot log (its own log_path format) scrapes with the ground-truth counts."""
    log, n = corpus_file(tmp_path, "dovecot/dovecot.log.gz")
    truth = json.loads((CORPUS / "dovecot" / "ground_truth.json").read_text())["counters"]
    svc = await start(
        running,
        make_service(
            {
                "sources": [{"type": "file", "path": str(log), "from_start": True}],
                "postfix_config_dir": str(tmp_path),
            }
        ),
    )
    s = await scrape_until(svc.port, lines_done(n))
    check_names(s.families)
    assert s.sum("pfm_metricsd_lines_total", kind="dovecot") == n == truth["lines.total"]
    assert s.sum("dovecot_log_lines_total") == n
    assert s.sum("dovecot_logins_total", service="imap") == truth["login.ok.imap"]
    assert s.sum("dovecot_logins_total", service="imap", tls="TLS") == truth["login.ok.imap.TLS"]
    assert s.sum("dovecot_login_failures_total", service="imap") == truth["login.failed.imap"]
    assert s.sum("dovecot_login_failures_total", service="pop3") == truth["login.failed.pop3"]
    assert (
        s.sum("dovecot_passdb_results_total", result="password_mismatch")
        == truth["passdb.password_mismatch"]
    )
    assert s.sum("dovecot_session_in_bytes_total", service="imap") == truth["session.bytes_in.imap"]
    assert (
        s.sum("dovecot_session_ends_total", service="imap", reason="logged_out")
        == truth["session.end.imap.logged_out"]
    )
    assert (
        s.sum("dovecot_log_messages_total", process="submission", level="error")
        == truth["error.submission"]
    )
    assert s.sum("dovecot_unsupported_lines_total") == 0


# --------------------------------------------------------------------------- rotation


def _line(i: int, tag: str = "a") -> str:
    return (
        f"Nov 24 06:20:{i % 60:02d} mx postfix/smtpd[{100 + i}]: connect from "
        f"client{tag}{i}.example[192.0.2.{i % 250 + 1}]\n"
    )


def _append(path: Path, start: int, count: int, tag: str = "a") -> None:
    with path.open("a") as f:
        f.writelines(_line(i, tag) for i in range(start, start + count))


async def test_rotation_counts_every_line_once(
    tmp_path: Path, running: list[MetricsService]
) -> None:
    """Appends, rename+create and copytruncate rotations: totals equal the lines written."""
    log = tmp_path / "mail.log"
    _append(log, 0, 50)  # before start: skipped (from_start = false)
    svc = await start(
        running,
        make_service(
            {
                "sources": [{"type": "file", "path": str(log), "poll": 0.02}],
                "postfix_config_dir": str(tmp_path),
            }
        ),
    )
    await asyncio.sleep(0.1)  # the follower opened the file at its end

    def connects(want: int) -> Callable[[Scrape], bool]:
        return lambda s: (
            s.sum("postfix_smtpd_connects_total") >= want
            and (s.sum("pfm_metricsd_pending_lines") == 0)
        )

    _append(log, 0, 100)
    await scrape_until(svc.port, connects(100))
    # rename + create (logrotate's default): the tail of the old file, then the new one
    _append(log, 100, 30)
    log.rename(tmp_path / "mail.log.1")
    _append(log, 0, 70, tag="b")
    await scrape_until(svc.port, connects(200))
    # copytruncate: copy, truncate in place, keep writing
    shutil.copy(log, tmp_path / "mail.log.2")
    await asyncio.sleep(0.1)
    with log.open("r+") as f:
        f.truncate(0)
    await asyncio.sleep(0.1)
    _append(log, 0, 40, tag="c")
    s = await scrape_until(svc.port, connects(240))
    await asyncio.sleep(0.3)  # a few more polls: nothing may be read twice
    s = await scrape(svc.port)
    assert s.sum("postfix_smtpd_connects_total") == 240
    assert s.sum("pfm_metricsd_source_lines_total") == 240
    assert s.sum("pfm_metricsd_source_rotations_total", kind="rename") == 1
    assert s.sum("pfm_metricsd_source_rotations_total", kind="truncate") == 1


# --------------------------------------------------------------------------- syslog UDP


async def test_syslog_udp_datagrams_are_counted(
    tmp_path: Path, running: list[MetricsService]
) -> None:
    """Real RFC 3164 and RFC 5424 datagrams to the daemon's port are parsed and counted."""
    port = free_port()
    svc = await start(
        running,
        make_service(
            {
                "sources": [{"type": "syslog", "listen": f"127.0.0.1:{port}"}],
                "postfix_config_dir": str(tmp_path),
            }
        ),
    )
    msgs = [
        b"<22>Nov 24 06:20:23 mx postfix/smtpd[41]: connect from a.example[192.0.2.1]",
        b"<22>1 2026-11-24T06:20:23.123456+00:00 mx postfix/submission/smtpd 42 - - "
        b"connect from b.example[192.0.2.2]",
        b"<22>Nov 24 06:20:24 mx postfix/smtpd[41]: disconnect from a.example[192.0.2.1] "
        b"ehlo=1 quit=1 commands=2",
        b"<22>Nov 24 06:20:24 mx dovecot: imap-login: Login: user=<u@example.org>, "
        b"method=PLAIN, rip=192.0.2.9, lip=192.0.2.1, mpid=9, TLS, session=<x>",
        b"<13>Nov 24 06:20:25 mx cron[7]: (root) CMD (true)",
        b"not syslog at all",
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for m in msgs:
            sock.sendto(m, ("127.0.0.1", port))
    s = await scrape_until(
        svc.port,
        lambda s: (
            s.sum("pfm_metricsd_lines_total") >= 5
            and s.sum("pfm_metricsd_source_errors_total") >= 1
        ),
    )
    check_names(s.families)
    assert s.sum("postfix_smtpd_connects_total", service="smtpd") == 1
    assert s.sum("postfix_smtpd_connects_total", service="submission/smtpd") == 1
    assert s.sum("postfix_smtpd_commands_total", command="ehlo") == 1
    assert s.sum("dovecot_logins_total", service="imap", tls="TLS") == 1
    assert s.sum("pfm_metricsd_lines_total", kind="other") == 1
    src = f"syslog:127.0.0.1:{port}"
    assert s.get("pfm_metricsd_source_lines_total", source=src, type="syslog") == 5
    assert s.get("pfm_metricsd_source_errors_total", source=src, type="syslog") == 1


async def test_syslog_port_in_use_fails_start(tmp_path: Path) -> None:
    """A syslog port already bound makes start-up fail with an OSError naming the address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        svc = make_service(
            {
                "sources": [{"type": "syslog", "listen": f"127.0.0.1:{port}"}],
                "postfix_config_dir": str(tmp_path),
            }
        )
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            await svc.start()
        await svc.stop(0)


async def test_healthz_and_unknown_path(tmp_path: Path, running: list[MetricsService]) -> None:
    """/healthz answers ok and unknown paths 404 on the exporter's port."""
    svc = await start(running, make_service({"sources": [], "postfix_config_dir": str(tmp_path)}))
    assert await http_get(svc.port, "/healthz") == (200, "ok\n")
    assert (await http_get(svc.port, "/nope"))[0] == 404


# --------------------------------------------------------------------------- process


def _write_config(path: Path, port: int, sources: str) -> None:
    path.write_text(
        f'[log]\nformat = "json"\n\n[metricsd]\nlisten = "127.0.0.1:{port}"\n'
        f'queue_scrape = false\npostfix_config_dir = "{path.parent}"\n{sources}'
    )


def _file_source(p: Path) -> str:
    return (
        f'\n[[metricsd.sources]]\ntype = "file"\npath = "{p}"\nfrom_start = true\npoll = "20ms"\n'
    )


async def _scrape_proc(port: int, timeout: float = 15.0) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await scrape(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_process_sighup_adds_source_and_sigterm_stops(tmp_path: Path) -> None:
    """python -m metricsd: SIGHUP applies a new source list, a bad config is kept out, SIGTERM
    exits 0."""
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    _append(a, 0, 10)
    _append(b, 0, 7, tag="b")
    cfg = tmp_path / "pfm.toml"
    port = free_port()
    _write_config(cfg, port, _file_source(a))
    err = (tmp_path / "stderr.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "metricsd", "--config", str(cfg), "--no-uvloop"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        await _scrape_proc(port)
        await scrape_until(port, lambda s: s.sum("postfix_smtpd_connects_total") == 10)
        _write_config(cfg, port, _file_source(a) + _file_source(b))
        proc.send_signal(signal.SIGHUP)
        s = await scrape_until(port, lambda s: s.sum("postfix_smtpd_connects_total") == 17)
        assert s.sum("pfm_metricsd_reloads_total", result="ok") == 1
        cfg.write_text(cfg.read_text() + "\nbogus_key = 1\n")
        proc.send_signal(signal.SIGHUP)
        s = await scrape_until(
            port, lambda s: s.sum("pfm_metricsd_reloads_total", result="error") == 1
        )
        assert s.sum("postfix_smtpd_connects_total") == 17  # old sources keep running, no re-read
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    events = [
        json.loads(x)
        for x in (tmp_path / "stderr.log").read_text().splitlines()
        if x.startswith("{")
    ]
    names = [e.get("event") for e in events]
    assert "reloaded" in names and "reload_rejected" in names and "stopped" in names
    rejected = next(e for e in events if e.get("event") == "reload_rejected")
    assert "bogus_key" in str(rejected.get("error"))


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--check-config prints the sources and exits 0 for a valid file."""
    cfg = tmp_path / "pfm.toml"
    _write_config(cfg, 9154, _file_source(tmp_path / "mail.log"))
    assert metricsd_main(["--config", str(cfg), "--check-config"]) == 0
    out = capsys.readouterr().out
    assert f"source file:{tmp_path / 'mail.log'} (from start)" in out
    assert "queue: off" in out


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('[[metricsd.sources]]\ntype = "syslog"\n', "metricsd.sources[0].listen"),
        (
            '[[metricsd.sources]]\ntype = "file"\npath = "relative.log"\n',
            "metricsd.sources[0].path",
        ),
        ('[[metricsd.sources]]\ntype = "tcp"\n', "metricsd.sources[0].type"),
        (
            '[[metricsd.sources]]\ntype = "file"\npath = "/x"\nlisten = "1:2"\n',
            "metricsd.sources[0].listen",
        ),
        ("top_domains = 0\n", "metricsd.top_domains"),
        ('listen = "nowhere"\n', "metricsd.listen"),
        ('queue_timeout = "soon"\n', "metricsd.queue_timeout"),
    ],
)
def test_check_config_errors_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, key: str
) -> None:
    """--check-config exits 78 with an error naming the offending key and its line."""
    cfg = tmp_path / "pfm.toml"
    cfg.write_text(f"[metricsd]\n{body}")
    assert metricsd_main(["--config", str(cfg), "--check-config"]) == 78
    err = capsys.readouterr().err
    assert key in err and f"{cfg}:" in err
    assert "Traceback" not in err
