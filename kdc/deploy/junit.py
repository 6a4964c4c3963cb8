"""JUnit XML for CI systems: one testcase per checked metric (via xml.etree)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from kdc.rundir import writable, write_text

# the statuses of results that were not compared: a JUnit `<skipped>` unless they fail
NOT_COMPARED = ("missing", "skipped")


class Result(Protocol):
    """What a testcase is made from (kdc.deploy.check.CheckResult has these)."""

    metric: str
    status: str
    message: str

    @property
    def failed(self) -> bool: ...


def junit_xml(results: Sequence[Result], suite: str = "kdc check") -> str:
    """The document: `<testsuites><testsuite>` with a `<failure>` for each failed result and a
    `<skipped>` for results that were not compared and do not fail."""
    failures = sum(r.failed for r in results)
    skipped = sum(r.status in NOT_COMPARED and not r.failed for r in results)
    root = ET.Element("testsuites", name=suite, tests=str(len(results)), failures=str(failures))
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
    )
    for r in results:
        engine, _, metric = r.metric.partition(".")
        case = ET.SubElement(ts, "testcase", classname=engine, name=metric or r.metric)
        if r.failed:
            ET.SubElement(case, "failure", message=r.message, type=r.status).text = r.message
        elif r.status in NOT_COMPARED:
            ET.SubElement(case, "skipped", message=r.message)
        ET.SubElement(case, "system-out").text = f"{r.status}: {r.message}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(results: Sequence[Result], path: Path | str, suite: str = "kdc check") -> Path:
    """Write the JUnit file atomically; a path that cannot be written is a UserError."""
    with writable(path, "JUnit file", "--junit", "junit.xml"):
        return write_text(path, junit_xml(results, suite))
