"""The demo (``gspdml demo``): GAP vs GSP (+L_ZS) on data shipped with the install, with a report."""
from gspdml._lazy import lazy_exports

_EXPORTS = {
    'run_demo': 'gspdml.demo.run',
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
