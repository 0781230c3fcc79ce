#!/usr/bin/env python3
"""Runs moxy's integration tests.

    python3 tests/integration/run.py [FILTER ...]

A FILTER keeps the tests whose id (module.Class.test_name) contains it.
Prints one line per test, the failures' details, and ends with exactly
"N passed, N failed" (errors count as failed, skips do not count as passed).
Exit status is non-zero if any test failed or none ran.
Env: MOXY_BIN (default build/moxy), MOXY_ASAN=1, MOXY_TEST_TIMEOUT (per test,
default 90 s, x3 with MOXY_ASAN=1), MOXY_KEEP_TMP=1 keeps moxy temp dirs.
"""
import faulthandler
import os
import signal
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import SLOW  # noqa: E402

TEST_TIMEOUT = float(os.environ.get("MOXY_TEST_TIMEOUT", str(90 * SLOW)))


class TestTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise TestTimeout(f"test exceeded {TEST_TIMEOUT:g}s (MOXY_TEST_TIMEOUT)")


class Result(unittest.TestResult):
    """Tracks one outcome per test id; class-level errors count as failed entries."""

    def __init__(self):
        super().__init__()
        self.outcome = {}      # id -> "ok" | "FAIL" | "skip" | "xfail"
        self.details = []      # (id, text)
        self.started = 0.0

    def startTest(self, test):
        super().startTest(test)
        self.started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT)

    def stopTest(self, test):
        signal.setitimer(signal.ITIMER_REAL, 0)
        super().stopTest(test)
        status = self.outcome.setdefault(test.id(), "ok")
        line = f"{status:<5} {test.id()} ({time.monotonic() - self.started:.2f}s)"
        if status == "FAIL":
            first = next((t for i, t in self.details if i == test.id()), "")
            line += " -- " + _summary(first)
        print(line, flush=True)

    def _fail(self, test, err):
        tid = test.id() if isinstance(test, unittest.TestCase) else str(test)
        self.details.append((tid, self._exc_info_to_string(err, test)))
        self.outcome[tid] = "FAIL"
        if not isinstance(test, unittest.TestCase):   # setUpClass/tearDownClass/cleanups
            print(f"FAIL  {tid} -- {_summary(self.details[-1][1])}", flush=True)

    def addError(self, test, err):
        super().addError(test, err)
        self._fail(test, err)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._fail(test, err)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.details.append((test.id(), "unexpected success"))
        self.outcome[test.id()] = "FAIL"

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.outcome[test.id()] = "skip"

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.outcome.setdefault(test.id(), "xfail")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self.details.append((test.id(), f"[{subtest._subDescription()}]\n" + self._exc_info_to_string(err, test)))
            self.outcome[test.id()] = "FAIL"


def _summary(text):
    """The exception line of a traceback (first line of its message)."""
    lines = [l for l in text.strip().splitlines() if l.strip()]
    for i, l in enumerate(lines):
        if not l.startswith((" ", "Traceback", "During handling")) and i > 0:
            return l.strip()[:200]
    return (lines[-1] if lines else "").strip()[:200]


def flatten(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from flatten(t)
        else:
            yield t


def main(filters):
    faulthandler.dump_traceback_later(1800, exit=True)   # last-resort bound on the whole run
    signal.signal(signal.SIGALRM, _on_alarm)
    loaded = unittest.defaultTestLoader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    tests = [t for t in flatten(loaded) if not filters or any(f in t.id() for f in filters)]
    print(f"moxy integration tests: {len(tests)} selected, MOXY_BIN={os.environ.get('MOXY_BIN', 'build/moxy')}",
          flush=True)
    result = Result()
    t0 = time.monotonic()
    unittest.TestSuite(tests).run(result)
    shown = {}
    for tid, text in result.details:      # identical failures (e.g. a class setup) once
        key = text.strip().splitlines()[-1] if "class setup failed" in text else text
        if key in shown:
            print(f"\n======== FAIL: {tid}: same as {shown[key]}")
        else:
            shown[key] = tid
            print(f"\n======== FAIL: {tid}\n{text.rstrip()}")
    passed = sum(1 for s in result.outcome.values() if s in ("ok", "xfail"))
    failed = sum(1 for s in result.outcome.values() if s == "FAIL")
    skipped = sum(1 for s in result.outcome.values() if s == "skip")
    print(f"\ntime {time.monotonic() - t0:.1f}s" + (f", {skipped} skipped" if skipped else ""))
    if not tests:
        print("no tests matched the filters")
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed or not tests else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
