"""The one Registry class: register, get, build, names; case-insensitive; checked keywords."""
import pytest

from gspdml.errors import ConfigError
from gspdml.registry import Registry, accepted_arguments


def _make():
    reg = Registry("widget", skip_args=("dim",))

    @reg.register("Square")
    class Square:
        def __init__(self, dim, scale=1.0, bias=False):
            self.dim, self.scale, self.bias = dim, scale, bias

    def circle(dim, radius=2):
        return ("circle", dim, radius)

    reg.register("circle", circle)
    return reg, Square


def test_register_get_build_case_insensitive():
    reg, Square = _make()
    assert reg.get("square") is Square and reg["SQUARE"] is Square
    obj = reg.build(" Square ", 3, scale=2.0)
    assert (obj.dim, obj.scale, obj.bias) == (3, 2.0, False)
    assert reg.build("CIRCLE", 4, radius=5) == ("circle", 4, 5)
    assert reg.names() == ["circle", "Square"] and list(reg) == reg.names() and len(reg) == 2
    assert "square" in reg and "triangle" not in reg and 3 not in reg
    assert reg.display_name("square") == "Square"
    assert reg.arguments("square") == ["scale", "bias"]


def test_unknown_name_lists_the_choices():
    reg, _ = _make()
    with pytest.raises(ConfigError, match=r"unknown widget 'triangle'; valid choices are: circle, Square"):
        reg.get("triangle")


def test_unknown_keyword_names_component_and_accepted():
    reg, _ = _make()
    with pytest.raises(ConfigError, match=r"widget 'Square' does not accept argument\(s\) colour, size; "
                                          r"accepted arguments: scale, bias"):
        reg.build("square", 3, size=1, colour="red")
    losses = Registry("loss", noun="setting")
    losses.register("MS", lambda alpha=2.0: alpha)
    with pytest.raises(ConfigError, match=r"loss 'MS' does not accept setting\(s\) margin; accepted settings: alpha"):
        losses.build("ms", margin=0.1)


def test_taken_name_needs_replace():
    reg, Square = _make()
    reg.register("square", Square)  # the same object again is fine (module reload)
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("square", lambda dim: None)
    reg.register("square", lambda dim: "new", replace=True)
    assert reg.build("square", 1) == "new"
    reg.unregister("square")
    assert "square" not in reg
    with pytest.raises(ConfigError, match="non-empty"):
        reg.register("  ", Square)


def test_accepted_arguments_kwargs_and_own_declaration():
    assert accepted_arguments(lambda a, **kw: None) is None

    class Declares:
        @classmethod
        def accepted_arguments(cls):
            return ["dim", "x", "y"]

        def __init__(self, *args, **kwargs):
            pass

    assert accepted_arguments(Declares, skip=("dim",)) == ["x", "y"]
