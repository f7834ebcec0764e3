#!/usr/bin/env python3
"""The flask conformance set: one table of requests, answered by the same user
functions (conformance_functions.py) under the runtime's flask shim and under
real Flask, and compared: status, body and the headers that matter.

Both sides go through the real runtime (../server.py, started as Fusion starts
it, listening on a Unix socket as in a container): the shim side specializes a
package directory holding only the functions; the Flask side the same
directory plus links to this interpreter's installed flask, werkzeug and their
dependencies, as a package that vendors Flask (or was built with it in its
requirements) brings them. The runtime must then serve through that Flask.

Where the shim knowingly differs, the case names the fields that differ and
why (`differs`); such a case still compares every other field, and every such
case must be listed in ../../README.md ("Shim and Flask"), so the differences
stay documented. Any other difference fails.

    python3 flask_conformance.py          # exit 0 when the two agree
    python3 flask_conformance.py -v       # also print every answer

Needs Flask installed for this interpreter (tests/flask_conformance.rs finds
one). Standard library otherwise.
"""

import http.client
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "..", "server.py")
FUNCTIONS = os.path.join(HERE, "conformance_functions.py")
README = os.path.join(HERE, "..", "..", "README.md")

# What a package that vendors Flask carries (Flask 2.2 and 3.x's dependencies).
VENDORED = ("flask", "werkzeug", "jinja2", "markupsafe", "itsdangerous", "click", "blinker")

# Response headers compared (besides those starting with X-).
HEADERS = ("content-type", "content-length", "location", "set-cookie")

BOUNDARY = "fusionboundary"
MULTIPART = (
    "--{b}\r\n"
    'Content-Disposition: form-data; name="field"\r\n\r\n'
    "value one\r\n"
    "--{b}\r\n"
    'Content-Disposition: form-data; name="upload"; filename="notes.txt"\r\n'
    "Content-Type: text/plain\r\n\r\n"
    "file body\r\n"
    "--{b}--\r\n"
).format(b=BOUNDARY)


def req(path, method="GET", headers=None, body=None, chunked=False):
    return {"method": method, "path": path, "headers": headers or {}, "body": body,
            "chunked": chunked}


JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

# The table: (case, request, differs). `differs` maps a compared field
# ("status", "body", or a lower-case header name) to why the shim differs there.
CASES = [
    # -- return values
    ("text", req("/text"), {}),
    ("text_unicode", req("/text_unicode"), {}),
    ("raw_bytes", req("/raw_bytes"), {}),
    ("a_dict", req("/a_dict"), {}),
    ("a_list", req("/a_list"), {}),
    ("nothing", req("/nothing"), {
        "status": "the shim answers an empty 200 for None; Flask refuses it (500)",
        "body": "as status",
        "content-type": "as status",
        "content-length": "as status",
    }),
    ("tuple_status", req("/tuple_status"), {}),
    ("tuple_status_headers", req("/tuple_status_headers"), {}),
    ("tuple_headers", req("/tuple_headers"), {}),
    ("tuple_header_list", req("/tuple_header_list"), {}),
    ("tuple_content_type", req("/tuple_content_type"), {}),
    ("status_string", req("/status_string"), {}),
    ("response_object", req("/response_object"), {}),
    ("response_default", req("/response_default"), {}),
    ("response_subclass", req("/response_subclass"), {}),
    ("response_then_status", req("/response_then_status"), {}),
    ("jsonify_kwargs", req("/jsonify_kwargs"), {}),
    ("jsonify_args", req("/jsonify_args"), {}),
    ("jsonify_status", req("/jsonify_status"), {}),
    ("cookies_set", req("/cookies_set"), {}),
    ("cookies_max_age", req("/cookies_max_age"), {}),
    ("cookie_value_quoting", req("/cookie_value_quoting"), {
        "set-cookie": "a value outside werkzeug's plain set is percent-quoted by the shim; "
                      "werkzeug puts it in double quotes with octal escapes",
    }),
    ("cookies_delete", req("/cookies_delete"), {}),
    ("make_response_args", req("/make_response_args"), {}),
    ("redirect_to", req("/redirect_to"), {}),
    ("redirect_301", req("/redirect_301"), {}),
    ("generator", req("/generator"), {}),
    ("generator_of_ints", req("/generator_of_ints"), {}),
    ("returns_set", req("/returns_set"), {
        "body": "as raise_error", "content-type": "as body", "content-length": "as body"}),
    ("async_function", req("/async_function"), {}),
    ("head", req("/text", method="HEAD"), {}),
    # -- errors
    ("abort_404", req("/abort_404"), {
        "body": "the shim's error pages are plain text ('404 Not Found' and the "
                "description); Flask's are HTML",
        "content-type": "as body",
        "content-length": "as body",
    }),
    ("abort_400_message", req("/abort_400_message"), {
        "body": "as abort_404", "content-type": "as body", "content-length": "as body"}),
    ("abort_with_response", req("/abort_with_response"), {}),
    ("raise_error", req("/raise_error"), {
        "body": "the shim's is plain text pointing at the log, Flask's an HTML page; "
                "neither names the exception",
        "content-type": "as body",
        "content-length": "as body",
    }),
    ("missing_arg", req("/missing_arg"), {
        "body": "as abort_404", "content-type": "as body", "content-length": "as body"}),
    # -- the request
    ("method_get", req("/echo_method"), {}),
    ("method_post", req("/echo_method", "POST", body=b"x"), {}),
    ("method_put", req("/echo_method", "PUT", body=b""), {}),
    ("method_patch", req("/echo_method", "PATCH", body=b"{}"), {}),
    ("method_delete", req("/echo_method", "DELETE"), {}),
    ("method_options", req("/echo_method", "OPTIONS"), {}),
    ("query", req("/echo_args?q=a&q=b&n=5&empty=&sp=a+b%20c&u=%C3%A9&flag"), {}),
    ("no_query", req("/echo_args"), {}),
    ("json_body", req("/echo_json", "POST", JSON, b'{"a": [1, {"b": null}], "c": "\\u00e9"}'),
     {}),
    ("json_suffix_type", req("/echo_json", "POST", {"Content-Type": "application/vnd.api+json"},
                             b'{"a": 1}'), {}),
    ("json_charset", req("/echo_json", "POST", {"Content-Type": "application/json; charset=utf-8"},
                         b'[1, 2]'), {}),
    ("json_invalid", req("/echo_json", "POST", JSON, b"{not json"), {
        "body": "as abort_404", "content-type": "as body", "content-length": "as body"}),
    ("json_wrong_type", req("/echo_json", "POST", {"Content-Type": "text/plain"}, b'{"a": 1}'), {
        "status": "without force, the shim's get_json() answers None for a non-JSON type "
                  "(Flask 1.x and 2.0 did); Flask 2.1/2.2 answer 400, Flask 2.3+ 415",
        "body": "as status", "content-type": "as status", "content-length": "as status",
    }),
    ("json_silent_invalid", req("/echo_json_silent", "POST", JSON, b"{not json"), {}),
    ("json_force", req("/echo_json_force", "POST", {"Content-Type": "text/plain"}, b'{"a": 1}'),
     {}),
    ("form_urlencoded", req("/echo_form?extra=1", "POST", FORM, b"a=1&a=2&b=x+y&c=%C3%A9"), {}),
    ("form_multipart", req("/echo_form", "POST",
                           {"Content-Type": "multipart/form-data; boundary=" + BOUNDARY},
                           MULTIPART.encode()), {}),
    ("data_text", req("/echo_data", "POST", {"Content-Type": "text/plain; charset=utf-8"},
                      "d\u00e9j\u00e0".encode()), {}),
    ("data_chunked", req("/echo_data", "POST", {"Content-Type": "application/octet-stream"},
                         b"chunk one, chunk two", chunked=True), {}),
    ("data_none", req("/echo_data"), {}),
    ("headers", req("/echo_headers", "POST", {
        "User-Agent": "conformance/1", "X-Custom": "v1", "X-Fission-Params-Id": "42",
        "Content-Type": "text/html; charset=latin-1"}, b"<p>"), {}),
    ("headers_repeated", req("/echo_repeated", headers=[
        ("X-Custom", "a"), ("X-Custom", "b"), ("Accept", "text/html"), ("Accept", "*/*")]), {}),
    ("cookies", req("/echo_cookies", headers={"Cookie": "a=1; b=two%20words; c=\"q\""}), {}),
    ("url", req("/echo_url/sub%20dir/x?k=v", headers={"Host": "example.test:8080"}), {}),
    ("full_path", req("/echo_full_path/a%2Fb?k=v%20w"), {}),
    ("remote", req("/echo_remote", headers={"X-Forwarded-For": "10.0.0.1, 10.0.0.2"}), {}),
    ("g_and_app", req("/g_and_app"), {}),
    ("auth_basic", req("/echo_auth", headers={"Authorization": "Basic YWRhOnMzY3I6ZXQ="}), {}),
    ("auth_none", req("/echo_auth"), {}),
    ("origin", req("/echo_origin", headers={"Origin": "https://app.example"}), {}),
    ("werkzeug_not_found", req("/werkzeug_not_found"), {
        "body": "as abort_404", "content-type": "as body", "content-length": "as body"}),
    ("flask_json", req("/flask_json"), {}),
]


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        http.client.HTTPConnection.__init__(self, "localhost", timeout=30)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self.unix_path)
        self.sock = s


class Runtime:
    """server.py specialized on `package`, listening on a Unix socket."""

    def __init__(self, package, workdir, name, first=None):
        self.sock = os.path.join(workdir, name + ".sock")
        self.log = open(os.path.join(workdir, name + ".log"), "w+")
        env = dict(os.environ, RUNTIME_SOCKET=self.sock, FUSION_NO_STDIN_WATCH="1",
                   PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen([sys.executable, "-S", SERVER], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("the runtime exited: %s" % self.logs())
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the runtime did not listen: %s" % self.logs())
                time.sleep(0.02)
        if first is not None:  # a package that fails to load: the instance stays generic
            status, _, body = self.specialize(first)
            if status != 500:
                raise RuntimeError("specialize %s: %s %s, expected a 500" % (first, status, body))
        status, _, body = self.specialize(package)
        if status != 200:
            raise RuntimeError("specialize failed: %s %s" % (status, body))

    def specialize(self, package):
        return self.request("POST", "/v2/specialize", JSON, json.dumps(
            {"filepath": package, "functionName": "main.main"}).encode())

    def request(self, method, path, headers=None, body=None, chunked=False):
        conn = UnixConnection(self.sock)
        try:
            if chunked:
                conn.request(method, path, body=iter([body[:7], body[7:]]),
                             headers=headers or {}, encode_chunked=True)
            elif isinstance(headers, list):
                # (name, value) pairs: a name may come twice.
                conn.putrequest(method, path)
                for name, value in headers:
                    conn.putheader(name, value)
                conn.endheaders(body)
            else:
                conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.getheaders(), r.read()
        finally:
            conn.close()

    def logs(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# A cookie's Expires computed from Max-Age depends on the second it was made.
FROM_CLOCK = re.compile(r"Expires=(?!Thu, 01 Jan 1970)[^;]*(?=; Max-Age)")


def compared(status, headers, body):
    out = {"status": status, "body": body}
    for k, v in headers:
        lk = k.lower()
        if lk == "set-cookie":
            v = FROM_CLOCK.sub("Expires=<now + Max-Age>", v)
        if lk in HEADERS or lk.startswith("x-"):
            out.setdefault(lk, []).append(v)
    return out


def make_package(root, with_flask, broken=False):
    os.makedirs(root)
    if broken:
        with open(os.path.join(root, "main.py"), "w") as f:
            f.write("import flask\nraise RuntimeError('broken at import')\n")
    else:
        shutil.copy(FUNCTIONS, os.path.join(root, "main.py"))
    if with_flask:
        for name in VENDORED:
            spec = importlib.util.find_spec(name)
            if spec is None:
                continue  # blinker and click are not needed by every Flask
            src = (os.path.dirname(spec.origin) if spec.submodule_search_locations
                   else spec.origin)
            os.symlink(src, os.path.join(root, os.path.basename(src)))
    return root


def main():
    verbose = "-v" in sys.argv[1:]
    try:
        import flask  # noqa: F401 (only to say which one)
        from importlib.metadata import version
        flask_version = version("flask")
    except ImportError:
        print("flask_conformance: %s has no Flask installed" % sys.executable)
        return 2
    readme = open(README, encoding="utf-8").read()
    work = tempfile.mkdtemp(prefix="fusion-flask-conformance-")
    runtimes = []
    failures = []
    try:
        # The shim side first fails to load a package that brings Flask: the
        # shim must be back for the next specialization.
        shim = Runtime(make_package(os.path.join(work, "shim"), False), work, "shim",
                       first=make_package(os.path.join(work, "broken"), True, broken=True))
        runtimes.append(shim)
        real = Runtime(make_package(os.path.join(work, "flask"), True), work, "flask")
        runtimes.append(real)
        print("flask conformance: shim vs Flask %s (%s), %d cases" % (
            flask_version, sys.executable, len(CASES)))
        for rt, want in ((shim, os.path.dirname(os.path.abspath(SERVER))),
                         (real, os.path.join(work, "flask"))):
            status, _, body = rt.request("GET", "/flask_origin")
            try:
                got = json.loads(body)["file"]
            except ValueError:
                got = "nothing: %s %r" % (status, body[:200])
            if os.path.dirname(os.path.dirname(os.path.abspath(got))) != want and \
                    os.path.dirname(os.path.abspath(got)) != want:
                print("  the runtime gave the function %s, not the flask under %s" % (got, want))
                failures.append("flask_origin")
        for name, r, differs in CASES:
            a = compared(*shim.request(**r))
            b = compared(*real.request(**r))
            problems = []
            for field in sorted(set(a) | set(b)):
                if a.get(field) != b.get(field) and field not in differs:
                    problems.append("%s: shim %r, flask %r" % (field, a.get(field), b.get(field)))
            if differs and ("`%s`" % name) not in readme:
                problems.append("a documented exception missing from README.md "
                                "(no `%s` there)" % name)
            mark = "FAIL" if problems else ("ok*" if differs else "ok")
            print("  %-22s %s %s" % (name, mark, r["method"] + " " + r["path"]))
            if verbose or problems:
                print("      shim:  %r\n      flask: %r" % (a, b))
            for p in problems:
                print("      " + p)
            if problems:
                failures.append(name)
    finally:
        for rt in runtimes:
            rt.stop()
        if failures:
            for rt, label in zip(runtimes, ("shim", "flask")):
                print("---- %s runtime log\n%s" % (label, rt.logs() if not rt.log.closed
                                                  else open(rt.log.name).read()))
        shutil.rmtree(work, ignore_errors=True)
    print("(ok* = equal except for the documented differences)")
    print("%d passed, %d failed" % (len(CASES) + 1 - len(failures), len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
