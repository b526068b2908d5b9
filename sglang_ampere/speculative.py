"""The ``--speculative`` choices that ``launch``, ``plan`` and ``warmup`` share, and the choice a
server runs from SGLang's own ``--speculative-algorithm``.

* ``none``: no speculative decoding;
* ``mtp``: SGLang's EAGLE with the checkpoint's MTP layer (``EAGLE``/``NEXTN``);
* ``dspark``: V4-Flash-0731's DSpark drafter (``DSPARK``).

Importing this module is cheap (the launcher and the JIT cache check read it).
"""

from __future__ import annotations

NONE, MTP, DSPARK = "none", "mtp", "dspark"
CHOICES = (NONE, MTP, DSPARK)


def of_algorithm(algorithm: str | None) -> str:
    """The choice a server with ``--speculative-algorithm algorithm`` runs: ``none`` when it is
    unset, ``dspark`` for DSPARK, ``mtp`` for EAGLE, NEXTN and any other drafting algorithm."""
    algo = (algorithm or "").strip().upper()
    return {"": NONE, "DSPARK": DSPARK}.get(algo, MTP)
