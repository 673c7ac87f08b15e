"""Import kserve without letting it read our command line.

``kserve/__init__.py`` imports ``kserve.model_server``, which runs ``argparse.parse_known_args()`` on
``sys.argv`` at import time (and argparse matches abbreviations: our ``--model`` would set its
``--model_name``). So the first import runs with ``sys.argv`` cut to the program name.
"""

from __future__ import annotations

import sys
from types import ModuleType

from kftune.core.errors import KftuneError


class ServingUnavailable(KftuneError):
    """The ``serve`` extra (kserve) is not installed."""


def kserve_modules() -> ModuleType:
    """The ``kserve`` package, imported with an empty command line the first time."""
    if "kserve" in sys.modules:
        return sys.modules["kserve"]
    saved = sys.argv
    sys.argv = saved[:1] or ["kftune"]
    try:
        import kserve
    except ImportError as exc:
        raise ServingUnavailable(
            f"kftune serve needs the kserve model server ({exc.name or exc}): pip install 'kftune[serve]'") from None
    finally:
        sys.argv = saved
    return kserve
