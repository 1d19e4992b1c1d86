"""``pfm dns`` end to end through ``services.cli.main.main`` with a temp config and dkim_dir."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from services.cli import exitcodes
from services.cli.main import main


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """A pfm.toml whose dkim_dir lives in tmp_path, with two MX hosts and ed25519 keys."""
    path = tmp_path / "pfm.toml"
    path.write_text(
        f"""
[directory]
dkim_dir = "{tmp_path / "dkim"}"

[dns]
mx_hosts = ["mx1.example.net", "mx2.example.net"]
dkim_algorithm = "ed25519"
dmarc_policy = "reject"
""",
        encoding="utf-8",
    )
    return path


def run(cfg: Path, *argv: str) -> int:
    return main(["--config", str(cfg), "dns", *argv])


def test_records_without_key_hints_and_writes_nothing(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """records on a domain without a DKIM key prints the rest and says how to create one."""
    assert run(cfg, "records", "example.org") == exitcodes.OK
    out, err = capsys.readouterr()
    assert "example.org. 3600 IN MX 10 mx1.example.net." in out
    assert '_dmarc.example.org. 3600 IN TXT "v=DMARC1; p=reject;' in out
    assert "_domainkey" not in out
    assert "pfm dns dkim generate example.org" in err
    assert not (cfg.parent / "dkim").exists()


def test_records_create_dkim_json_and_policy_out(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--create-dkim makes a key; --json lists records; --policy-out writes the MTA-STS file."""
    policy = tmp_path / "mta-sts.txt"
    rc = run(
        cfg, "records", "bücher.example", "--create-dkim", "--json", "--policy-out", str(policy)
    )
    assert rc == exitcodes.OK
    out, err = capsys.readouterr()
    records = json.loads(out)
    assert {r["purpose"] for r in records} == {"mx", "spf", "dkim", "dmarc", "mta-sts", "tls-rpt"}
    assert all(r["name"].endswith("xn--bcher-kva.example.") for r in records)
    dkim = next(r for r in records if r["purpose"] == "dkim")
    assert dkim["value"].startswith("v=DKIM1; k=ed25519; p=")
    sts = next(r for r in records if r["purpose"] == "mta-sts")
    assert sts["policy_url"] == "https://mta-sts.xn--bcher-kva.example/.well-known/mta-sts.txt"
    assert policy.read_text() == sts["policy"]
    assert "mode: testing\nmx: mx1.example.net\nmx: mx2.example.net\n" in sts["policy"]
    assert "created DKIM key" in err
    assert "PRIVATE KEY" not in out + err


def test_dkim_generate_dry_run_writes_nothing(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """dkim generate --dry-run reports the plan and creates no file or directory."""
    assert run(cfg, "dkim", "generate", "example.org", "--dry-run", "--algorithm", "rsa") == 0
    out = capsys.readouterr().out
    assert out.startswith("would create DKIM key example.org selector s")
    assert "(rsa-2048)" in out
    assert not (cfg.parent / "dkim").exists()


def test_dkim_generate_rotate_list_retire(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """generate, rotate (old key still in records), list --json, retire --force removes it."""
    assert run(cfg, "dkim", "generate", "example.org", "--selector", "one") == 0
    out = capsys.readouterr().out
    assert 'one._domainkey.example.org. 3600 IN TXT "v=DKIM1; k=ed25519; p=' in out
    key = cfg.parent / "dkim/example.org/one.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in out

    assert run(cfg, "dkim", "generate", "example.org") == exitcodes.EXISTS
    assert "rotate" in capsys.readouterr().err
    assert run(cfg, "dkim", "generate", "example.org", "--if-missing") == 0
    assert "already has the active DKIM selector one" in capsys.readouterr().out

    assert run(cfg, "dkim", "rotate", "example.org", "--selector", "two") == 0
    assert "one is retiring" in capsys.readouterr().out
    assert run(cfg, "records", "example.org") == 0
    out = capsys.readouterr().out
    assert "two._domainkey.example.org." in out and "one._domainkey.example.org." in out
    assert run(cfg, "records", "example.org", "--selector", "two") == 0
    assert "one._domainkey" not in capsys.readouterr().out

    assert run(cfg, "dkim", "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["selector"], r["state"]) for r in rows] == [("two", "active"), ("one", "retiring")]
    assert run(cfg, "dkim", "list") == 0
    assert "retiring" in capsys.readouterr().out

    assert run(cfg, "dkim", "retire", "example.org", "one") == exitcodes.FAILURE
    assert "--force" in capsys.readouterr().err
    assert run(cfg, "dkim", "retire", "example.org", "one", "--force", "--dry-run") == 0
    assert key.exists()
    assert run(cfg, "dkim", "retire", "example.org", "one", "--force") == 0
    assert not key.exists()
    capsys.readouterr()
    assert run(cfg, "records", "example.org") == 0
    assert "one._domainkey" not in capsys.readouterr().out


def test_dkim_errors_and_exit_codes(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown domain keys give NOT_FOUND, a bad selector INVALID, each with a one-line message."""
    assert run(cfg, "dkim", "rotate", "example.org") == exitcodes.NOT_FOUND
    assert run(cfg, "dkim", "list", "example.org") == exitcodes.NOT_FOUND
    assert run(cfg, "dkim", "generate", "example.org", "--selector", "a/b") == exitcodes.INVALID
    assert run(cfg, "records", "nodot") == exitcodes.INVALID
    err = capsys.readouterr().err
    assert err.count("\n") == 4 and "Traceback" not in err


def test_check_ok_then_mismatch(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check exits 0 for the zone records printed, MISMATCH when a record is missing or different."""
    assert run(cfg, "dkim", "generate", "example.org") == 0
    capsys.readouterr()
    assert run(cfg, "records", "example.org") == 0
    zone_text = capsys.readouterr().out
    zone = tmp_path / "example.org.zone"
    zone.write_text("$TTL 1h\n@ IN SOA ns1 host ( 1 2 3 4 5 )\n" + zone_text)
    assert run(cfg, "check", "example.org", "--zone", str(zone)) == exitcodes.OK
    assert "0 missing, 0 different, 0 extra" in capsys.readouterr().out

    broken = "\n".join(
        line.replace("p=reject", "p=none")
        for line in zone_text.splitlines()
        if not line.startswith("_smtp._tls")
    )
    zone.write_text(broken + '\nold._domainkey IN TXT "v=DKIM1; p="\n')
    assert run(cfg, "check", "example.org", "--zone", str(zone)) == exitcodes.MISMATCH
    out = capsys.readouterr().out
    assert "MISSING   TXT  _smtp._tls.example.org." in out
    assert "DIFFERENT TXT  _dmarc.example.org." in out
    assert "EXTRA     TXT  old._domainkey.example.org." in out
    assert run(cfg, "check", "example.org", "--zone", str(zone), "--json") == exitcodes.MISMATCH
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    assert data["counts"] == {"ok": 5, "missing": 1, "different": 1, "extra": 1}


def test_check_garbage_zone_names_line(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A garbage or unreadable zone file is a one-line error naming the file and line."""
    zone = tmp_path / "bad.zone"
    zone.write_text("@ MX 10 mail\nthis is not a zone\n")
    assert run(cfg, "check", "example.org", "--zone", str(zone)) == exitcodes.INVALID
    assert f"{zone}:2: unknown record type" in capsys.readouterr().err
    zone.write_bytes(b"@ MX 10 mail\n\xff\xfe\x00")
    assert run(cfg, "check", "example.org", "--zone", str(zone)) == exitcodes.INVALID
    assert f"{zone}:2: not UTF-8" in capsys.readouterr().err
    assert run(cfg, "check", "example.org", "--zone", str(tmp_path / "nope")) == exitcodes.FAILURE
    assert "cannot read zone file" in capsys.readouterr().err


def test_bad_dns_config_is_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong [dns] key or value exits CONFIG naming the key and line."""
    path = tmp_path / "pfm.toml"
    path.write_text('[dns]\nmx_hosts = ["mx.example.net"]\nmta_sts_mode = "strict"\n')
    assert main(["--config", str(path), "dns", "records", "example.org"]) == exitcodes.CONFIG
    err = capsys.readouterr().err
    assert "dns.mta_sts_mode" in err and ":3:" in err
    path.write_text('[dns]\nspf = "include:x"\n')
    assert main(["--config", str(path), "dns", "records", "example.org"]) == exitcodes.CONFIG
    assert "dns.spf" in capsys.readouterr().err


def test_cli_module_imports_no_crypto() -> None:
    """Importing the dns command module does not import cryptography (fast pfm start)."""
    import subprocess
    import sys

    code = (
        "import sys, services.cli.main; "
        "print(any(m.startswith(('cryptography', 'services.dns')) for m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_mx_option_overrides_config(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--mx replaces the configured MX hosts in records and in the MTA-STS policy."""
    assert run(cfg, "records", "example.org", "--mx", "smtp.example.com", "--json") == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["exchange"] for r in records if r["type"] == "MX"] == ["smtp.example.com."]
    sts = next(r for r in records if r["purpose"] == "mta-sts")
    assert "mx: smtp.example.com\n" in sts["policy"]
    assert run(cfg, "records", "example.org", "--mx", "bad host") == exitcodes.INVALID
    assert "--mx" in capsys.readouterr().err
