"""A local stand-in for the Hugging Face hub's HTTP endpoints, enough for moxin and
huggingface_hub to download from it as from huggingface.co:

  GET  /api/models/{org}/{name}/revision/{rev}     -> {"id", "sha", "siblings": [{"rfilename"}]}
  HEAD/GET /{org}/{name}/resolve/{rev}/{file}       -> small files: 200 with ETag = git blob sha1;
                                                       *.safetensors: 302 to /cdn/<sha256> with
                                                       X-Linked-Etag / X-Linked-Size
  GET  /cdn/{sha256}                                -> the bytes (Range -> 206), as http://localhost:port
  every resolve answer carries X-Repo-Commit; a gated repository answers 401 without the token.

Everything it did is in `log` (method, path, headers), so tests can tell what was downloaded.
`cut_next(sha256, after)` makes the next CDN answer for that blob stop after `after` bytes (the
connection closes mid-body); `corrupt(sha256)` serves other bytes than announced.
"""
import hashlib
import http.server
import json
import re
import secrets
import threading
import urllib.parse

from huggingface_hub.utils.sha import git_hash  # the hub's ETag of a file stored in git


class MockHub:
    def __init__(self):
        self.repos = {}      # id -> {"refs": {rev: commit}, "commits": {commit: {file: bytes}}, "token": str|None}
        self.blobs = {}      # sha256 -> bytes
        self.log = []
        self.cuts = {}       # sha256 -> bytes to send before closing
        self.corrupted = set()
        self.renamed = {}    # old id -> new id: resolve answers 307 to the new path, as the hub does
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # The CDN under another host name, as on huggingface.co: clients must not send the token there.
        self.cdn_url = f"http://localhost:{self.server.server_address[1]}/cdn"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    # --- what the hub holds -------------------------------------------------------------------
    def add_commit(self, repo_id, files, revisions=("main",), token=None):
        """Adds a commit holding `files` ({name: bytes}) and points the revisions at it."""
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}, "token": token})
        commit = secrets.token_hex(20)
        repo["commits"][commit] = dict(files)
        for rev in revisions:
            repo["refs"][rev] = commit
        for data in files.values():
            self.blobs[hashlib.sha256(data).hexdigest()] = data
        return commit

    def cut_next(self, sha256, after):
        self.cuts[sha256] = after

    def corrupt(self, sha256):
        self.corrupted.add(sha256)

    def requests(self, kind):
        """Logged requests whose path starts with /api, /cdn or contains /resolve/."""
        return [r for r in self.log if (kind == "resolve" and "/resolve/" in r[1]) or r[1].startswith("/" + kind)]

    # --- HTTP -----------------------------------------------------------------------------------
    def _handle(self, h, head):
        path = urllib.parse.urlsplit(h.path).path
        self.log.append((h.command, path, dict(h.headers)))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
        if m and m.group(1) in self.renamed:
            return self._send(h, 307, b"", {"Location": f"/api/models/{self.renamed[m.group(1)]}/revision/{m.group(2)}"}, head)
        if m and not head:
            return self._model_info(h, m.group(1), urllib.parse.unquote(m.group(2)))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/(.+)", path)
        if m and m.group(1) in self.renamed:
            return self._send(h, 307, b"", {"Location": f"/{self.renamed[m.group(1)]}/resolve/{m.group(2)}"}, head)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._resolve(h, head, m.group(1), urllib.parse.unquote(m.group(2)), urllib.parse.unquote(m.group(3)))
        m = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
        if m and m.group(1) in self.blobs:
            return self._cdn(h, head, m.group(1))
        self._send(h, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Error-Message": "no such path"}, head)

    def _commit(self, h, repo_id, rev, head):
        """The repo's commit for `rev`, or None after answering the error."""
        repo = self.repos.get(repo_id)
        if repo is None:
            self._send(h, 404, b"", {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, head)
            return None
        if repo["token"] and h.headers.get("Authorization") != f"Bearer {repo['token']}":
            self._send(h, 401, b"", {"X-Error-Code": "GatedRepo",
                                     "X-Error-Message": "Access to this model is restricted"}, head)
            return None
        commit = rev if rev in repo["commits"] else repo["refs"].get(rev)
        if commit is None:
            self._send(h, 404, b"", {"X-Error-Code": "RevisionNotFound", "X-Error-Message": f"Invalid rev id: {rev}"}, head)
        return commit

    def _model_info(self, h, repo_id, rev):
        commit = self._commit(h, repo_id, rev, False)
        if commit is None:
            return
        files = self.repos[repo_id]["commits"][commit]
        body = json.dumps({"id": repo_id, "sha": commit,
                           "siblings": [{"rfilename": f} for f in sorted(files)]}).encode()
        self._send(h, 200, body, {"Content-Type": "application/json"}, False)

    def _resolve(self, h, head, repo_id, rev, filename):
        commit = self._commit(h, repo_id, rev, head)
        if commit is None:
            return
        files = self.repos[repo_id]["commits"][commit]
        if filename not in files:
            return self._send(h, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"}, head)
        data = files[filename]
        common = {"X-Repo-Commit": commit}
        if filename.endswith(".safetensors"):  # stored in LFS: redirected to the CDN
            sha = hashlib.sha256(data).hexdigest()
            return self._send(h, 302, b"", {**common, "Location": f"{self.cdn_url}/{sha}",
                                            "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                                            "ETag": f'"{git_hash(b"pointer " + sha.encode())}"'}, head)
        self._send(h, 200, data, {**common, "ETag": f'"{git_hash(data)}"'}, head)

    def _cdn(self, h, head, sha):
        data = self.blobs[sha]
        if sha in self.corrupted:
            data = bytes(b ^ 0x5A for b in data)
        start = 0
        rng = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if rng:
            start = int(rng.group(1))
        headers = {"Accept-Ranges": "bytes"}
        status = 200
        if rng:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        cut = None if head else self.cuts.pop(sha, None)
        if cut is not None:
            # Announce the whole body, send part of it, drop the connection.
            h.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            return
        self._send(h, status, body, headers, head)

    @staticmethod
    def _send(h, status, body, headers, head):
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)
