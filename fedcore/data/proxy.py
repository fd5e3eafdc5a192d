"""Unlabelled public proxy text for the server's LEFF work (block importance, distillation).

LEFF's paper notes that the proxy domain barely matters; the default is the embedded set of news
headlines. A local file works too: .txt (one text per line) or any table file the data loader reads
(.csv, .jsonl, .json, .parquet) with a ``text`` column. ``server:validation`` takes the texts of the
server's validation split without their labels (this project's option: text of the task's own domain
that the server already holds, never the test split).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedcore.config import SERVER_VALIDATION
from fedcore.data import assets
from fedcore.data.tables import DataError, read_table


class ProxyError(ValueError):
    """The proxy text cannot be read; the message names proxy.name."""


def load_proxy_texts(ref: str, count: int, seed: int, validation_texts: Sequence[str] = ()) -> list[str]:
    """``count`` non-empty texts drawn reproducibly from the proxy source (``validation_texts``: the
    server's validation split, for ``server:validation``)."""
    if ref == SERVER_VALIDATION:
        texts = list(validation_texts)
    elif ref.startswith(assets.EMBEDDED_PREFIX):
        if ref != "embedded:proxy-text":
            raise ProxyError(f"proxy.name: unknown embedded proxy '{ref}'; known: embedded:proxy-text")
        texts = pd.read_csv(assets.asset_path("proxy-text"))["Text"].astype(str).tolist()
    else:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ProxyError(f"proxy.name: file not found: {path}")
        try:
            if path.suffix == ".txt":
                texts = path.read_text(encoding="utf-8", errors="replace").splitlines()
            else:
                texts = read_table(path, "proxy.name")["text"].astype(str).tolist()
        except KeyError:
            raise ProxyError(f"proxy.name: {path} has no 'text' column") from None
        except DataError as exc:
            raise ProxyError(str(exc)) from None
        except OSError as exc:
            raise ProxyError(f"proxy.name: cannot read {path}: {exc}") from None
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        hint = " (set data.validation-fraction > 0)" if ref == SERVER_VALIDATION else ""
        raise ProxyError(f"proxy.name: '{ref}' holds no text{hint}")
    order = np.random.default_rng(seed).permutation(len(texts))[:count]
    return [texts[i] for i in order]
