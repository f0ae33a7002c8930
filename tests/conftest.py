"""Shared fixtures: small deterministic traces for the view and app tests (tests/fixtures/synthetic.py).

`async def` tests (Textual's Pilot) run in a fresh event loop each, with no plugin needed.
"""

import asyncio
import inspect

import pytest

from tests.fixtures import synthetic


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        names = inspect.signature(pyfuncitem.obj).parameters
        asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
        return True
    return None


@pytest.fixture
def synthetic_trace():
    """A finished run: 3 layers, GQA 3/1, a 12-token chat prompt, 4 decode steps."""
    return synthetic.trace()


@pytest.fixture
def hostile_trace():
    """The same run, but two drawn tokens are `[bold red]x[/]` and an ANSI escape, and so is the model's name."""
    return synthetic.trace(hostile=True)


@pytest.fixture
def cut_short_trace():
    """The same run, never marked complete (as a killed recording leaves it)."""
    return synthetic.trace(complete=False)
