"""Where the classic engine's optional ONNX files come from: a local path, or a file on the
Hugging Face hub written ``hf:OWNER/REPO/PATH/IN/REPO.onnx``.

Serving never downloads: a hub file resolves to the local cache (``HF_HOME``), and a missing
one fails at start-up with the command that fetches it, ``retouch models pull NAME``, which
calls ``pull`` here for the ``classic`` engine's options ``matte_model`` and ``fill_model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retouch.engine.types import EngineLoadError

HUB_PREFIX = "hf:"
FILE_OPTIONS = ("matte_model", "fill_model")


def _hub_parts(option: str, value: str) -> tuple[str, str]:
    parts = value[len(HUB_PREFIX) :].split("/")
    if len(parts) < 3 or not all(parts):
        raise EngineLoadError(
            f"classic option {option!r}: {value!r} is not hf:OWNER/REPO/FILE (for example "
            "hf:someone/u2net-onnx/u2net.onnx) nor a local path"
        )
    return "/".join(parts[:2]), "/".join(parts[2:])


def resolve(option: str, value: str, *, name: str = "classic", download: bool = False) -> Path:
    """The local file for ``value``; ``EngineLoadError`` naming the fix when it is missing."""
    if not value.startswith(HUB_PREFIX):
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise EngineLoadError(f"classic option {option!r}: no file at {path}")
        return path
    repo, filename = _hub_parts(option, value)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise EngineLoadError(
            f"classic option {option!r}: a hub file needs huggingface_hub "
            "(pip install huggingface_hub), or download it and give its path"
        ) from exc
    try:
        return Path(hf_hub_download(repo, filename, local_files_only=not download))
    except Exception as exc:
        if download:
            raise EngineLoadError(
                f"classic option {option!r}: could not download {filename} from {repo}: {exc}"
            ) from exc
        raise EngineLoadError(
            f"classic option {option!r}: {filename} of {repo} is not in the Hugging Face cache "
            f"({type(exc).__name__}); fetch it with: retouch models pull {name}"
        ) from exc


def pull(options: dict[str, Any], *, name: str = "classic") -> list[Path]:
    """Download the hub files named by ``options``; returns every configured file's path."""
    paths = []
    for option in FILE_OPTIONS:
        value = options.get(option)
        if value:
            paths.append(resolve(option, str(value), name=name, download=True))
    return paths
