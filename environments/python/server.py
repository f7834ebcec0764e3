#!/usr/bin/env python3
"""Fusion python runtime: Fission's environment protocol, standard library only.

    GET  /healthz          200 "ok", always
    POST /v2/specialize    {"filepath", "functionName", ...}: load the function
                           (Fusion's "fusionEnvVars": {name: value} set first)
    POST /specialize       v1: load $USERFUNC_DIR/user (default /userfunc/user)
    anything else          the function, once specialized (500 before)

Cold start is what this file is optimised for, so it deliberately avoids
http.server (importing it pulls in email, http.client and ssl: about 35 ms)
and even the `socket` and `threading` wrappers (enum, selectors: about 8 ms).
It speaks HTTP/1.1 itself on top of `_socket`, one thread per connection, with
keep-alive, Content-Length and chunked request bodies, and Expect: 100-continue.
json, importlib and the flask shim (flask.py, next to this file) are imported
by a background thread right after listen(), so that a pooled instance
specializes in about a millisecond.

Python functions take no arguments and read the request through
`from flask import request`; see flask.py and ../README.md. When the package
directory brings a real Flask (vendored, or installed there by a build), that
Flask is used instead of the shim: the function is served through a Flask app
called over WSGI by this same server (see _flask_app).
"""

import os
import sys
import time
import _socket
import _thread

_HERE = os.path.dirname(os.path.abspath(__file__))
# The flask shim must win over any real flask on the interpreter's path; a
# package that brings its own Flask takes this directory off the path (_load).
if not sys.path or sys.path[0] != _HERE:
    sys.path.insert(0, _HERE)

MAX_HEAD = 64 * 1024  # request line + headers
RECV = 256 * 1024

_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    409: "Conflict", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 505: "HTTP Version Not Supported",
}

# The body of a 500 for an exception in the function (the traceback goes to the
# function's log, on stderr).
INTERNAL_ERROR = "500 Internal Server Error: the function raised an exception (see its log)\n"
_NO_BODY = (204, 304)

_shim = None           # the flask shim module, imported at specialization
_userfunc = None       # the entrypoint, set once by a successful specialization
_wsgi = None           # the Flask app serving it when the package brings real Flask
_entry = None          # (filepath, name) for messages
_spec_lock = _thread.allocate_lock()
_local = _thread._local()  # per-thread asyncio loop for `async def` functions


def log(msg):
    try:
        sys.stderr.write("%s\n" % msg)
        sys.stderr.flush()
    except Exception:
        pass


def log_exc(prefix):
    import traceback
    try:
        sys.stderr.write("%s\n%s" % (prefix, traceback.format_exc()))
        sys.stderr.flush()
    except Exception:
        pass


class _Close(Exception):
    """The peer went away, or the request cannot be read: drop the connection."""


class _BadRequest(Exception):
    def __init__(self, status, msg):
        Exception.__init__(self, msg)
        self.status = status


# ---------------------------------------------------------------------------
# HTTP/1.1
# ---------------------------------------------------------------------------

_date_cache = [0, b""]


def _date():
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[1] = time.strftime("Date: %a, %d %b %Y %H:%M:%S GMT\r\n",
                                       time.gmtime(now)).encode()
        _date_cache[0] = now
    return _date_cache[1]


def _clean(s):
    s = str(s)
    if "\r" in s or "\n" in s:
        s = s.replace("\r", " ").replace("\n", " ")
    return s


def _send(sock, status, reason, headers, body, close, head_only=False):
    """Write one complete response with a single sendall when it is small."""
    out = ["HTTP/1.1 %d %s\r\n" % (status, _clean(reason))]
    for k, v in headers:
        lk = k.lower()
        if lk in ("content-length", "connection", "transfer-encoding", "date", "keep-alive"):
            continue
        out.append("%s: %s\r\n" % (_clean(k), _clean(v)))
    if status in _NO_BODY or status < 200:
        body = b""
    else:
        n = len(body)
        if head_only and not n:  # a WSGI app answers HEAD with no body, and its length
            n = next((int(v) for k, v in headers
                      if k.lower() == "content-length" and str(v).isdigit()), 0)
        out.append("Content-Length: %d\r\n" % n)
    if close:
        out.append("Connection: close\r\n")
    out.append("\r\n")
    s = "".join(out)
    try:
        head = s.encode("latin-1")
    except UnicodeEncodeError:
        head = s.encode("utf-8")
    head = head[:-2] + _date() + b"\r\n"
    if head_only or not body:
        sock.sendall(head)
    elif len(body) < 65536:
        sock.sendall(head + bytes(body))
    else:
        sock.sendall(head)
        sock.sendall(body)


def _text(sock, status, text, close, head_only=False):
    _send(sock, status, _REASONS.get(status, "Unknown"),
          [("Content-Type", "text/plain; charset=utf-8")],
          text.encode("utf-8"), close, head_only)


class _Reader:
    __slots__ = ("sock", "buf")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        try:
            c = self.sock.recv(RECV)
        except OSError:
            raise _Close()
        if not c:
            raise _Close()
        self.buf += c

    def head(self):
        """Bytes up to the blank line ending the request head (excluded)."""
        start = 0
        while True:
            buf = self.buf
            if buf[:1] in (b"\r", b"\n"):  # stray CRLFs between requests (RFC 9112 2.2)
                buf = self.buf = buf.lstrip(b"\r\n")
            i = buf.find(b"\r\n\r\n", start)
            if i >= 0:
                self.buf = buf[i + 4:]
                return buf[:i]
            if len(buf) > MAX_HEAD:
                raise _BadRequest(431, "request head too large")
            start = max(0, len(buf) - 3)
            self.fill()

    def line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = self.buf[:i]
                self.buf = self.buf[i + 2:]
                return line
            if len(self.buf) > MAX_HEAD:
                raise _BadRequest(400, "chunk line too long")
            self.fill()

    def read(self, n):
        buf = self.buf
        if len(buf) >= n:
            self.buf = buf[n:]
            return buf[:n]
        parts = [buf]
        have = len(buf)
        self.buf = b""
        sock = self.sock
        while have < n:
            try:
                c = sock.recv(min(n - have, 1 << 20))
            except OSError:
                raise _Close()
            if not c:
                raise _Close()
            parts.append(c)
            have += len(c)
        return b"".join(parts)

    def chunked(self):
        parts = []
        while True:
            line = self.line()
            size = line.split(b";", 1)[0].strip()
            try:
                n = int(size, 16)
            except ValueError:
                raise _BadRequest(400, "bad chunk size")
            if n < 0:
                raise _BadRequest(400, "bad chunk size")
            if n == 0:
                while self.line():  # trailers, up to the blank line
                    pass
                return b"".join(parts)
            parts.append(self.read(n))
            if self.read(2) != b"\r\n":
                raise _BadRequest(400, "bad chunk terminator")


def _serve_conn(fd, addr):
    try:
        sock = _socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return
    try:
        try:
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError:
            pass
        # A Unix socket's peer has no address: the router, on this host.
        remote = addr[0] if isinstance(addr, tuple) else "127.0.0.1"
        rd = _Reader(sock)
        while True:
            try:
                keep = _one_request(sock, rd, remote)
            except _BadRequest as e:
                try:
                    _text(sock, e.status, "%s\n" % e, True)
                except OSError:
                    pass
                return
            if not keep:
                return
    except (_Close, OSError):
        pass
    except BaseException:
        log_exc("connection handler failed")
    finally:
        try:
            sock.close()
        except OSError:
            pass


def _one_request(sock, rd, remote):
    """Read, dispatch and answer one request. Returns whether to keep the connection."""
    head = rd.head().decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if not version.startswith("HTTP/1."):
        raise _BadRequest(505, "unsupported HTTP version")
    headers = []
    hd = {}
    for ln in lines[1:]:
        name, sep, value = ln.partition(":")
        if not sep or not name or name[-1] in " \t":
            raise _BadRequest(400, "malformed header line")
        value = value.strip(" \t")
        headers.append((name, value))
        lname = name.lower()
        if lname in hd:
            hd[lname] = hd[lname] + ("; " if lname == "cookie" else ", ") + value
        else:
            hd[lname] = value

    conn = hd.get("connection", "").lower()
    if version == "HTTP/1.0":
        keep = "keep-alive" in conn
    else:
        keep = "close" not in conn

    # -- body
    te = hd.get("transfer-encoding")
    cl = hd.get("content-length")
    expect = hd.get("expect", "").lower() == "100-continue"
    if te is not None:
        if te.lower().replace(" ", "").split(",")[-1] != "chunked":
            raise _BadRequest(501, "unsupported transfer-encoding")
        if expect and not rd.buf:
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = rd.chunked()
    elif cl is not None:
        if not cl.isdigit():
            raise _BadRequest(400, "bad content-length")
        n = int(cl)
        if expect and n and len(rd.buf) < n:
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = rd.read(n) if n else b""
    else:
        body = b""

    # -- dispatch
    if target.startswith("/"):
        path = target.split("?", 1)[0]
    elif "://" in target:  # absolute-form
        rest = target.split("://", 1)[1]
        i = rest.find("/")
        target = rest[i:] if i >= 0 else "/"
        path = target.split("?", 1)[0]
    else:
        path = target
    head_only = method == "HEAD"

    if path == "/healthz":
        _send(sock, 200, "OK", [("Content-Type", "text/plain; charset=utf-8")], b"ok",
              not keep, head_only)
    elif path == "/v2/specialize" or path == "/specialize":
        if method != "POST":
            _send(sock, 405, "Method Not Allowed",
                  [("Allow", "POST"), ("Content-Type", "text/plain; charset=utf-8")],
                  b"use POST\n", not keep, head_only)
        else:
            status, msg = _specialize(path == "/v2/specialize", body)
            _text(sock, status, msg, not keep)
    elif _userfunc is None:
        _text(sock, 500, "not specialized\n", not keep, head_only)
    else:
        if _wsgi is not None:
            status, reason, rheaders, rbody = _call_wsgi(method, target, path, version, hd,
                                                         body, remote)
        else:
            status, reason, rheaders, rbody = _call(method, target, path, headers, hd, body,
                                                    remote)
        _send(sock, status, reason, rheaders, rbody, not keep, head_only)
    return keep


# ---------------------------------------------------------------------------
# Specialization
# ---------------------------------------------------------------------------

def _specialize(v2, body):
    global _shim, _userfunc, _entry, _wsgi
    if v2:
        import json
        try:
            info = json.loads(body or b"{}")
        except ValueError as e:
            return 500, "specialize: request body is not JSON: %s\n" % e
        if not isinstance(info, dict):
            return 500, "specialize: request body must be a JSON object\n"
        filepath = info.get("filepath")
        name = info.get("functionName") or ""
        if not isinstance(filepath, str) or not filepath:
            return 500, "specialize: filepath is required\n"
        if not isinstance(name, str):
            return 500, "specialize: functionName must be a string\n"
        # Fusion's extension: the function's environment variables.
        env_vars = info.get("fusionEnvVars") or {}
        if not isinstance(env_vars, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
            return 500, "specialize: fusionEnvVars must map names to strings\n"
    else:
        filepath = os.path.join(os.environ.get("USERFUNC_DIR") or "/userfunc", "user")
        name = "main"
        env_vars = {}
    with _spec_lock:
        if _userfunc is not None:
            return 409, ("already specialized with %s entry %s; an instance is specialized "
                         "only once\n" % _entry)
        t0 = time.perf_counter()
        try:
            if _shim is None:
                import flask
                _shim = flask
            _log_levels_as_fission()
            os.environ.update(env_vars)
            try:
                func, shown, app = _load(filepath, name)
            except ImportError as e:
                # Code that takes from Flask what the shim has not (Fission's
                # image has Flask: its functions need no requirements.txt
                # for render_template): served by this machine's Flask, when
                # there is one.
                if not (_shim_lacks(e) and _system_flask()):
                    raise
                func, shown, app = _load(filepath, name, system_flask=True)
        except BaseException as e:
            log_exc("specialize %s entry %r failed:" % (filepath, name))
            hint = ""
            if _shim_lacks(e):
                hint = (" (Fusion's Flask stand-in has only part of Flask: put Flask in "
                        "the package, requirements.txt: flask)")
            return 500, "specialize %s entry %r failed: %s: %s%s\n" % (
                filepath, name, type(e).__name__, e, hint)
        _entry = (filepath, shown)
        # A Flask app's root: where render_template finds `templates/`.
        _shim._root_path = filepath if os.path.isdir(filepath) else os.path.dirname(filepath)
        _wsgi = app
        _userfunc = func
    log("specialized %s entry %s%s (%.1f ms)" % (
        filepath, shown, " with Flask (%s)" % _flask_dir() if app else "",
        (time.perf_counter() - t0) * 1e3))
    return 200, "specialized\n"


class NeedsFlask(ImportError):
    """What the shim cannot do though the code imported only what it has (an
    app named as the entrypoint): served by Flask itself, as a missing name."""


def _shim_lacks(e):
    """Whether `e` is the import of a name or a module (`flask.views`) the
    shim does not have, or another `NeedsFlask`."""
    if isinstance(e, NeedsFlask):
        return True
    if not isinstance(e, ImportError) or _shim is None \
            or not getattr(_shim, "__version__", "").endswith("fusion.shim"):
        return False
    if isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("flask."):
        return "flask" in sys.modules and sys.modules["flask"] is _shim
    return "from 'flask'" in str(e) and os.path.join(_HERE, "") in str(e)


def _system_flask():
    """Whether this interpreter has a Flask of its own (beside the shim)."""
    import importlib.machinery
    _ensure_site()
    return importlib.machinery.PathFinder.find_spec(
        "flask", [p for p in sys.path if p != _HERE]) is not None


def _load(filepath, name, system_flask=False):
    """Import the user's code; returns (callable, displayed entry name, WSGI app or
    None). The app is there when the directory brings its own Flask (a
    `flask` package at its top, vendored or installed there by a build), or
    with `system_flask`, the interpreter's: the shim then steps aside, so
    that the user's `import flask` is that Flask.

    file:       entry = functionName after its last dot ("main" when empty), so
                "main", "hello.main" and "" all mean main().
    directory:  "pkg.mod.func" -> import pkg.mod from the directory, call func;
                "func" (no dot) -> module "main" (main.py), call func;
                "" -> main.main.
    """
    import importlib
    import importlib.util
    import importlib.machinery

    _ensure_site()
    before = set(sys.modules)
    added_path = False
    real_flask = system_flask
    try:
        if system_flask:
            _shim_steps_aside()
        if os.path.isdir(filepath):
            if "." in name:
                modname, funcname = name.rsplit(".", 1)
            else:
                modname, funcname = "main", name or "main"
            if not modname or not funcname:
                raise ValueError("bad functionName %r: expected module.function" % name)
            sys.path.insert(_package_path_index(), filepath)
            added_path = True
            if os.path.isfile(os.path.join(filepath, "flask", "__init__.py")):
                real_flask = True
                _shim_steps_aside()
            importlib.invalidate_caches()
            mod = importlib.import_module(modname)
            shown = "%s.%s" % (modname, funcname)
        elif os.path.isfile(filepath):
            funcname = name.rsplit(".", 1)[-1] if name else "main"
            if not funcname:
                raise ValueError("bad functionName %r" % name)
            # SourceFileLoader: the file need not end in .py (v1: /userfunc/user)
            loader = importlib.machinery.SourceFileLoader("user", filepath)
            spec = importlib.util.spec_from_file_location("user", filepath, loader=loader)
            mod = importlib.util.module_from_spec(spec)
            sys.modules["user"] = mod
            loader.exec_module(mod)
            shown = funcname
        else:
            raise FileNotFoundError("no such file or directory: %s" % filepath)
        func = getattr(mod, funcname, None)
        if func is None:
            raise AttributeError("module %r has no attribute %r" % (mod.__name__, funcname))
        if not real_flask and _shim is not None and isinstance(func, _shim.Flask):
            raise NeedsFlask("entrypoint %r is a Flask application, which only Flask itself"
                             " serves" % funcname)
        if not callable(func):
            raise TypeError("entrypoint %r is a %s, not callable" % (funcname, type(func).__name__))
        root = os.path.abspath(filepath if os.path.isdir(filepath) else os.path.dirname(filepath))
        return func, shown, _flask_app(func, root) if real_flask else None
    except BaseException:
        # Stay generic: forget the user modules the failed attempt imported (not
        # the stdlib ones, nor the shim, which a prewarm may import meanwhile).
        root = os.path.join(os.path.abspath(filepath), "")
        for k in set(sys.modules) - before:
            m = sys.modules.get(k)
            locs = [getattr(m, "__file__", None) or ""] + list(getattr(m, "__path__", None) or ())
            if k == "user" or any(isinstance(p, str) and (p + os.sep).startswith(root)
                                  for p in locs):
                sys.modules.pop(k, None)
        if added_path:
            try:
                sys.path.remove(filepath)
            except ValueError:
                pass
        if real_flask:  # the shim comes back for the next attempt
            if _HERE not in sys.path:
                sys.path.insert(0, _HERE)
            if _shim is not None:
                sys.modules["flask"] = _shim
        raise


def _package_path_index():
    """Where a package directory goes on sys.path: after the standard library,
    which Fission's runtime also puts first (it appends the directory), so a
    package's own `html.py` does not hide `html` from Flask; before
    site-packages, so what a package vendors wins over what the host has."""
    for i, p in enumerate(sys.path):
        if i > 0 and os.path.basename(p.rstrip(os.sep)) in ("site-packages", "dist-packages"):
            return i
    return len(sys.path)


def _shim_steps_aside():
    """Takes the shim off the import path and out of sys.modules (the prewarm
    imported it as `flask`), so that `import flask` finds the package's own."""
    while _HERE in sys.path:
        sys.path.remove(_HERE)
    m = sys.modules.get("flask")
    if m is not None and m is _shim:
        del sys.modules["flask"]


def _flask_app(func, root):
    """The WSGI app that serves `func` through the package's Flask.

    An entrypoint that is itself a Flask app is served as it is (its routes,
    blueprints and error handlers). A function gets an app that hands every
    method and path to it, as Fission's python environment does (a catch-all
    route there; here no routing at all, so no 405 and no slash redirects), and
    Flask makes the response from what it returns. The package directory is
    the app's root, so render_template finds its templates/.
    """
    import flask
    if isinstance(func, flask.Flask):
        return func

    class FunctionApp(flask.Flask):
        def dispatch_request(self, *args, **kwargs):
            rv = func()
            if hasattr(rv, "__await__"):
                rv = _run_coro(rv)
            return rv

    return FunctionApp("fusion", root_path=root, static_folder=None)


def _flask_dir():
    m = sys.modules.get("flask")
    return os.path.dirname(getattr(m, "__file__", None) or "?")


# ---------------------------------------------------------------------------
# Invocation
# ---------------------------------------------------------------------------

def _run_coro(coro):
    loop = getattr(_local, "loop", None)
    if loop is None:
        import asyncio
        loop = _local.loop = asyncio.new_event_loop()
    return loop.run_until_complete(coro)


def _foreign_http_exception(shim, e):
    """The answer of a werkzeug HTTPException from an installed werkzeug (not
    the stand-in's), as Flask gives it: its code and description; else None."""
    code = getattr(e, "code", None)
    if not (isinstance(code, int) and 100 <= code <= 599):
        return None
    if not any(c.__name__ == "HTTPException" and c.__module__.startswith("werkzeug")
               for c in type(e).__mro__):
        return None
    ours = shim.HTTPException(getattr(e, "description", None))
    ours.code = code
    return ours.get_response()


def _call(method, target, path, headers, hd, body, remote):
    shim = _shim
    req = shim.Request(method, target, path, headers, hd, body, remote)
    tok = shim._request_var.set(req)
    try:
        try:
            rv = _userfunc()
            if hasattr(rv, "__await__"):
                rv = _run_coro(rv)
            resp = shim._make_response(rv)
        except shim.HTTPException as e:
            resp = e.get_response()
        except BaseException as e:
            resp = _foreign_http_exception(shim, e)
            if resp is None:
                log_exc("function %s raised:" % _entry[1])
                # As Flask outside debug mode: the caller learns nothing of the
                # exception (its message may hold a secret); the log has it all.
                resp = shim.Response(INTERNAL_ERROR, 500, mimetype="text/plain")
        return resp._wire()
    except BaseException as e:  # a broken Response object
        log_exc("could not build the response:")
        return 500, "Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")], \
            INTERNAL_ERROR.encode("utf-8")
    finally:
        shim._request_var.reset(tok)
        try:
            sys.stdout.flush()
        except Exception:
            pass


def _environ(method, target, path, version, hd, body, remote):
    """The WSGI environ of a request this server has read whole."""
    import io
    from urllib.parse import unquote_to_bytes
    i = target.find("?")
    host = hd.get("host") or "localhost"
    name, sep, port = host.rpartition(":")
    if not sep or not port.isdigit():
        name, port = host, "80"
    env = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": target[i + 1:] if i >= 0 else "",
        "SERVER_NAME": name,
        "SERVER_PORT": port,
        "SERVER_PROTOCOL": version,
        "REMOTE_ADDR": remote,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    for k, v in hd.items():
        if k == "content-type":
            env["CONTENT_TYPE"] = v
        elif k in ("content-length", "transfer-encoding"):
            env["CONTENT_LENGTH"] = str(len(body))  # read whole, de-chunked
        else:
            env["HTTP_" + k.upper().replace("-", "_")] = v
    return env


def _call_wsgi(method, target, path, version, hd, body, remote):
    """Calls the package's Flask app; Flask handles the function's errors itself
    (and logs them to wsgi.errors, our stderr)."""
    chunks = []
    started = []

    def start_response(status, headers, exc_info=None):
        if exc_info and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return chunks.append

    try:
        it = _wsgi(_environ(method, target, path, version, hd, body, remote), start_response)
        try:
            for c in it:
                if c:
                    chunks.append(c)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        status, headers = started
        code, _, reason = status.partition(" ")
        return int(code), reason, headers, b"".join(chunks)
    except BaseException as e:
        log_exc("the Flask app of %s failed:" % _entry[1])
        return 500, "Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")], \
            INTERNAL_ERROR.encode("utf-8")
    finally:
        try:
            sys.stdout.flush()
        except Exception:
            pass


# ---------------------------------------------------------------------------
# Startup
# ---------------------------------------------------------------------------

def _family(host):
    # getaddrinfo() costs ~10 ms here (NSS); numeric addresses do not need it.
    for fam in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(fam, host)
            return fam
        except OSError:
            pass
    return _socket.getaddrinfo(host, None, 0, _socket.SOCK_STREAM)[0][0]


_site_lock = _thread.allocate_lock()
_site_done = False


def _ensure_site():
    """Under `python3 -S` (which saves the site/.pth processing at startup), add
    site-packages now, before any user code is imported."""
    global _site_done
    if _site_done or not sys.flags.no_site:
        return
    with _site_lock:
        if not _site_done:
            import site
            site.main()
            if sys.path[0] != _HERE:  # site.main() may reorder; the shim stays first
                try:
                    sys.path.remove(_HERE)
                except ValueError:
                    pass
                sys.path.insert(0, _HERE)
            _site_done = True


_log_levels_set = False


def _log_levels_as_fission():
    """Fission's runtime sets the root logger to DEBUG (with no handler of its
    own): a function's `logging.info(...)` (which then configures a handler on
    stderr) and `current_app.logger.debug(...)` reach its log there, and here.
    A function's own `logging.basicConfig(...)` still takes effect."""
    global _log_levels_set
    if not _log_levels_set:
        import logging
        logging.getLogger().setLevel(logging.DEBUG)
        _log_levels_set = True


def _prewarm():
    """Import what specialization needs (json, importlib, the flask shim: ~15-20 ms
    since Fusion runs with PYTHONDONTWRITEBYTECODE=1) while the instance idles in
    the pool, so that specializing then takes about a millisecond."""
    global _shim
    try:
        _ensure_site()
        import json  # noqa: F401
        import importlib.util  # noqa: F401
        import importlib.machinery  # noqa: F401
        import flask
        if _shim is None:
            _shim = flask
        _log_levels_as_fission()
    except BaseException:
        log_exc("prewarm failed (specialization will retry the imports):")


def _stdin_closed():
    """Called when stdin is readable: True once it reaches EOF (the parent died)."""
    try:
        return not os.read(0, 65536)
    except BlockingIOError:
        return False
    except OSError:
        return True


def _tune_stack():
    """Under an address-space limit (an environment's memory_mb), the default 8 MiB
    thread stack reservations would allow only a few concurrent connections
    (32 MiB: one). Shrink them to limit/16, but never below 2 MiB: smaller
    stacks segfault on deep C-level recursion (pickle, json, __init__ chains)."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft == resource.RLIM_INFINITY or soft <= 0:
            return
        _thread.stack_size(min(8 << 20, max(2 << 20, (soft // 16) & ~0xFFFF)))
    except Exception:
        pass


_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 40\r\nConnection: close\r\n\r\n"
         b"runtime cannot start a thread (memory?)\n")


def main():
    try:  # print() from functions should reach the log promptly
        sys.stdout.reconfigure(line_buffering=True)
    except Exception:
        pass
    _tune_stack()
    path = os.environ.get("RUNTIME_SOCKET")
    if path:  # a Unix socket only this instance owns (Fusion sets it on its local backends)
        ls = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            os.unlink(path)
        except OSError:
            pass
        ls.bind(path)
        where = path
    else:
        host = os.environ.get("RUNTIME_HOST") or "127.0.0.1"
        port = int(os.environ.get("RUNTIME_PORT") or "8888")
        ls = _socket.socket(_family(host), _socket.SOCK_STREAM)
        ls.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        ls.bind((host, port))
        where = "%s:%d" % (host, port)
    ls.listen(1024)
    log("listening on " + where)
    if os.environ.get("FUSION_NO_PREWARM") != "1":
        try:
            _thread.start_new_thread(_prewarm, ())
        except RuntimeError:
            pass  # specialization does the imports itself

    # One poll loop accepts connections and watches stdin: the Fusion server
    # holds the other end of that pipe, so EOF means it died (even by SIGKILL).
    # No watcher thread: under an address-space limit every thread's stack counts.
    import select
    lfd = ls.fileno()
    poller = select.poll()
    poller.register(lfd, select.POLLIN)
    if os.environ.get("FUSION_NO_STDIN_WATCH") != "1":
        poller.register(0, select.POLLIN)
    while True:
        for fd, ev in poller.poll():
            if fd != lfd:
                if ev & select.POLLNVAL:  # no stdin at all: nothing to watch
                    poller.unregister(fd)
                elif _stdin_closed():
                    os._exit(0)
                continue
            try:
                cfd, addr = ls._accept()
            except OSError as e:
                if e.errno in (24, 23, 12, 105):  # EMFILE, ENFILE, ENOMEM, ENOBUFS
                    time.sleep(0.05)
                continue
            try:
                _thread.start_new_thread(_serve_conn, (cfd, addr))
            except RuntimeError:
                # Out of memory for a thread stack (an address-space limit):
                # answer 503 rather than leave the client hanging.
                log("cannot start a thread for a connection (address-space limit?): 503")
                try:
                    os.write(cfd, _BUSY)
                except OSError:
                    pass
                os.close(cfd)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        os._exit(130)
