"""The alignment-method registry (issue 15): one module per method of Table 6.2, looked up by name."""

from __future__ import annotations

import pytest

from drt.methods import METHOD_REGISTRY, AlignmentMethod, get_method, register_method
from drt.train import METHODS


@pytest.mark.quick
def test_every_method_is_registered_under_its_name_in_table_order() -> None:
    assert tuple(METHOD_REGISTRY) == METHODS
    assert all(get_method(name).name == name for name in METHODS)
    assert [n for n, c in METHOD_REGISTRY.items() if c.needs_domain_labels] == ["m3sda"]
    with pytest.raises(ValueError, match=r"unknown alignment method 'coral'; choose one of \('source_only'"):
        get_method("coral")


@pytest.mark.quick
def test_register_method_refuses_a_taken_or_missing_name() -> None:
    class Impostor(AlignmentMethod):
        name = "mcd"

    class Nameless(AlignmentMethod):
        pass

    with pytest.raises(ValueError, match="the name 'mcd' is taken by MCD"):
        register_method(Impostor)
    with pytest.raises(ValueError, match="Nameless has no `name`"):
        register_method(Nameless)
    assert get_method("mcd").__name__ == "MCD"
