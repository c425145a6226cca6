"""ImageNet-pretrained ResNet weights (torchvision's files), downloaded once into a cache.

``minisolo weights resnet50`` (or :func:`imagenet_weights`) fetches torchvision's published
file into ``data/weights/`` (``$MINISOLO_DATA/weights`` when that is set), with a progress
bar, resuming an interrupted download and checking its hash. ``minisolo train
--backbone-weights imagenet`` then loads the file for the config's ResNet depth (and fetches
it first if it is not cached).

torchvision names each file after its SHA-256: the 8 hex digits in
``resnet50-0676ba61.pth`` are the first 8 of the file's SHA-256 (torchvision's
``check_hash`` convention), so that prefix is what we verify. A file that torch itself
downloaded before (``~/.cache/torch/hub/checkpoints/``) is used as it is.

The weights fit the full-width ResNets (64 stem channels: the ``paper`` presets); the
``tiny`` presets use a half-width ResNet-18 that trains from scratch.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from .data.subset import DownloadError, download_file, file_hash

#: Where torchvision publishes its weights.
TORCHVISION_URL = "https://download.pytorch.org/models"
#: Set this environment variable to download from elsewhere (a mirror, or a test server).
URL_ENV = "MINISOLO_WEIGHTS_URL"
#: ResNet name -> torchvision's ImageNet file (IMAGENET1K_V1, the weights SOLO started from).
IMAGENET_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
}
#: File sizes as torchvision's documentation lists them (MiB), for messages.
SIZES_MB = {"resnet18": 44.7, "resnet34": 83.3, "resnet50": 97.8}
#: The argument of ``--backbone-weights`` that means "torchvision's ImageNet file".
IMAGENET = "imagenet"


def weights_dir() -> Path:
    """The cache folder: ``data_root() / "weights"`` (``data/weights/`` in a checkout)."""
    from .model_cache import data_root  # imported here: model_cache imports the whole engine

    return data_root() / "weights"


def sha256_prefix(file_name: str) -> str:
    """The hash prefix in a torchvision file name: ``resnet50-0676ba61.pth`` -> ``0676ba61``."""
    match = re.search(r"-([0-9a-f]{6,})\.", file_name)
    if match is None:
        raise ValueError(f"{file_name} has no '-<hash>.' part")
    return match.group(1)


def _name(model: str | int) -> str:
    name = f"resnet{model}" if isinstance(model, int) or str(model).isdigit() else str(model)
    if name not in IMAGENET_FILES:
        raise ValueError(
            f"no ImageNet weights for {name!r}: torchvision files are known for "
            f"{', '.join(IMAGENET_FILES)}"
        )
    return name


def _torch_hub_file(file_name: str) -> Path | None:
    """The same file in torch's own download cache, if it is there and its hash is right."""
    import torch.hub

    path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if path.is_file() and file_hash(path, "sha256").startswith(sha256_prefix(file_name)):
        return path
    return None


def cached_weights(model: str | int, folder: str | Path | None = None) -> Path | None:
    """The verified local file of ``model`` (``"resnet50"`` or 50), or None: nothing is
    downloaded. A damaged file in the cache is reported as missing."""
    file_name = IMAGENET_FILES[_name(model)]
    path = Path(folder or weights_dir()) / file_name
    if path.is_file() and file_hash(path, "sha256").startswith(sha256_prefix(file_name)):
        return path
    return _torch_hub_file(file_name)


def imagenet_weights(
    model: str | int,
    *,
    folder: str | Path | None = None,
    base_url: str | None = None,
    progress: bool = True,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> Path:
    """The path of torchvision's ImageNet file for ``model`` (``"resnet18"``, ``34``, ...),
    downloaded into ``folder`` (default :func:`weights_dir`) unless it is there already.

    The download resumes after a dropped connection and its SHA-256 prefix is checked; a file
    with the wrong hash is deleted and :class:`~minisolo.data.DownloadError` names it and the
    expected hash. ``base_url`` (default ``$MINISOLO_WEIGHTS_URL``, else
    ``https://download.pytorch.org/models``) is where ``<base_url>/<file>`` is fetched from.
    """
    name = _name(model)
    file_name = IMAGENET_FILES[name]
    cached = cached_weights(name, folder)
    if cached is not None:
        return cached
    dest = Path(folder or weights_dir()) / file_name
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:  # under torchrun, local rank 0 downloads
        return _wait_for(dest, timeout=30 * 60)
    base_url = base_url or os.environ.get(URL_ENV) or TORCHVISION_URL
    if progress:
        print(f"downloading {file_name} ({SIZES_MB[name]} MB, once) into {dest.parent}")
    return download_file(
        f"{base_url.rstrip('/')}/{file_name}",
        dest,
        sha256=sha256_prefix(file_name),
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        progress=progress,
    )


def _wait_for(path: Path, timeout: float) -> Path:
    """Wait until another process has put ``path`` in place (``os.replace``: all or nothing)."""
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if time.monotonic() > deadline:
            raise DownloadError(f"waited {timeout:.0f} s for {path} from local rank 0; no file")
        time.sleep(1.0)
    return path


def resolve_backbone_weights(weights: str | Path, depth: int, **download: object) -> Path:
    """``"imagenet"`` -> torchvision's ImageNet file for ResNet-``depth`` (downloaded once);
    anything else is a path to a ``.pth`` file and is returned as it is."""
    if str(weights) == IMAGENET:
        return imagenet_weights(depth, **download)  # type: ignore[arg-type]
    return Path(weights)


__all__ = [
    "IMAGENET",
    "IMAGENET_FILES",
    "TORCHVISION_URL",
    "URL_ENV",
    "cached_weights",
    "imagenet_weights",
    "resolve_backbone_weights",
    "sha256_prefix",
    "weights_dir",
]
