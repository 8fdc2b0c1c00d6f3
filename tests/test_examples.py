"""The ``Examples:`` blocks of the main entry points run as written (doctest)."""

import doctest

import pytest

import ctfm

ENTRY_POINTS = ["load", "embed"]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_examples_run(name):
    function = getattr(ctfm, name)
    tests = doctest.DocTestFinder(recurse=False).find(function, name, globs={})
    assert tests and tests[0].examples, f"ctfm.{name} has no Examples: block"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
