"""The live-test fixtures (namespaces, agents) for the package tests."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from tests.e2e.conftest import (  # noqa: E402,F401
    BUILD, Agent, agents, namespaces, pytest_runtest_makereport, wait_for)
