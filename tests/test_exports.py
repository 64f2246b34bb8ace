"""
The public names of each package, pinned: a change here is a change of
what other packages (and later issues) may rely on.
"""

from __future__ import annotations

import importlib

import pytest

EXPORTS = {
    "cipherd.store": ["DatabaseUnavailable", "MigrationError", "Store",
                      "create_engine_for_url", "read_transaction"],
    "cipherd.testing": ["MemorySettings", "PassThrough", "RecordingSubmission",
                        "SteeredRunner", "SynchronousRunner", "cheap_hasher", "migrated_store",
                        "result_of"],
}


@pytest.mark.parametrize("package", sorted(EXPORTS))
def test_exports(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(EXPORTS[package])
    for name in module.__all__:
        assert hasattr(module, name), name


def test_plugin_is_a_one_line_service_maker() -> None:
    from twisted.plugins import cipherd_plugin

    maker = cipherd_plugin.cipherd
    assert (maker.tapname, maker.module) == ("cipherd", "cipherd.tap")
