"""``model_zoo.get(name, trained=True)`` and checkpoint URLs, against a local HTTP server that
serves released-format files: one download into the cache, then none; errors name the URL and
the server's answer, and damaged downloads never stay cached."""

import http.server
import json
import threading
from collections import Counter

import pytest
import torch

from plainmamba import model_zoo
from plainmamba.checkpoint import CheckpointDownloadError, PlainMambaCheckpointer
from plainmamba.model_zoo import table as zoo_table

NAME = "ImageNet/plainmamba_l1_300e.py"


class _Handler(http.server.BaseHTTPRequestHandler):
    root = None
    requests = Counter()
    short = set()  # paths whose Content-Length promises more than is sent

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).requests[self.path] += 1
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        self.send_response(200)
        length = len(data) * 2 if self.path in self.short else len(data)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    root = tmp_path / "served"
    root.mkdir()
    handler = type("Handler", (_Handler,), {"root": root, "requests": Counter(), "short": set()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    monkeypatch.setattr(zoo_table, "RELEASE_URL", base)
    monkeypatch.setenv("DETECTRON2_CACHE", str(tmp_path / "cache"))
    yield root, base, handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def released_l1(fixtures_dir, tmp_path_factory):
    """A file in the released MMClassification layout of PlainMamba-L1 (random values)."""
    keys = json.loads((fixtures_dir / "official_keys.json").read_text())["cls_L1"]
    g = torch.Generator().manual_seed(0)
    state = {
        k: torch.tensor(3) if k.endswith("num_batches_tracked") else torch.randn(*s, generator=g)
        for k, s in keys.items()
    }
    path = tmp_path_factory.mktemp("release") / "l1.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 300}}, path)
    return path


def _cached_files(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())


@pytest.mark.slow
def test_trained_downloads_once_and_matches_the_file(server, released_l1, tmp_path):
    root, _, handler = server
    (root / "l1.pth").write_bytes(released_l1.read_bytes())
    model = model_zoo.get(NAME, trained=True, device="cpu")
    assert not model.training
    assert handler.requests["/l1.pth"] == 1
    assert "l1.pth" in _cached_files(tmp_path)
    again = model_zoo.get(NAME, trained=True, device="cpu")
    assert handler.requests["/l1.pth"] == 1  # served from the cache
    from_disk = model_zoo.get(NAME, weights=str(released_l1), device="cpu")
    for (k, a), b, c in zip(
        model.state_dict().items(), again.state_dict().values(), from_disk.state_dict().values()
    ):
        assert torch.equal(a, b) and torch.equal(a, c), k


def test_server_errors_name_the_url_and_cache_nothing(server, released_l1, tmp_path):
    root, base, handler = server
    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointDownloadError) as info:
        PlainMambaCheckpointer(model).load(base + "missing.pth")
    message = str(info.value)
    assert f"{base}missing.pth: the server answered 404" in message
    assert "tools/convert_official_checkpoint.py" in message

    # A truncated file served as if complete: caught by its missing zip directory.
    data = released_l1.read_bytes()
    (root / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointDownloadError, match="not a complete checkpoint"):
        PlainMambaCheckpointer(model).load(base + "cut.pth")
    assert "cut.pth" not in _cached_files(tmp_path)
    # Fixed on the server: the next request downloads again and succeeds.
    (root / "cut.pth").write_bytes(data)
    classifier = model_zoo.get(NAME, device="cpu")
    PlainMambaCheckpointer(classifier).load(base + "cut.pth")
    assert handler.requests["/cut.pth"] == 2

    # A connection that ends before Content-Length bytes arrived.
    (root / "short.pth").write_bytes(data)
    handler.short.add("/short.pth")
    with pytest.raises(CheckpointDownloadError, match="stopped early"):
        PlainMambaCheckpointer(model).load(base + "short.pth")
    assert "short.pth" not in _cached_files(tmp_path)


def test_offline_message(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_CACHE", str(tmp_path / "cache"))
    url = "http://127.0.0.1:9/nothing-listens-here.pth"  # port 9 (discard) is closed here
    with pytest.raises(CheckpointDownloadError, match="cannot download .* are you offline"):
        PlainMambaCheckpointer(torch.nn.Linear(2, 2)).load(url)
