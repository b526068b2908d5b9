"""SGLang general-plugin entry point (group ``sglang.srt.plugins``, name ``sglang_ampere``)."""

from __future__ import annotations

import logging

logger = logging.getLogger("sglang_ampere")


def register() -> None:
    logger.info("sglang_ampere plugin loaded")
