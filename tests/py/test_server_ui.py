"""The chat page of `moxin serve` over plain HTTP: GET / and the files it references, with their
types and cache headers, the API key left to /v1/ only, and --no-ui.

References: the page's source files in src/server/ui (the bytes served must be theirs),
Python's html.parser for what the page references, the registered media types (RFC 9239 for
JavaScript, which browsers require of module scripts) for the Content-Types."""
import html.parser
import http.client
import pathlib

import pytest

from conftest import ROOT, fresh_tiny_model
from test_server import Server, server_built  # noqa: F401 (autouse)

UI_DIR = ROOT / "src" / "server" / "ui"
API_KEY = "ui-test-key"


class References(html.parser.HTMLParser):
    """The same-origin URLs a page loads: scripts, stylesheets, images."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        url = attrs.get("src") if tag in ("script", "img") else attrs.get("href") if tag == "link" else None
        if url and not url.startswith("data:"):
            self.urls.append(url)


def module_imports(script):
    """The files an ES module imports ("./x.js")."""
    return [line.split('"')[1] for line in script.splitlines() if line.startswith("import ") and '"' in line]


MEDIA_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fresh_tiny_model(tmp_path_factory, "tiny-ui")[0]


@pytest.fixture(scope="module")
def server(moxin_bin, model):
    s = Server(moxin_bin, model, "--api-key", API_KEY)
    yield s
    s.stop()


def raw(server, path, headers=None):
    """(status, headers, body bytes) of a GET."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def page_files(server):
    """Every URL the page loads, found by following it from / (stylesheets, module imports)."""
    status, _, body = raw(server, "/")
    assert status == 200
    parser = References()
    parser.feed(body.decode())
    urls, seen = list(parser.urls), []
    while urls:
        url = urls.pop()
        if url in seen:
            continue
        seen.append(url)
        if url.endswith(".js"):
            script = (UI_DIR / pathlib.PurePosixPath(url).name).read_text()
            urls += [str(pathlib.PurePosixPath(url).parent / name.removeprefix("./")) for name in module_imports(script)]
    return seen


def test_root_is_the_page_without_the_key(server):
    status, headers, body = raw(server, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert body == (UI_DIR / "index.html").read_bytes()
    assert headers["x-content-type-options"] == "nosniff"
    # Nothing may be loaded from another origin, and no inline script may run.
    policy = headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy and "http" not in policy


def test_every_file_the_page_loads_is_served_with_its_type(server):
    urls = page_files(server)
    assert {"/ui/chat.css", "/ui/chat.js", "/ui/api.js", "/ui/attach.js"} <= set(urls)
    for url in urls:
        status, headers, body = raw(server, url)
        assert status == 200, url
        assert body == (UI_DIR / pathlib.PurePosixPath(url).name).read_bytes(), url
        assert headers["content-type"].split(";")[0] == MEDIA_TYPES[pathlib.PurePosixPath(url).suffix], url
        assert headers["x-content-type-options"] == "nosniff"
    # Every file in the folder is one the page uses: no stale file ships in the binary.
    assert {f"/ui/{f.name}" for f in UI_DIR.iterdir()} == set(urls) | {"/ui/index.html"}


def test_cache_headers_revalidate_with_the_etag(server):
    for path in ("/", "/ui/chat.js"):
        status, headers, _ = raw(server, path)
        assert status == 200 and headers["cache-control"] == "no-cache"
        etag = headers["etag"]
        assert etag.startswith('"') and etag.endswith('"') and len(etag) > 10
        status, headers, body = raw(server, path, {"If-None-Match": etag})
        assert status == 304 and body == b""
        assert headers["etag"] == etag
        status, _, body = raw(server, path, {"If-None-Match": '"something-else"'})
        assert status == 200 and body
    assert raw(server, "/")[1]["etag"] != raw(server, "/ui/chat.js")[1]["etag"]


def test_unknown_ui_files_are_404_in_the_api_shape(server):
    for path in ("/ui/missing.js", "/ui/../server.cpp", "/ui/", "/ui/chat.js/x", "/index.html"):
        status, headers, body = raw(server, path)
        assert status == 404, path
        assert headers["content-type"] == "application/json"
        assert b"unknown route" in body


def test_api_key_still_guards_v1_only(server):
    assert server.request("GET", "/v1/models")[0] == 401
    assert server.request("GET", "/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert server.request("GET", "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})[0] == 200
    for path in ["/"] + page_files(server):
        assert raw(server, path)[0] == 200, path


def test_no_ui_turns_the_page_off(moxin_bin, model):
    s = Server(moxin_bin, model, "--no-ui")
    try:
        for path in ("/", "/ui/chat.js", "/ui/index.html"):
            status, body = s.request("GET", path)
            assert status == 404 and body["error"]["code"] == "unknown_url", path
        assert s.request("GET", "/v1/models")[0] == 200
    finally:
        s.stop()
