"""pipelines/replaced.py: the private hooks' replace-and-restore (ray_connect, ray_lean, ray_data_lean)."""
from __future__ import annotations

import types

import pytest

from pipelines.replaced import replaced


class Owner:
    @staticmethod
    def helper():
        return "ray's"

    def method(self):
        return "ray's"


def test_attributes_are_replaced_inside_and_put_back_as_stored():
    module = types.SimpleNamespace(FLAG=True)
    before = dict(vars(Owner))
    with replaced((module, "FLAG", False), (Owner, "helper", staticmethod(lambda: "ours")),
                  (Owner, "method", lambda self: "ours")):
        assert module.FLAG is False
        assert Owner.helper() == "ours" and Owner().method() == "ours"
    assert module.FLAG is True
    # the very objects stored on the class, descriptors included (getattr would unwrap a staticmethod)
    assert all(vars(Owner)[name] is before[name] for name in ("helper", "method"))
    assert isinstance(vars(Owner)["helper"], staticmethod)


def test_they_are_put_back_when_the_block_raises():
    module = types.SimpleNamespace(FLAG=True)
    with pytest.raises(RuntimeError):
        with replaced((module, "FLAG", False)):
            raise RuntimeError("the call failed")
    assert module.FLAG is True


def test_nothing_is_replaced_when_one_name_is_not_the_owners_own():
    class Child(Owner):
        pass

    module = types.SimpleNamespace(FLAG=True)
    with pytest.raises(KeyError):  # an inherited attribute: there is nothing of Child's to put back
        with replaced((module, "FLAG", False), (Child, "helper", staticmethod(lambda: "ours"))):
            pass
    assert module.FLAG is True and "helper" not in vars(Child)
