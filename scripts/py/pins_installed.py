"""Exits 0 when every NAME==VERSION argument is the installed version (scripts/check-deploy)."""

import importlib.metadata as m
import sys

for pin in sys.argv[1:]:
    name, version = pin.split("==")
    assert m.version(name) == version, pin
