"""rdfcil: a lab for data-free class-incremental learning (R-DFCIL, ECCV 2022, and baselines)."""

from .version import __version__  # noqa: E402
from .config import Config, resolve  # noqa: E402
from .errors import RdfcilError  # noqa: E402


def run(config=None, resume: bool = True, force: bool = False):
    """Run a configuration (a :class:`Config` or a dict of keys); see :func:`rdfcil.engine.run`."""
    from .engine import run as _run
    return _run(config, resume=resume, force=force)


def collect(root="runs"):
    """Every run folder under ``root`` as one pandas DataFrame; see :mod:`rdfcil.runtable`."""
    from .runtable import collect as _collect
    return _collect(root)


__all__ = ["Config", "RdfcilError", "collect", "resolve", "run", "__version__"]
