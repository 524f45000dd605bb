"""`feda2v data esc50` against a local HTTP server serving a small ESC-50-shaped archive."""

import functools
import http.server
import io
import threading
import zipfile

import pytest

from feda2v.cli import main
from feda2v.data import datasets


@pytest.fixture
def archive_server(tmp_path, demo_data):
    """Serve a zip laid out like the official archive (ESC-50-master/...) on 127.0.0.1."""
    import os

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for folder in ("meta", "audio"):
            for name in sorted(os.listdir(os.path.join(demo_data, folder))):
                zf.write(os.path.join(demo_data, folder, name), f"ESC-50-master/{folder}/{name}")
    served = tmp_path / "served"
    served.mkdir()
    (served / "master.zip").write_bytes(buf.getvalue())
    (served / "broken.zip").write_bytes(b"not a zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_unpacks_the_esc50_layout(archive_server, tmp_path, demo_data):
    out = tmp_path / "ESC-50"
    main(["data", "esc50", "--out", str(out), "--url", f"{archive_server}/master.zip",
          "--no-verify"])
    items = datasets.read_esc50(str(out), [1, 2, 3, 4], [5])
    assert len(items) == len(datasets.read_esc50(demo_data, [1, 2, 3, 4], [5])) == 80
    assert all((out / "audio" / i.uri.rsplit("/", 1)[1]).exists() for i in items)
    # a second call leaves the existing dataset alone
    (out / "audio" / "marker").write_text("kept")
    main(["data", "esc50", "--out", str(out), "--url", f"{archive_server}/master.zip",
          "--no-verify"])
    assert (out / "audio" / "marker").read_text() == "kept"


def test_bad_archive_and_checksum_are_named(archive_server, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["data", "esc50", "--out", str(tmp_path / "a"), "--url", f"{archive_server}/broken.zip",
              "--no-verify"])
    assert "broken.zip: not a zip archive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "esc50", "--out", str(tmp_path / "b"), "--url",
              f"{archive_server}/master.zip", "--sha256", "00"])
    assert "sha256 is" in capsys.readouterr().err
    assert not (tmp_path / "b" / "meta" / "esc50.csv").exists()
