"""Build a small COCO subset (a few hundred images of chosen categories) for experiments.

Two sources:

* a local COCO copy (``coco_root/annotations/instances_<split>.json`` and
  ``coco_root/<split>/``): the chosen images are copied;
* the internet (nothing local): ``annotations_trainval2017.zip`` (253 MB) is downloaded into a
  cache folder, resumably and md5-checked, the split's JSON is extracted from it, and only the
  chosen images are downloaded, in parallel, each verified by decoding it.

The output is a normal COCO-format folder that :class:`minisolo.data.CocoInstances` reads::

    out_dir/annotations/instances_<split>.json
    out_dir/<split>/<file_name>.jpg
    out_dir/subset_<split>.json      what was selected: image ids, categories, seed, source

``exclude_ids`` keeps chosen images out (a test set held apart: pass its ids, or the other
subset's ``subset_<split>.json``).

Only the standard library (``urllib``) is used for downloading.

Example::

    from minisolo.data import build_coco_subset, CocoInstances
    root = build_coco_subset("data/coco-cats", split="val2017", num_images=200,
                             categories=["cat", "dog"])
    ds = CocoInstances(root, "val2017")
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .coco import DataError

#: Official annotations archive (COCO 2017) and its checksum / size.
ANNOTATIONS_ZIP = "annotations/annotations_trainval2017.zip"
ANNOTATIONS_MD5 = "f4bbac642086de4f52a3fdda2de5fa2c"
ANNOTATIONS_SIZE = 252_907_541

_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, OSError)


class DownloadError(DataError):
    """A download failed for good (after retries), or its checksum is wrong."""


# --------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------


def file_hash(path: str | Path, algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    """Hex digest (``"md5"``, ``"sha256"``, ...) of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks."""
    return file_hash(path, "md5", chunk)


def _hash_problem(path: Path, md5: str | None, sha256: str | None, name: str) -> str | None:
    """None if ``path`` has the expected md5 and SHA-256 (either may be None: not checked),
    else what is wrong, naming the file as ``name``.

    ``sha256`` may be the full 64 hex digits or a prefix of them: torchvision names its files
    ``resnet18-f37072fd.pth`` after the first 8 hex digits of their SHA-256.
    """
    if md5 is not None:
        got = md5sum(path)
        if got != md5.lower():
            return f"md5 mismatch for {name}: expected {md5}, got {got}"
    if sha256 is not None:
        got = file_hash(path, "sha256")
        if not got.startswith(sha256.lower()):
            expected = sha256 if len(sha256) == 64 else f"a SHA-256 starting with {sha256}"
            return f"sha256 mismatch for {name}: expected {expected}, got {got}"
    return None


def _range_start(response) -> int:
    """First byte offset of a response: from ``Content-Range`` on a 206, else 0."""
    m = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range") or "")
    return int(m.group(1)) if response.status == 206 and m else 0


def _total_from_headers(response, start: int) -> int | None:
    """Full file size from ``Content-Range: bytes a-b/total`` or ``Content-Length``."""
    content_range = response.headers.get("Content-Range")
    if content_range:
        m = re.match(r"bytes\s+\d+-\d+/(\d+)", content_range)
        if m:
            return int(m.group(1))
    length = response.headers.get("Content-Length")
    return start + int(length) if length is not None else None


def download_file(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest`` resumably; return ``dest``.

    Bytes go to ``dest + ".part"``. If the connection drops, the next attempt asks the server
    for the rest with an HTTP ``Range: bytes=<have>-`` header and appends (if the server
    ignores the range and answers 200, we start over). An attempt that brings no new bytes
    counts as a failure; after ``retries`` such failures in a row a :class:`DownloadError` is
    raised and the ``.part`` file is kept for next time. When complete, the checksums are
    checked (``md5``, and ``sha256``: the full hex digest or a prefix of it, when given): on
    a mismatch the ``.part`` file is deleted (so it is never resumed or mistaken for a good
    file) and :class:`DownloadError` is raised. Only a verified file is renamed to ``dest``.
    An existing ``dest`` with the right checksums is reused without downloading.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if _hash_problem(dest, md5, sha256, dest.name) is None:
            return dest
        dest.unlink()  # a stale or damaged file: fetch again
    part = dest.with_name(dest.name + ".part")
    failures = 0
    total: int | None = None
    while True:
        have = part.stat().st_size if part.exists() else 0
        if total is not None and have >= total:
            break
        request = urllib.request.Request(url, headers={"User-Agent": "minisolo"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        received = 0
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and _range_start(response) != have:  # Range ignored: start over
                    have = 0
                    part.unlink(missing_ok=True)
                total = _total_from_headers(response, have)
                with (
                    open(part, "ab") as f,
                    tqdm(
                        total=total,
                        initial=have,
                        unit="B",
                        unit_scale=True,
                        desc=dest.name,
                        disable=not progress,
                    ) as bar,
                ):
                    while block := response.read(chunk_size):
                        f.write(block)
                        received += len(block)
                        bar.update(len(block))
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # "range not satisfiable": we already have it all
                total = have
                break
            if 400 <= err.code < 500:  # not found, forbidden, ...: retrying will not help
                raise DownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}") from err
            failures += 1
            last_error: Exception = err
        except _NETWORK_ERRORS as err:
            last_error = err
            failures = 0 if received else failures + 1
        else:
            if total is None or have + received >= total:
                total = have + received
                break
            # the connection closed early: resume (if bytes came, the failure count restarts)
            last_error = ConnectionError(f"connection closed after {have + received} bytes")
            failures = 0 if received else failures + 1
        if failures > retries:
            raise DownloadError(
                f"cannot download {url} after {retries} retries: {last_error}; "
                f"partial data kept in {part} for the next attempt"
            )
        time.sleep(backoff * 2 ** max(failures - 1, 0))

    problem = _hash_problem(part, md5, sha256, dest.name)
    if problem is not None:
        part.unlink()
        raise DownloadError(
            f"{problem} (from {url}); the downloaded file was "
            "deleted (a proxy or captive portal may have answered instead of the server)"
        )
    os.replace(part, dest)
    return dest


def _write_json_atomic(path: Path, data: object, indent: int | None = None) -> None:
    """Write ``data`` as JSON to ``path`` via a ``.part`` file (never half-written)."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=indent), encoding="utf-8")
    os.replace(tmp, path)


def _rewrite_host(url: str, base_url: str) -> str:
    """Keep the path of ``url`` but take scheme and host from ``base_url``."""
    path = urllib.parse.urlsplit(url).path
    return base_url.rstrip("/") + path


def _fetch_image(
    url: str, dest: Path, width: int, height: int, retries: int, backoff: float, timeout: float
) -> str | None:
    """Download one image, check that it decodes at the expected size; None or an error."""
    if dest.exists() and _image_ok(dest.read_bytes(), width, height) is None:
        return None  # already there from an earlier, interrupted build
    problem = "not tried"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "minisolo"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as err:
            problem = f"HTTP {err.code} {err.reason}"
            if 400 <= err.code < 500 and err.code != 429:
                break
            continue
        except _NETWORK_ERRORS as err:
            problem = f"{type(err).__name__}: {err}"
            continue
        problem = _image_ok(data, width, height)
        if problem is None:
            tmp = dest.with_name(dest.name + ".part")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
            return None
    return f"{url}: {problem}"


def _image_ok(data: bytes, width: int, height: int) -> str | None:
    """None if ``data`` decodes to a ``width x height`` image, else what is wrong."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            size = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"not a valid image ({err})"
    if size != (width, height):
        return f"image is {size[0]}x{size[1]} (w x h), expected {width}x{height}"
    return None


# --------------------------------------------------------------------------------------------
# Annotations
# --------------------------------------------------------------------------------------------


def _annotations_from_zip(
    split: str,
    cache: Path,
    base_url: str,
    md5: str | None,
    retries: int,
    backoff: float,
    timeout: float,
    progress: bool,
) -> Path:
    """Download (once) the annotations zip into ``cache`` and extract the split's JSON."""
    json_path = cache / "annotations" / f"instances_{split}.json"
    if json_path.exists():
        return json_path
    zip_path = download_file(
        f"{base_url.rstrip('/')}/{ANNOTATIONS_ZIP}",
        cache / Path(ANNOTATIONS_ZIP).name,
        md5=md5,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        progress=progress,
    )
    member = f"annotations/instances_{split}.json"
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        if member not in names:
            have = [n for n in names if "instances_" in n]
            raise DataError(f"{zip_path} has no {member}; it has: {', '.join(have) or names}")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = json_path.with_name(json_path.name + ".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, json_path)
    return json_path


def _resolve_categories(categories: Sequence[str | int] | None, all_cats: list[dict]) -> list[dict]:
    """Category names or ids -> category records (all of them when ``categories`` is None)."""
    if categories is None:
        return list(all_cats)
    if isinstance(categories, (str, int)):
        categories = [categories]
    by_id = {c["id"]: c for c in all_cats}
    by_name = {c["name"]: c for c in all_cats}
    chosen, unknown = [], []
    for c in categories:
        rec = by_name.get(c) if isinstance(c, str) else by_id.get(int(c))
        if rec is None:
            unknown.append(c)
        elif rec not in chosen:
            chosen.append(rec)
    if unknown:
        names = ", ".join(sorted(by_name))
        raise ValueError(f"unknown categories {unknown}; available: {names}")
    return sorted(chosen, key=lambda c: c["id"])


def read_image_ids(path: str | Path) -> list[int]:
    """Image ids from a file, to hold them out of a subset (e.g. a test set kept apart).

    Accepted: a text file with one id per line (blank lines and ``#`` comments are skipped),
    a JSON list of ids, or a JSON object with ``"image_ids"`` (the ``subset_<split>.json``
    record a build writes) or ``"images"`` (a COCO annotation file): so a subset's own files
    can be passed to keep the next subset disjoint from it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image-id file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from err
        if isinstance(data, dict) and "image_ids" in data:
            data = data["image_ids"]
        elif isinstance(data, dict) and "images" in data:
            data = [im["id"] for im in data["images"]]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of image ids")
        items = data
    else:
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        items = [line for line in lines if line]
    try:
        return [int(i) for i in items]
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: image ids must be integers ({err})") from err


# --------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------


def build_coco_subset(
    out_dir: str | Path,
    *,
    split: str = "val2017",
    num_images: int = 100,
    categories: Sequence[str | int] | None = None,
    seed: int = 0,
    coco_root: str | Path | None = None,
    base_url: str = "http://images.cocodataset.org",
    workers: int = 8,
    retries: int = 3,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    annotations_md5: str | None = ANNOTATIONS_MD5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    on_error: str = "raise",
    exclude_ids: Iterable[int] | str | Path | None = None,
) -> Path:
    """Write a COCO-format subset of ``split`` to ``out_dir`` and return ``out_dir``.

    Args:
        split: ``"val2017"`` or ``"train2017"``.
        num_images: how many images to pick (all candidates if fewer exist).
        categories: category names or ids to keep (``None``: all 80). Candidate images are
            those with at least one annotation of these categories; only their annotations
            and these categories are written.
        seed: the random pick is ``numpy.random.default_rng(seed)`` over the sorted
            candidate ids, so the same arguments give the same subset.
        coco_root: a local COCO folder; if given, nothing is downloaded.
        base_url: where to download from; image ``coco_url`` hosts are rewritten to it.
        cache_dir: where the annotations zip goes (default ``out_dir/.cache``).
        annotations_md5: expected md5 of the zip (``None`` skips the check).
        on_error: ``"raise"`` (default): images that still fail after ``retries`` raise
            :class:`DownloadError` listing them (downloaded images are kept, so a re-run only
            fetches the rest); ``"skip"``: leave them out of the subset with a warning.
        exclude_ids: image ids never to pick (e.g. a test set held apart), or a file of them
            (see :func:`read_image_ids`; another subset's ``subset_<split>.json`` works).

    What was selected (image ids, categories, seed, source, exclusions) is recorded in
    ``out_dir/subset_<split>.json``. The annotation JSON is written last, so its presence
    means the build finished.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    out_dir = Path(out_dir)
    exclude_file = None
    if isinstance(exclude_ids, (str, Path)):
        exclude_file = Path(exclude_ids)
        exclude_ids = read_image_ids(exclude_file)
    excluded = {int(i) for i in exclude_ids or ()}

    # 1. the full annotation file of the split
    if coco_root is not None:
        src_json = Path(coco_root) / "annotations" / f"instances_{split}.json"
        if not src_json.is_file():
            raise DataError(f"no {src_json} (expected a COCO folder at {coco_root})")
    else:
        cache = Path(cache_dir) if cache_dir is not None else out_dir / ".cache"
        src_json = _annotations_from_zip(
            split, cache, base_url, annotations_md5, retries, backoff, timeout, progress
        )
    data = json.loads(src_json.read_text(encoding="utf-8"))

    # 2. choose categories and images
    cats = _resolve_categories(categories, data["categories"])
    cat_ids = {c["id"] for c in cats}
    with_cats = {a["image_id"] for a in data["annotations"] if a["category_id"] in cat_ids}
    candidates = sorted(with_cats - excluded)
    if not candidates:
        held_out = f" outside the {len(excluded)} excluded ids" if excluded else ""
        names = [c["name"] for c in cats]
        raise DataError(f"no image in {src_json}{held_out} has an annotation of {names}")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(candidates), size=min(num_images, len(candidates)), replace=False)
    chosen = {candidates[i] for i in pick}
    images = sorted((im for im in data["images"] if im["id"] in chosen), key=lambda im: im["id"])

    # 3. copy or download the images
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    failed: dict[int, str] = {}
    if coco_root is not None:
        for im in tqdm(images, desc=f"copy {split}", disable=not progress):
            src = Path(coco_root) / split / im["file_name"]
            if not src.is_file():
                failed[im["id"]] = f"{src}: file not found"
                continue
            dst = image_dir / im["file_name"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    else:

        def fetch(im: dict) -> str | None:
            url = im.get("coco_url") or f"/{split}/{im['file_name']}"
            dst = image_dir / im["file_name"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            return _fetch_image(
                _rewrite_host(url, base_url),
                dst,
                int(im["width"]),
                int(im["height"]),
                retries,
                backoff,
                timeout,
            )

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = pool.map(fetch, images)
            for im, problem in tqdm(
                zip(images, results, strict=True),
                total=len(images),
                desc=f"download {split}",
                disable=not progress,
            ):
                if problem is not None:
                    failed[im["id"]] = problem

    if failed:
        listing = "; ".join(f"image {i}: {p}" for i, p in list(failed.items())[:10])
        if on_error == "raise":
            raise DownloadError(
                f"{len(failed)} of {len(images)} images could not be fetched "
                f"(the others are kept in {image_dir}; re-run to retry): {listing}"
            )
        warnings.warn(f"left {len(failed)} image(s) out of the subset: {listing}", stacklevel=2)
        images = [im for im in images if im["id"] not in failed]

    # 4. the subset's annotation file (written last)
    kept_ids = {im["id"] for im in images}
    subset = {
        "info": data.get("info", {}),
        "licenses": data.get("licenses", []),
        "images": images,
        "annotations": [
            a
            for a in data["annotations"]
            if a["image_id"] in kept_ids and a["category_id"] in cat_ids
        ],
        "categories": cats,
    }
    from .. import __version__

    # what was selected and from what, so a subset can be rebuilt or held apart from
    record = {
        "split": split,
        "image_ids": sorted(kept_ids),
        "num_images": len(kept_ids),
        "num_images_requested": num_images,
        "categories": [{"id": c["id"], "name": c["name"]} for c in cats],
        "seed": seed,
        "source": (
            {"coco_root": str(Path(coco_root).resolve())}
            if coco_root is not None
            else {"base_url": base_url, "annotations_md5": annotations_md5}
        ),
        "annotation_file": str(src_json.resolve()),
        "num_candidates": len(candidates),
        "exclude_file": None if exclude_file is None else str(exclude_file.resolve()),
        "excluded_ids": sorted(excluded),
        "excluded_candidates": len(with_cats & excluded),
        "left_out_after_errors": {str(i): p for i, p in failed.items()},
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "minisolo_version": __version__,
    }
    _write_json_atomic(out_dir / f"subset_{split}.json", record, indent=1)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    _write_json_atomic(out_dir / "annotations" / f"instances_{split}.json", subset)
    return out_dir
