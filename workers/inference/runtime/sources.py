"""Where a registered model's files are: a local directory, or a hub id fetched into a cache.

Only configs, tokenizers and safetensors weights are ever fetched; a checkpoint's ``*.py`` files
(its remote code) and pickled ``*.bin`` weights are not, so nothing in a checkpoint can run.
"""

from __future__ import annotations

import re
from pathlib import Path

from workers.inference.runtime.checkpoint import CheckpointError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_METADATA = ["*.json", "tokenizer.model", "*.txt", "*.tiktoken"]
_WEIGHTS = ["*.safetensors"]


def is_hub_id(source: str) -> bool:
    return bool(_HUB_ID.fullmatch(source)) and not Path(source).exists()


def resolve_source(source: str, *, cache_dir: Path, download: bool, weights: bool = True) -> Path:
    """The local directory of ``source``; hub ids come from ``cache_dir`` (fetched when ``download``)."""
    if not is_hub_id(source):
        return Path(source).expanduser().resolve()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                source,
                cache_dir=cache_dir,
                allow_patterns=_METADATA + (_WEIGHTS if weights else []),
                local_files_only=not download,
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        how = "downloading failed" if download else "it is not in the cache and VLMQ_HUB_DOWNLOAD is off"
        raise CheckpointError(f"hub model {source!r}: {how} ({type(error).__name__}: {error})"[:500]) from None
