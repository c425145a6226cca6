"""Tests for minisolo.data.subset against a local HTTP server (127.0.0.1 only).

The server serves an annotations zip built from ../shared/coco-mini and its val2017 images,
supports ``Range`` requests, and can misbehave on demand: drop the connection part-way
through the zip, answer garbage bytes for an image, or ignore ``Range``.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from minisolo.data import (
    CocoInstances,
    DataError,
    DownloadError,
    build_coco_subset,
    download_file,
    read_image_ids,
)

COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "coco-mini"
ZIP_PATH = "/annotations/annotations_trainval2017.zip"
FAST = {"backoff": 0.01, "timeout": 10, "progress": False, "workers": 4}


def _need_coco_mini() -> Path:
    if not (COCO_MINI / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"../shared/coco-mini not found at {COCO_MINI}; subset tests skipped")
    return COCO_MINI


class _Server:
    """State shared with the request handler; tests flip the switches."""

    def __init__(self, zip_bytes: bytes):
        self.zip_bytes = zip_bytes
        self.drop_zip_after: int | None = None  # first zip request: close after N bytes
        self.ignore_range = False
        self.garbage_once: set[str] = set()  # paths answered with garbage the next time
        self.garbage_always: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()
        self.url = ""

    def count(self, path: str) -> int:
        return sum(p == path for p, _ in self.requests)


def _handler(state: _Server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            with state.lock:
                state.requests.append((self.path, rng))
                first = state.count(self.path) == 1
            if self.path == ZIP_PATH:
                body = state.zip_bytes
            elif self.path.startswith("/val2017/"):
                file = COCO_MINI / "val2017" / Path(self.path).name
                if not file.is_file():
                    self.send_error(404)
                    return
                body = file.read_bytes()
                with state.lock:
                    garbage = self.path in state.garbage_always | state.garbage_once
                    state.garbage_once.discard(self.path)
                if garbage:
                    body = b"<html>not an image</html>" * 20
            else:
                self.send_error(404)
                return

            start = 0
            if rng and not state.ignore_range:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            if self.path == ZIP_PATH and first and state.drop_zip_after is not None:
                # promise everything, send part of it, hang up
                self.wfile.write(chunk[: state.drop_zip_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(chunk)

    return Handler


@pytest.fixture(scope="module")
def data_zip_bytes():
    root = _need_coco_mini()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(
            root / "annotations" / "instances_val2017.json", "annotations/instances_val2017.json"
        )
    return buf.getvalue()


@pytest.fixture()
def data_server(data_zip_bytes):
    state = _Server(data_zip_bytes)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _build(server: _Server, out: Path, **kw):
    args = {
        "split": "val2017",
        "num_images": 5,
        "base_url": server.url,
        "annotations_md5": _md5(server.zip_bytes),
        **FAST,
    }
    args.update(kw)
    return build_coco_subset(out, **args)


# --------------------------------------------------------------------------------------------


def test_full_build_from_server(data_server, tmp_path):
    out = _build(data_server, tmp_path / "sub", categories=["person", "dog"])
    data = json.loads((out / "annotations" / "instances_val2017.json").read_text())
    assert len(data["images"]) == 5
    assert [c["name"] for c in data["categories"]] == ["person", "dog"]
    ids = {im["id"] for im in data["images"]}
    assert {a["image_id"] for a in data["annotations"]} <= ids
    assert {a["category_id"] for a in data["annotations"]} <= {1, 18}
    for im in data["images"]:  # every image has one of the chosen categories
        assert any(a["image_id"] == im["id"] for a in data["annotations"])
        # host rewritten: the image came from our server, by its coco_url path
        assert (f"/val2017/{im['file_name']}", None) in data_server.requests
        with Image.open(out / "val2017" / im["file_name"]) as f:
            f.load()
            assert f.size == (im["width"], im["height"])
    assert (out / ".cache" / "annotations_trainval2017.zip").is_file()
    ds = CocoInstances(out, "val2017")
    assert len(ds) == 5 and ds.class_names == ["person", "dog"]
    image, target = ds[0]
    assert image.shape[0] == 3 and target["labels"].max() <= 1

    # a second build reuses the cached zip (no new zip request) and is deterministic
    n_zip = data_server.count(ZIP_PATH)
    again = _build(
        data_server, tmp_path / "again", categories=["person", "dog"], cache_dir=out / ".cache"
    )
    assert data_server.count(ZIP_PATH) == n_zip
    data2 = json.loads((again / "annotations" / "instances_val2017.json").read_text())
    assert data2 == data
    other = _build(
        data_server,
        tmp_path / "other",
        categories=["person", "dog"],
        seed=1,
        cache_dir=out / ".cache",
    )
    data3 = json.loads((other / "annotations" / "instances_val2017.json").read_text())
    assert {im["id"] for im in data3["images"]} != ids


def test_all_categories_by_id_and_unknown_name(data_server, tmp_path):
    out = _build(data_server, tmp_path / "all", num_images=3)
    data = json.loads((out / "annotations" / "instances_val2017.json").read_text())
    assert len(data["categories"]) == 80 and len(data["images"]) == 3
    by_id = _build(
        data_server, tmp_path / "ids", num_images=2, categories=[18], cache_dir=out / ".cache"
    )
    data = json.loads((by_id / "annotations" / "instances_val2017.json").read_text())
    assert data["categories"] == [{"supercategory": "animal", "id": 18, "name": "dog"}]
    with pytest.raises(ValueError, match="unknown categories.*'unicorn'.*available:.*zebra"):
        _build(data_server, tmp_path / "x", categories=["unicorn"], cache_dir=out / ".cache")


def test_dropped_connection_resumes_from_part_file(data_server, tmp_path):
    size = len(data_server.zip_bytes)
    data_server.drop_zip_after = size // 3
    dest = download_file(
        data_server.url + ZIP_PATH,
        tmp_path / "a.zip",
        md5=_md5(data_server.zip_bytes),
        retries=2,
        backoff=0.01,
        progress=False,
    )
    assert dest.read_bytes() == data_server.zip_bytes
    zip_requests = [r for p, r in data_server.requests if p == ZIP_PATH]
    assert zip_requests == [None, f"bytes={size // 3}-"]  # the second asked only for the rest
    assert not (tmp_path / "a.zip.part").exists()


def test_resume_existing_part_file(data_server, tmp_path):
    have = len(data_server.zip_bytes) // 2
    (tmp_path / "b.zip.part").write_bytes(data_server.zip_bytes[:have])
    dest = download_file(
        data_server.url + ZIP_PATH,
        tmp_path / "b.zip",
        md5=_md5(data_server.zip_bytes),
        progress=False,
    )
    assert dest.read_bytes() == data_server.zip_bytes
    assert data_server.requests == [(ZIP_PATH, f"bytes={have}-")]


def test_complete_part_file_is_verified_not_refetched(data_server, tmp_path):
    (tmp_path / "d.zip.part").write_bytes(data_server.zip_bytes)
    dest = download_file(
        data_server.url + ZIP_PATH,
        tmp_path / "d.zip",
        md5=_md5(data_server.zip_bytes),
        progress=False,
    )
    assert dest.read_bytes() == data_server.zip_bytes
    # the server answered 416 (nothing left to send); the md5 proved the file good
    assert data_server.requests == [(ZIP_PATH, f"bytes={len(data_server.zip_bytes)}-")]


def test_server_ignoring_range_restarts(data_server, tmp_path):
    data_server.ignore_range = True
    (tmp_path / "c.zip.part").write_bytes(b"stale bytes that must not stay in front")
    dest = download_file(
        data_server.url + ZIP_PATH,
        tmp_path / "c.zip",
        md5=_md5(data_server.zip_bytes),
        progress=False,
    )
    assert dest.read_bytes() == data_server.zip_bytes


def test_dropped_connection_during_full_build(data_server, tmp_path):
    data_server.drop_zip_after = 1000
    out = _build(data_server, tmp_path / "sub", num_images=2)
    assert len(CocoInstances(out, "val2017")) == 2
    assert data_server.count(ZIP_PATH) == 2


def test_corrupt_image_is_retried(data_server, tmp_path):
    # find out which images seed 0 picks, then make one of them arrive corrupt once
    first = _build(data_server, tmp_path / "first", num_images=3)
    names = sorted(p.name for p in (first / "val2017").iterdir())
    victim = f"/val2017/{names[1]}"
    data_server.garbage_once.add(victim)
    out = _build(data_server, tmp_path / "second", num_images=3, cache_dir=first / ".cache")
    assert data_server.count(victim) == 3  # once in the first build, twice in the second
    with Image.open(out / "val2017" / names[1]) as f:
        f.load()
    assert len(CocoInstances(out, "val2017", skip_bad=True)) == 3


def test_always_corrupt_image_is_reported(data_server, tmp_path):
    first = _build(data_server, tmp_path / "first", num_images=3)
    names = sorted(p.name for p in (first / "val2017").iterdir())
    victim = f"/val2017/{names[0]}"
    data_server.garbage_always.add(victim)
    cache = first / ".cache"
    with pytest.raises(DownloadError, match=r"1 of 3 images.*not a valid image"):
        _build(data_server, tmp_path / "bad", num_images=3, cache_dir=cache, retries=2)
    assert data_server.count(victim) == 1 + 3  # first build + 1 try and 2 retries
    assert not (tmp_path / "bad" / "annotations" / "instances_val2017.json").exists()
    assert not (tmp_path / "bad" / "val2017" / names[0]).exists()
    # on_error="skip": the subset is written without the bad image
    with pytest.warns(UserWarning, match="left 1 image"):
        out = _build(
            data_server,
            tmp_path / "skip",
            num_images=3,
            cache_dir=cache,
            retries=1,
            on_error="skip",
        )
    ds = CocoInstances(out, "val2017", skip_bad=True)
    assert len(ds) == 2 and ds.skipped_images == {}


def test_md5_mismatch(data_server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"md5 mismatch.*expected 0{32}, got [0-9a-f]{32}"):
        _build(data_server, tmp_path / "sub", cache_dir=cache, annotations_md5="0" * 32)
    # nothing is left that could be mistaken for (or resumed as) a good file
    assert list(cache.iterdir()) == []
    assert not (tmp_path / "sub" / "annotations").exists()
    # with the right checksum the same cache works
    out = _build(data_server, tmp_path / "sub", cache_dir=cache, num_images=2)
    assert len(CocoInstances(out, "val2017")) == 2
    # a cached zip that no longer matches its md5 is downloaded again
    zip_file = cache / "annotations_trainval2017.zip"
    zip_file.write_bytes(b"damaged")
    n = data_server.count(ZIP_PATH)
    download_file(
        data_server.url + ZIP_PATH, zip_file, md5=_md5(data_server.zip_bytes), progress=False
    )
    assert data_server.count(ZIP_PATH) == n + 1
    assert zip_file.read_bytes() == data_server.zip_bytes


def test_http_404_is_not_retried(data_server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(data_server.url + "/nope.zip", tmp_path / "n.zip", progress=False)
    assert data_server.count("/nope.zip") == 1
    assert not (tmp_path / "n.zip").exists()


def test_split_missing_from_zip(data_server, tmp_path):
    with pytest.raises(DataError, match="no annotations/instances_train2017.json.*val2017"):
        _build(data_server, tmp_path / "sub", split="train2017")


def test_build_from_local_coco_root(tmp_path):
    root = _need_coco_mini()
    out = build_coco_subset(
        tmp_path / "local",
        split="train2017",
        num_images=4,
        categories=["person"],
        coco_root=root,
        progress=False,
    )
    data = json.loads((out / "annotations" / "instances_train2017.json").read_text())
    assert len(data["images"]) == 4 and [c["name"] for c in data["categories"]] == ["person"]
    for im in data["images"]:
        src = (root / "train2017" / im["file_name"]).read_bytes()
        assert (out / "train2017" / im["file_name"]).read_bytes() == src
    ds = CocoInstances(out, "train2017")
    assert len(ds) == 4 and ds.num_classes == 1
    assert all(len(ds.load_target(i)["labels"]) >= 1 for i in range(4))
    # asking for more images than exist gives all candidates
    everything = build_coco_subset(
        tmp_path / "all", split="val2017", num_images=10_000, coco_root=root, progress=False
    )
    data = json.loads((everything / "annotations" / "instances_val2017.json").read_text())
    assert len(data["images"]) == len({a["image_id"] for a in data["annotations"]})
    with pytest.raises(DataError, match="instances_test2017.json"):
        build_coco_subset(tmp_path / "t", split="test2017", coco_root=root, progress=False)


# ---- held-out ids and the record of what was selected ----------------------------------------


def _ids(out: Path, split: str = "val2017") -> set[int]:
    data = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
    return {im["id"] for im in data["images"]}


def test_read_image_ids_formats(tmp_path):
    text = tmp_path / "ids.txt"
    text.write_text("# my test set\n139\n\n  285  \n632 # a kitchen\n")
    assert read_image_ids(text) == [139, 285, 632]
    listed = tmp_path / "ids.json"
    listed.write_text("[139, 285]")
    assert read_image_ids(listed) == [139, 285]
    record = tmp_path / "subset_val2017.json"
    record.write_text(json.dumps({"split": "val2017", "image_ids": [7, 8]}))
    assert read_image_ids(record) == [7, 8]
    coco_file = tmp_path / "instances_val2017.json"
    coco_file.write_text(json.dumps({"images": [{"id": 5}, {"id": 6}], "annotations": []}))
    assert read_image_ids(coco_file) == [5, 6]
    bad = tmp_path / "bad.txt"
    bad.write_text("139\nkitchen\n")
    with pytest.raises(DataError, match="bad.txt: image ids must be integers"):
        read_image_ids(bad)
    (tmp_path / "bad.json").write_text('{"id": 3}')
    with pytest.raises(DataError, match="expected a JSON list"):
        read_image_ids(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="image-id file not found"):
        read_image_ids(tmp_path / "missing.txt")


def test_exclude_ids_hold_a_test_set_apart_and_the_record(tmp_path):
    root = _need_coco_mini()
    local = {"split": "val2017", "coco_root": root, "progress": False}
    test_set = build_coco_subset(tmp_path / "coco-test", num_images=10, seed=3, **local)
    record = json.loads((test_set / "subset_val2017.json").read_text())
    held_out = _ids(test_set)
    assert record["image_ids"] == sorted(held_out) and record["num_images"] == 10
    assert record["seed"] == 3 and record["split"] == "val2017"
    assert record["source"] == {"coco_root": str(root.resolve())}
    assert len(record["categories"]) == 80 and record["categories"][0] == {
        "id": 1,
        "name": "person",
    }
    assert record["excluded_ids"] == [] and record["exclude_file"] is None
    all_candidates = record["num_candidates"]

    # the rest, chosen with the test set's own record as the exclusion file
    exclusion = test_set / "subset_val2017.json"
    train = build_coco_subset(
        tmp_path / "coco-train", num_images=10_000, exclude_ids=exclusion, **local
    )
    rest = _ids(train)
    assert not rest & held_out and len(rest) + len(held_out) == all_candidates
    record = json.loads((train / "subset_val2017.json").read_text())
    assert record["exclude_file"] == str(exclusion.resolve())
    assert record["excluded_ids"] == sorted(held_out) and record["excluded_candidates"] == 10
    assert record["num_candidates"] == all_candidates - 10

    # a plain list (Python) gives a disjoint pick too; excluding everything is an error
    picked = build_coco_subset(
        tmp_path / "coco-list", num_images=5, exclude_ids=sorted(held_out), **local
    )
    assert not _ids(picked) & held_out
    with pytest.raises(DataError, match=r"outside the \d+ excluded ids"):
        build_coco_subset(tmp_path / "none", exclude_ids=rest | held_out, **local)


def test_exclude_ids_from_the_command_line(tmp_path, capsys):
    from minisolo import cli

    root = _need_coco_mini()
    first = build_coco_subset(
        tmp_path / "a", split="val2017", num_images=4, coco_root=root, progress=False
    )
    ids_file = tmp_path / "held_out.txt"
    ids_file.write_text("\n".join(str(i) for i in sorted(_ids(first))) + "\n")
    argv = ["data", "coco-subset", "--out", str(tmp_path / "b"), "--coco-root", str(root)]
    assert cli.main([*argv, "--num-images", "6", "--exclude-ids", str(ids_file)]) == 0
    assert "COCO subset written to" in capsys.readouterr().out
    assert len(_ids(tmp_path / "b")) == 6 and not _ids(tmp_path / "b") & _ids(first)
    record = json.loads((tmp_path / "b" / "subset_val2017.json").read_text())
    assert record["exclude_file"] == str(ids_file.resolve())
    missing = ["--out", str(tmp_path / "c"), "--exclude-ids", str(tmp_path / "nope.txt")]
    assert cli.main(["data", "coco-subset", "--coco-root", str(root), *missing]) == 2
    assert "image-id file not found" in capsys.readouterr().err


def test_record_of_a_downloaded_subset(data_server, tmp_path):
    out = _build(data_server, tmp_path / "sub", num_images=3, exclude_ids=[])
    record = json.loads((out / "subset_val2017.json").read_text())
    assert record["source"] == {
        "base_url": data_server.url,
        "annotations_md5": _md5(data_server.zip_bytes),
    }
    assert record["image_ids"] == sorted(_ids(out)) and record["num_images_requested"] == 3
