"""``pfm dns``: the DNS records a mail domain needs, DKIM keys, and checking a zone file.

Thin: parse -> call :mod:`services.dns` -> render. Heavy imports (``cryptography``,
``idna``) happen inside the command functions so ``pfm`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..exitcodes import CONFIG, EXISTS, FAILURE, INVALID, MISMATCH, NOT_FOUND, OK, CliError

if TYPE_CHECKING:
    from services.config import Config
    from services.dns.dkim import DkimStore
    from services.dns.records import RecordSet

MAX_ZONE_FILE = 16 * 1024 * 1024


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dns",
        help="DNS records for a mail domain (MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT), DKIM keys",
        description="Print the DNS records a mail domain needs, manage its DKIM keys "
        "([directory] dkim_dir) and check a zone file against them. Settings: [dns].",
    )
    ps = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    r = ps.add_parser("records", help="print the records DOMAIN needs (zone-file lines)")
    r.add_argument("domain", metavar="DOMAIN")
    r.add_argument("--selector", help="only this DKIM selector (default: active + retiring)")
    r.add_argument(
        "--mx", action="extend", nargs="+", default=[], metavar="HOST", help="MX host(s)"
    )
    r.add_argument("--json", action="store_true", help="print a JSON list of records")
    r.add_argument("--policy-out", metavar="FILE", help="also write the MTA-STS policy file")
    r.add_argument(
        "--create-dkim", action="store_true", help="generate a DKIM key if the domain has none"
    )
    r.set_defaults(func=cmd_records)

    c = ps.add_parser("check", help="compare a zone file with the records DOMAIN needs")
    c.add_argument("domain", metavar="DOMAIN")
    c.add_argument("--zone", required=True, metavar="FILE", help="zone file to check")
    c.add_argument(
        "--mx", action="extend", nargs="+", default=[], metavar="HOST", help="MX host(s)"
    )
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=cmd_check)

    d = ps.add_parser("dkim", help="DKIM keys: generate, rotate, retire, list")
    ds = d.add_subparsers(dest="dkim_action", metavar="ACTION", required=True)

    g = ds.add_parser("generate", help="create DOMAIN's first DKIM key")
    g.add_argument("domain", metavar="DOMAIN")
    g.add_argument("--algorithm", choices=("rsa", "ed25519"), help="default: [dns]")
    g.add_argument("--selector", help="default: [dns] dkim_selector_format, e.g. s202612")
    g.add_argument(
        "--if-missing", action="store_true", help="succeed quietly if a key exists already"
    )
    g.add_argument("--dry-run", action="store_true", help="show what would be created")
    g.add_argument("--json", action="store_true", help="print JSON")
    g.set_defaults(func=cmd_dkim_generate)

    o = ds.add_parser("rotate", help="new active key; the old one keeps being published")
    o.add_argument("domain", metavar="DOMAIN")
    o.add_argument("--algorithm", choices=("rsa", "ed25519"), help="default: [dns]")
    o.add_argument("--selector", help="default: [dns] dkim_selector_format")
    o.add_argument("--dry-run", action="store_true", help="show what would be done")
    o.add_argument("--json", action="store_true", help="print JSON")
    o.set_defaults(func=cmd_dkim_rotate)

    t = ds.add_parser("retire", help="stop publishing a retiring selector, delete its key")
    t.add_argument("domain", metavar="DOMAIN")
    t.add_argument("selector", metavar="SELECTOR")
    t.add_argument("--force", action="store_true", help="even before its retire date")
    t.add_argument("--dry-run", action="store_true", help="show what would be done")
    t.add_argument("--json", action="store_true", help="print JSON")
    t.set_defaults(func=cmd_dkim_retire)

    lst = ds.add_parser("list", help="DKIM selectors of DOMAIN (or of every domain)")
    lst.add_argument("domain", metavar="DOMAIN", nargs="?")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=cmd_dkim_list)


# --------------------------------------------------------------------------- helpers


def _config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    from services.config import ConfigError, config_path, load_config

    try:
        return load_config(config_path(args.config, environ))
    except ConfigError as exc:
        raise CliError(f"invalid configuration: {exc}", CONFIG) from None


def _store(cfg: Config) -> DkimStore:
    from services.dns.dkim import DkimStore

    return DkimStore(cfg.directory.dkim_dir)


def _fail(exc: Exception) -> CliError:
    """Map a services.dns / directory error to a CLI error with its exit code."""
    from services.directory.model import InvalidInput
    from services.dns.dkim import DkimExists, DkimNotFound
    from services.dns.records import DnsError

    msg = str(exc)
    if isinstance(exc, DnsError | InvalidInput):
        field = getattr(exc, "field", "")
        return CliError(msg, CONFIG if field.startswith("dns.") else INVALID)
    if isinstance(exc, DkimNotFound):
        return CliError(msg, NOT_FOUND)
    if isinstance(exc, DkimExists):
        return CliError(msg, EXISTS)
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return CliError(f"cannot write{where}: {exc.strerror or exc}", FAILURE)
    return CliError(msg, FAILURE)


def _errors() -> tuple[type[Exception], ...]:
    from services.directory.model import InvalidInput
    from services.dns.dkim import DkimError
    from services.dns.records import DnsError

    return (DnsError, InvalidInput, DkimError, OSError)


def _record_set(
    cfg: Config, store: DkimStore, domain: str, selector: str | None, mx: list[str]
) -> RecordSet:
    from services.dns.dkim import validate_selector
    from services.dns.records import build_records

    sel = validate_selector(selector) if selector else None
    keys = store.public_keys(domain, sel)
    return build_records(domain, cfg.dns, keys, mx)


def _short(text: str, width: int = 72) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# --------------------------------------------------------------------------- records


def cmd_records(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.dns.dkim import write_atomic
    from services.dns.records import render_zone

    cfg = _config(args, environ)
    store = _store(cfg)
    try:
        created = None
        if args.create_dkim and store.load(args.domain).active is None:
            created = store.generate(
                args.domain,
                cfg.dns.dkim_algorithm,
                bits=cfg.dns.dkim_rsa_bits,
                selector=args.selector,
                selector_format=cfg.dns.dkim_selector_format,
            )
        rs = _record_set(cfg, store, args.domain, args.selector, args.mx)
    except _errors() as exc:
        raise _fail(exc) from None
    if args.policy_out:
        try:
            write_atomic(Path(args.policy_out), rs.mta_sts_policy.encode("ascii"), 0o644)
        except OSError as exc:
            raise CliError(
                f"cannot write {args.policy_out}: {exc.strerror or exc}", FAILURE
            ) from None
    if created is not None:
        print(
            f"pfm: created DKIM key {rs.domain} selector {created.selector} ({created.algorithm})",
            file=sys.stderr,
        )
    if not rs.dkim_selectors:
        print(
            f"pfm: note: {rs.domain} has no DKIM key yet: run 'pfm dns dkim generate "
            f"{rs.domain}' (or add --create-dkim), then print the records again",
            file=sys.stderr,
        )
    if args.json:
        out = []
        for rec in rs.records:
            d = rec.as_dict()
            if rec.purpose == "mta-sts":
                d["policy_url"] = rs.mta_sts_policy_url
                d["policy"] = rs.mta_sts_policy
            out.append(d)
        _print_json(out)
    else:
        sys.stdout.write(render_zone(rs))
    return OK


# --------------------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from services.dns.check import check_zone
    from services.dns.zonefile import ZoneError, parse_zone

    cfg = _config(args, environ)
    store = _store(cfg)
    try:
        rs = _record_set(cfg, store, args.domain, None, args.mx)
    except _errors() as exc:
        raise _fail(exc) from None
    path = Path(args.zone)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_ZONE_FILE + 1)
    except OSError as exc:
        raise CliError(f"cannot read zone file {path}: {exc.strerror or exc}", FAILURE) from None
    if len(raw) > MAX_ZONE_FILE:
        raise CliError(f"zone file {path} is larger than {MAX_ZONE_FILE} bytes", INVALID)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CliError(f"{path}:{line}: not UTF-8 text: not a zone file", INVALID) from None
    try:
        zone = parse_zone(text, origin=rs.domain + ".")
    except ZoneError as exc:
        raise CliError(f"{path}:{exc.line}: {exc.message}", INVALID) from None
    result = check_zone(rs, zone)
    if args.json:
        _print_json(
            {
                "domain": result.domain,
                "zone": str(path),
                "ok": result.ok,
                "counts": result.counts(),
                "findings": [f.as_dict() for f in result.findings],
            }
        )
    else:
        for f in result.findings:
            where = f" (line {f.line})" if f.line else ""
            print(f"{f.status.upper():<9} {f.type:<4} {f.name}{where}")
            if f.status == "ok" and f.found is not None:
                print(f"    {_short(f.found)}")
            if f.status in ("missing", "different") and f.expected is not None:
                print(f"    expected: {f.expected}")
            if f.status in ("different", "extra") and f.found is not None:
                print(f"    found:    {f.found}")
            if f.note:
                print(f"    note:     {f.note}")
        n = result.counts()
        print(
            f"{result.domain}: {n['ok']} ok, {n['missing']} missing, "
            f"{n['different']} different, {n['extra']} extra"
        )
    return OK if result.ok else MISMATCH


# --------------------------------------------------------------------------- dkim


def _dkim_line(store: DkimStore, domain: str, selector: str) -> str:
    from services.dns.records import Record, dkim_value, render_record

    key = store.public_keys(domain, selector)[0]
    name = f"{selector}._domainkey.{store.load(domain).domain}."
    return render_record(Record(name, "TXT", dkim_value(key), 3600, "dkim"))


def cmd_dkim_generate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    cfg = _config(args, environ)
    store = _store(cfg)
    algorithm = args.algorithm or cfg.dns.dkim_algorithm
    try:
        current = store.load(args.domain)
        if args.if_missing and current.active is not None:
            info = current.active
            if args.json:
                _print_json({"domain": current.domain, "created": False, **info.as_dict()})
            else:
                print(f"{current.domain} already has the active DKIM selector {info.selector}")
            return OK
        info = store.generate(
            args.domain,
            algorithm,
            bits=cfg.dns.dkim_rsa_bits,
            selector=args.selector,
            selector_format=cfg.dns.dkim_selector_format,
            dry_run=args.dry_run,
        )
        key_file = store.key_path(args.domain, info.selector)
        line = "" if args.dry_run else _dkim_line(store, args.domain, info.selector)
    except _errors() as exc:
        raise _fail(exc) from None
    size = f"-{info.bits}" if info.bits else ""
    if args.json:
        _print_json(
            {
                "domain": current.domain,
                "created": not args.dry_run,
                "dry_run": args.dry_run,
                "key_file": str(key_file),
                **info.as_dict(),
            }
        )
    elif args.dry_run:
        print(
            f"would create DKIM key {current.domain} selector {info.selector} "
            f"({info.algorithm}{size}) in {key_file}"
        )
    else:
        print(
            f"created DKIM key {current.domain} selector {info.selector} "
            f"({info.algorithm}{size}) in {key_file}"
        )
        print("publish:")
        print(line)
    return OK


def cmd_dkim_rotate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    cfg = _config(args, environ)
    store = _store(cfg)
    algorithm = args.algorithm or cfg.dns.dkim_algorithm
    try:
        new, old = store.rotate(
            args.domain,
            algorithm,
            bits=cfg.dns.dkim_rsa_bits,
            selector=args.selector,
            selector_format=cfg.dns.dkim_selector_format,
            retire_after=float(cfg.dns.dkim_retire_after),
            dry_run=args.dry_run,
        )
        domain = store.load(args.domain).domain
        line = "" if args.dry_run else _dkim_line(store, args.domain, new.selector)
    except _errors() as exc:
        raise _fail(exc) from None
    if args.json:
        _print_json(
            {
                "domain": domain,
                "dry_run": args.dry_run,
                "new": new.as_dict(),
                "retiring": old.as_dict(),
            }
        )
        return OK
    verb = "would rotate" if args.dry_run else "rotated"
    print(
        f"{verb} {domain}: new active selector {new.selector} ({new.algorithm}), "
        f"{old.selector} is retiring (retire after {old.retire_after})"
    )
    if not args.dry_run:
        print("publish the new key, and keep the old one until it is retired:")
        print(line)
        print(
            f"then switch the signer to {new.selector}; later: pfm dns dkim retire {domain} "
            f"{old.selector}"
        )
    return OK


def cmd_dkim_retire(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    cfg = _config(args, environ)
    store = _store(cfg)
    try:
        info = store.retire(args.domain, args.selector, force=args.force, dry_run=args.dry_run)
        domain = store.load(args.domain).domain
    except _errors() as exc:
        raise _fail(exc) from None
    if args.json:
        _print_json({"domain": domain, "dry_run": args.dry_run, "retired": info.as_dict()})
    else:
        verb = "would retire" if args.dry_run else "retired"
        print(
            f"{verb} {domain} selector {info.selector}: remove {info.selector}._domainkey."
            f"{domain}. from DNS"
        )
    return OK


def cmd_dkim_list(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    cfg = _config(args, environ)
    store = _store(cfg)
    try:
        domains = [args.domain] if args.domain else store.domains()
        rows = []
        for d in domains:
            keys = store.load(d)
            if args.domain and not keys.selectors:
                raise CliError(f"{keys.domain} has no DKIM keys", NOT_FOUND)
            for s in keys.selectors:
                rows.append(
                    {
                        "domain": keys.domain,
                        **s.as_dict(),
                        "key_file": str(store.key_path(keys.domain, s.selector)),
                    }
                )
    except _errors() as exc:
        raise _fail(exc) from None
    if args.json:
        _print_json(rows)
        return OK
    if not rows:
        print("no DKIM keys")
        return OK
    print(
        f"{'DOMAIN':<28} {'SELECTOR':<14} {'ALGORITHM':<10} {'STATE':<9} {'CREATED':<21} "
        "RETIRE AFTER"
    )
    for r in rows:
        alg = f"{r['algorithm']}-{r['bits']}" if r["bits"] else r["algorithm"]
        print(
            f"{r['domain']:<28} {r['selector']:<14} {alg:<10} {r['state']:<9} "
            f"{r['created']:<21} {r['retire_after'] or '-'}"
        )
    return OK
