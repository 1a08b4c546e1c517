"""taskstate.logfilters: tokens out of access lines, and the access line kept intact."""

from __future__ import annotations

import logging

import pytest

from taskstate.logfilters import RedactStreamTokens, redact

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyIjoiMSJ9.c2lnbmF0dXJl"


class SafeAtomsLike(dict):
    """What gunicorn's access logger passes as the record's args (gunicorn.glogging
    .SafeAtoms, not installed here): a dict subclass whose lookups of a missing key give
    "-", and whose ``{header}i`` keys are looked up in lower case."""

    def __getitem__(self, key: str) -> object:
        if key.startswith("{"):
            key = key.lower()
        if key in self:
            return super().__getitem__(key)
        return "-"


def access_record(fmt: str, atoms: dict) -> logging.LogRecord:
    # gunicorn: self.access_log.info(fmt, safe_atoms); LogRecord unwraps the mapping.
    return logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, fmt, (atoms,), None)


def test_a_safeatoms_mapping_keeps_its_type_and_its_lookups():
    """The filter replaced args with a plain dict: a format naming an absent header
    (or a header in another case) then raised KeyError and the access line was lost."""
    path = f"/taskstate/events/?link=next&es-meta={TOKEN}&ts-stream=ref123"
    atoms = SafeAtomsLike(
        {"h": "127.0.0.1", "r": f"GET {path} HTTP/1.1", "{referer}i": f"http://x{path}"}
    )
    record = access_record('%(h)s "%(r)s" "%({Referer}i)s" "%({X-Absent}i)s"', atoms)
    assert record.args is atoms
    RedactStreamTokens().filter(record)
    assert type(record.args) is SafeAtomsLike
    line = record.getMessage()
    assert TOKEN not in line and "ref123" not in line
    assert line.endswith(
        '"http://x/taskstate/events/?link=next&es-meta=[redacted]&ts-stream=[redacted]" "-"'
    )


@pytest.mark.parametrize(
    "query",
    [
        f"ES-META={TOKEN}",
        f"Es-Meta={TOKEN}",
        f"es%2Dmeta={TOKEN}",
        f"es%2dmeta={TOKEN}",
        f"%65s-meta={TOKEN}",
        f"TS-STREAM={TOKEN}",
        f"ts%2Dstream={TOKEN}",
    ],
)
def test_parameter_names_are_matched_in_any_case_and_percent_encoded(query):
    """Django's QueryDict decodes %2D to "-", so es%2Dmeta is es-meta to the view."""
    line = redact(f"GET /taskstate/events/?link=next&{query} HTTP/1.1")
    assert TOKEN not in line and "=[redacted]" in line


def filtered_line(name: str, msg: str, args: tuple | dict) -> str:
    """The line the logger ``name`` writes for this record, after its own filters."""
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    for f in logging.getLogger(name).filters:
        f.filter(record)
    return record.getMessage()


def test_djangos_runserver_request_line_carries_no_token():
    """django.core.servers.basehttp: logger.info('"%s" %s %s', requestline, code, size).
    Django's own runserver is enough for a refresh behind Pushpin (no held stream)."""
    line = filtered_line(
        "django.server",
        '"%s" %s %s',
        (f"GET /taskstate/events/?link=next&es-meta={TOKEN}&ts-stream=ref123 HTTP/1.1", "200", "5"),
    )
    assert TOKEN not in line and "ref123" not in line
    assert "es-meta=[redacted]&ts-stream=[redacted]" in line


def test_daphnes_runserver_request_line_carries_no_token():
    """daphne's runserver logs each request to "django.channels.server" with a mapping
    whose path is the whole request target, query string included."""
    details = {
        "path": f"/taskstate/events/?link=next&es-meta={TOKEN}&ts-stream=ref123",
        "status": 200,
        "method": "GET",
        "client": "127.0.0.1:5000",
        "time_taken": 0.01,
        "size": 5,
    }
    line = filtered_line(
        "django.channels.server",
        "HTTP %(method)s %(path)s %(status)s [%(time_taken).2f, %(client)s]",
        details,
    )
    assert TOKEN not in line and "ref123" not in line
    assert "es-meta=[redacted]&ts-stream=[redacted]" in line
