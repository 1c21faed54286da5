"""The one place ``crema_fast`` imports ``kernels``: checks it is ours, not PyPI's ``kernels``."""

import importlib


def load_kernels(name: str):
    """Import ``kernels.<name>`` after checking that ``kernels`` is crema-fast's package."""
    pkg = importlib.import_module("kernels")
    if getattr(pkg, "CREMA_FAST_KERNELS", None) != "crema-fast":
        raise ImportError(
            f"the 'kernels' package imported from {getattr(pkg, '__file__', '?')} is not crema-fast's "
            "(PyPI has an unrelated package of that name): uninstall it or reinstall crema-fast"
        )
    return importlib.import_module(f"kernels.{name}")
