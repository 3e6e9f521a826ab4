"""Shared fixtures live in pytest plugin modules under tests/plugins/."""

pytest_plugins = ["tests.plugins.stack", "tests.plugins.stores"]
