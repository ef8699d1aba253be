"""vitmix.train.allocator: glibc's malloc set to keep freed memory, and its switch."""

import platform

import pytest

from vitmix.train import allocator


def test_applied_on_glibc_and_left_alone_when_switched_off(monkeypatch):
    monkeypatch.delenv(allocator.ENV_VAR, raising=False)
    assert allocator.keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
    monkeypatch.setenv(allocator.ENV_VAR, "0")
    assert allocator.keep_freed_memory() is False


def test_a_bad_switch_value_is_one_line(monkeypatch):
    monkeypatch.setenv(allocator.ENV_VAR, "yes")
    with pytest.raises(ValueError, match=r"^VITMIX_KEEP_FREED_MEMORY='yes' is not understood; "
                                         r"expected 1 \(on\) or 0 \(off\)$"):
        allocator.keep_freed_memory()
