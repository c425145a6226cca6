"""Tests for minisolo.weights (ImageNet ResNet files) against a local HTTP server (127.0.0.1).

Nothing is downloaded from the internet: the server serves small fake ``.pth`` files made with
``torch.save``, and the tests rename torchvision's files after the fakes' SHA-256, the way
torchvision names the real ones (``resnet18-f37072fd.pth``: the first 8 hex digits).
"""

from __future__ import annotations

import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from minisolo import cli, weights
from minisolo.backbone import ResNet, load_torchvision_weights
from minisolo.data import DownloadError, download_file

FAST = {"backoff": 0.01, "timeout": 10, "progress": False}


class _Server:
    """Files to serve by path; ``drop_after[path]``: the first answer stops after N bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.url = ""


def _handler(state: _Server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = int(rng.split("=")[1].split("-")[0]) if rng else 0
            if rng:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            drop = state.drop_after.pop(self.path, None)
            if drop is not None:  # promise everything, send part of it, hang up
                self.wfile.write(chunk[:drop])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(chunk)

    return Handler


@pytest.fixture()
def server():
    state = _Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Caches in tmp_path: the data folder, and torch's own hub folder (never the user's)."""
    monkeypatch.setenv("MINISOLO_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(weights.URL_ENV, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def _pth_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _publish(server: _Server, monkeypatch, name: str, body: bytes, prefix: str | None = None):
    """Serve ``body`` as torchvision's file for ``name``, named after its SHA-256 prefix (or
    after ``prefix``: a name that promises another hash)."""
    prefix = prefix or hashlib.sha256(body).hexdigest()[:8]
    file_name = f"{name}-{prefix}.pth"
    monkeypatch.setitem(weights.IMAGENET_FILES, name, file_name)
    server.files[f"/{file_name}"] = body
    return file_name


TINY = _pth_bytes({"conv1.weight": torch.arange(3 * 4 * 7 * 7.0).reshape(4, 3, 7, 7)})


# --------------------------------------------------------------------------------------------


def test_sha256_prefix_of_torchvision_names():
    assert weights.IMAGENET_FILES == {
        "resnet18": "resnet18-f37072fd.pth",
        "resnet34": "resnet34-b627a593.pth",
        "resnet50": "resnet50-0676ba61.pth",
    }
    assert weights.sha256_prefix("resnet50-0676ba61.pth") == "0676ba61"
    with pytest.raises(ValueError, match="no ImageNet weights for 'resnet101'"):
        weights.imagenet_weights(101)


def test_download_into_data_weights_and_reuse(server, tmp_path, monkeypatch):
    file_name = _publish(server, monkeypatch, "resnet18", TINY)
    monkeypatch.setenv(weights.URL_ENV, server.url)  # the base-URL override, by environment
    path = weights.imagenet_weights(18, **FAST)
    assert path == tmp_path / "data" / "weights" / file_name
    assert path.read_bytes() == TINY
    assert weights.cached_weights("resnet18") == path
    again = weights.imagenet_weights("resnet18", **FAST)  # cached: no new request
    assert again == path and len(server.requests) == 1
    # a damaged cached file is not trusted: it is fetched again
    path.write_bytes(TINY[:100])
    assert weights.cached_weights("resnet18") is None
    assert weights.imagenet_weights("resnet18", **FAST).read_bytes() == TINY
    assert len(server.requests) == 2


def test_dropped_connection_resumes(server, tmp_path, monkeypatch):
    file_name = _publish(server, monkeypatch, "resnet34", TINY)
    server.drop_after[f"/{file_name}"] = len(TINY) // 3
    path = weights.imagenet_weights("resnet34", base_url=server.url, retries=2, **FAST)
    assert path.read_bytes() == TINY
    assert server.requests == [
        (f"/{file_name}", None),
        (f"/{file_name}", f"bytes={len(TINY) // 3}-"),
    ]
    assert not path.with_name(path.name + ".part").exists()


def test_wrong_hash_is_a_clear_error_and_leaves_nothing(server, tmp_path, monkeypatch):
    file_name = _publish(server, monkeypatch, "resnet50", TINY, prefix="0676ba61")
    folder = tmp_path / "data" / "weights"
    with pytest.raises(DownloadError) as info:
        weights.imagenet_weights("resnet50", base_url=server.url, **FAST)
    message = str(info.value)
    assert f"sha256 mismatch for {file_name}" in message
    assert "expected a SHA-256 starting with 0676ba61" in message
    assert hashlib.sha256(TINY).hexdigest() in message  # what came instead
    assert list(folder.iterdir()) == []  # neither the file nor a .part to resume
    assert weights.cached_weights("resnet50") is None


def test_download_file_checks_full_sha256_and_md5(server, tmp_path):
    server.files["/x.pth"] = TINY
    url = server.url + "/x.pth"
    good = hashlib.sha256(TINY).hexdigest()
    path = download_file(url, tmp_path / "x.pth", sha256=good, md5=hashlib.md5(TINY).hexdigest())
    assert path.read_bytes() == TINY
    with pytest.raises(DownloadError, match=f"sha256 mismatch for y.pth: expected {'0' * 64}"):
        download_file(url, tmp_path / "y.pth", sha256="0" * 64, progress=False)
    assert not (tmp_path / "y.pth").exists() and not (tmp_path / "y.pth.part").exists()


def test_file_from_torch_hub_cache_is_used(server, tmp_path, monkeypatch):
    file_name = _publish(server, monkeypatch, "resnet18", TINY)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / file_name).write_bytes(TINY)
    assert weights.imagenet_weights("resnet18", base_url=server.url, **FAST) == hub / file_name
    assert server.requests == []


def _resnet18_file(tmp_path) -> tuple[bytes, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = {
        k: torch.randn(v.shape) if v.is_floating_point() else v
        for k, v in ResNet(18).state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    return _pth_bytes(state), state


def test_imagenet_keyword_downloads_and_loads(server, tmp_path, monkeypatch):
    body, state = _resnet18_file(tmp_path)
    _publish(server, monkeypatch, "resnet18", body)
    monkeypatch.setenv(weights.URL_ENV, server.url)
    net = ResNet(18)
    ignored = load_torchvision_weights(net, "imagenet")  # what the engine calls
    assert sorted(ignored) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert len(server.requests) == 1
    # an explicit path still works, as a str or a Path, and resolves to itself
    cached = weights.cached_weights(18)
    assert weights.resolve_backbone_weights(cached, 18) == cached
    load_torchvision_weights(ResNet(18), str(cached))
    assert len(server.requests) == 1


def test_imagenet_keyword_refuses_the_tiny_width(server, monkeypatch):
    monkeypatch.setenv(weights.URL_ENV, server.url)
    with pytest.raises(ValueError, match="full-width ResNets.*has 32"):
        load_torchvision_weights(ResNet(18, width=32), "imagenet")
    assert server.requests == []  # refused before downloading anything


def test_weights_command(server, tmp_path, monkeypatch, capsys):
    file_name = _publish(server, monkeypatch, "resnet18", TINY)
    assert cli.main(["weights"]) == 0
    assert "not cached" in capsys.readouterr().out
    assert cli.main(["weights", "resnet18", "--base-url", server.url]) == 0
    path = tmp_path / "data" / "weights" / file_name
    assert str(path) in capsys.readouterr().out
    assert cli.main(["weights"]) == 0
    assert f"cached: {path}" in capsys.readouterr().out
    assert cli.main(["weights", "resnet99"]) == 2
    assert "unknown ['resnet99']" in capsys.readouterr().err
    # a missing file on the server is an error message, not a traceback
    monkeypatch.setitem(weights.IMAGENET_FILES, "resnet34", "resnet34-00000000.pth")
    assert cli.main(["weights", "resnet34", "--base-url", server.url]) == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_train_accepts_imagenet_or_a_path():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--data", "d", "--backbone-weights", "imagenet"])
    assert args.backbone_weights == "imagenet"
    args = parser.parse_args(["train", "--data", "d", "--backbone-weights", "w/r50.pth"])
    assert Path(args.backbone_weights) == Path("w/r50.pth")
