"""One module per merge method; importing this package registers them all (merging.registry).

Every module of this package except ``common`` is a method and is imported here, so a new method
is one new file. ``LISTED_FIRST`` fixes the order the CLI and the app list the established
methods in; any other module follows, alphabetically.
"""

import importlib
import pkgutil

LISTED_FIRST = ("weight_averaging", "task_arithmetic", "ties", "tsv_m", "iso", "cart")
NOT_METHODS = ("common",)


def _method_modules() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__)} - set(NOT_METHODS)
    return [n for n in LISTED_FIRST if n in found] + sorted(found - set(LISTED_FIRST))


for _name in _method_modules():
    importlib.import_module(f"{__name__}.{_name}")
