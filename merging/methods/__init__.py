"""One module per merge method; importing this package registers them all (merging.registry).
The import order is the order the CLI and the app list them in."""

# isort: off
from merging.methods import weight_averaging, task_arithmetic, ties, tsv_m, iso, cart  # noqa: F401
# isort: on

__all__ = ["cart", "iso", "task_arithmetic", "ties", "tsv_m", "weight_averaging"]
