"""Visitors' reports of links, beside the links, on the link store's backend.

- File: ``<file>.reports`` beside the links file, append-only: one JSON line per report,
  appended under the store's lock and fsynced, never rewritten. A line cut short by a
  crash is skipped by readers, and the next report starts on a new line.
- PostgreSQL: the ``link_reports`` table (migrations/0004_reports_keys.sql).

A report holds the code, the reason, what the visitor wrote and when: nothing that
identifies who sent it (the rule of docs/visits.md).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Protocol

from linkstore import REPORT_REASONS, LinkStore, Report, StoreUnavailable
from linkstore.jsonfile import FileStore
from linkstore.postgres import PostgresStore, iso


class ReportStore(Protocol):
    def add(self, report: Report) -> None:
        """Store a report (its reason one of REPORT_REASONS)."""

    def reports(self, code: str | None = None) -> list[Report]:
        """Every report (of code only, when given), newest first."""


def open_reports(links: LinkStore) -> ReportStore:
    """The reports beside a link store: the same directory, or the same database."""
    if isinstance(links, FileStore):
        return FileReports(links)
    if isinstance(links, PostgresStore):
        return PostgresReports(links)
    raise TypeError(f"no report store for {type(links).__name__}")


class FileReports:
    def __init__(self, links: FileStore) -> None:
        self.links = links
        self.path = links.path.with_name(links.path.name + ".reports")

    def add(self, report: Report) -> None:
        line = json.dumps(asdict(report), ensure_ascii=False).encode() + b"\n"
        with self.links.locked():
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":  # a crash cut it short
                        line = b"\n" + line
                    os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise StoreUnavailable(f"cannot save the report ({exc.strerror})") from exc

    def reports(self, code: str | None = None) -> list[Report]:
        try:
            with open(self.path, "rb") as stored:
                lines = stored.read().splitlines(keepends=True)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {self.path}: {exc.strerror}") from exc
        found = [report for report in map(parsed, lines) if report is not None
                 and (code is None or report.code == code)]
        return found[::-1]


def parsed(line: bytes) -> Report | None:
    """The report on one line of the file; None for a line cut short or not a report."""
    if not line.endswith(b"\n"):
        return None
    try:
        report = Report(**json.loads(line))
    except (ValueError, TypeError):
        return None
    return report if report.reason in REPORT_REASONS else None


class PostgresReports:
    def __init__(self, links: PostgresStore) -> None:
        self.links = links

    def add(self, report: Report) -> None:
        self.links._call(lambda conn: conn.execute(
            "INSERT INTO link_reports (code, reason, details, reported_at)"
            " VALUES (%s, %s, %s, %s)", (report.code, report.reason, report.details,
                                         report.at)), retry=False)

    def reports(self, code: str | None = None) -> list[Report]:
        rows = self.links._call(lambda conn: conn.execute(
            "SELECT code, reason, details, reported_at FROM link_reports"
            " WHERE %s::text IS NULL OR code = %s ORDER BY id DESC", (code, code)).fetchall(),
            retry=True)
        return [Report(code, reason, details, iso(at) or "") for code, reason, details, at
                in rows]
