"""A small stand-in for Flask, so functions written for Fission's python
environment (`from flask import request`) run unchanged on Fusion.

Not Flask: there is no app, routing or templating. What is here is the part of
the request/response API that functions use: `request`, `Response`,
`jsonify`, `make_response`, `abort`, `redirect`, `current_app`, `g`, and the
HTTP exceptions. The runtime (server.py) binds `request` to the current
request for the duration of each call (a context variable, so concurrent
requests on other threads do not see each other's request).

Standard library only; heavier modules (json, urllib.parse, logging) are
imported on first use.
"""

import sys
from _contextvars import ContextVar

__version__ = "0+fusion.shim"

_request_var = ContextVar("fusion_flask_request", default=None)

_REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created",
    202: "Accepted", 203: "Non-Authoritative Information", 204: "No Content",
    205: "Reset Content", 206: "Partial Content", 207: "Multi-Status",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 409: "Conflict",
    410: "Gone", 411: "Length Required", 412: "Precondition Failed",
    413: "Payload Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
    416: "Range Not Satisfiable", 417: "Expectation Failed", 418: "I'm a teapot",
    421: "Misdirected Request", 422: "Unprocessable Entity", 423: "Locked",
    424: "Failed Dependency", 425: "Too Early", 426: "Upgrade Required",
    428: "Precondition Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 451: "Unavailable For Legal Reasons",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported", 507: "Insufficient Storage",
    511: "Network Authentication Required",
}


class _cached:
    """A lazily computed attribute, stored on the instance after first use."""

    def __init__(self, fn):
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        v = obj.__dict__[self.name] = self.fn(obj)
        return v


# ---------------------------------------------------------------------------
# Exceptions (werkzeug.exceptions)
# ---------------------------------------------------------------------------

class HTTPException(Exception):
    """Raise to answer with `code` (abort(404) raises NotFound)."""

    code = None
    description = None

    def __init__(self, description=None, response=None):
        Exception.__init__(self)
        if description is not None:
            self.description = description
        self.response = response

    @property
    def name(self):
        return _REASONS.get(self.code, "Unknown Error")

    def get_response(self, environ=None, scope=None):
        if self.response is not None:
            return self.response
        code = self.code or 500
        body = "%d %s\n" % (code, self.name)
        if self.description:
            body += "%s\n" % self.description
        return Response(body, code, mimetype="text/plain")

    def __str__(self):
        code = self.code if self.code is not None else "???"
        if self.description:
            return "%s %s: %s" % (code, self.name, self.description)
        return "%s %s" % (code, self.name)

    def __repr__(self):
        return "<%s '%s'>" % (type(self).__name__, self)


class BadRequest(HTTPException):
    code = 400
    description = "The browser (or proxy) sent a request that this server could not understand."


class BadRequestKeyError(BadRequest, KeyError):
    """A missing key in request.args/form/headers/...: a KeyError and a 400."""

    def __init__(self, arg=None, *args, **kwargs):
        BadRequest.__init__(self, *args, **kwargs)
        self.args = () if arg is None else (arg,)
        if arg is not None and "description" not in kwargs and not args:
            self.description = "%s: %r" % (BadRequest.description, arg)

    def __str__(self):
        return HTTPException.__str__(self)


class Unauthorized(HTTPException):
    code = 401


class Forbidden(HTTPException):
    code = 403


class NotFound(HTTPException):
    code = 404


class MethodNotAllowed(HTTPException):
    code = 405


class NotAcceptable(HTTPException):
    code = 406


class RequestTimeout(HTTPException):
    code = 408


class Conflict(HTTPException):
    code = 409


class Gone(HTTPException):
    code = 410


class LengthRequired(HTTPException):
    code = 411


class PreconditionFailed(HTTPException):
    code = 412


class RequestEntityTooLarge(HTTPException):
    code = 413


class UnsupportedMediaType(HTTPException):
    code = 415


class UnprocessableEntity(HTTPException):
    code = 422


class TooManyRequests(HTTPException):
    code = 429


class InternalServerError(HTTPException):
    code = 500


class NotImplemented(HTTPException):  # noqa: A001 (werkzeug's name)
    code = 501


class BadGateway(HTTPException):
    code = 502


class ServiceUnavailable(HTTPException):
    code = 503


class GatewayTimeout(HTTPException):
    code = 504


_EXCEPTIONS = {c.code: c for c in (
    BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, NotAcceptable,
    RequestTimeout, Conflict, Gone, LengthRequired, PreconditionFailed,
    RequestEntityTooLarge, UnsupportedMediaType, UnprocessableEntity, TooManyRequests,
    InternalServerError, NotImplemented, BadGateway, ServiceUnavailable, GatewayTimeout)}


def abort(status, *args, **kwargs):
    """abort(404), abort(400, "why"), or abort(response)."""
    if isinstance(status, Response):
        raise HTTPException(response=status)
    code = int(status)
    cls = _EXCEPTIONS.get(code)
    if cls is None:
        exc = HTTPException(*args, **kwargs)
        exc.code = code
        raise exc
    raise cls(*args, **kwargs)


# ---------------------------------------------------------------------------
# Data structures (werkzeug.datastructures)
# ---------------------------------------------------------------------------

def _convert(value, type, default):
    if type is None:
        return value
    try:
        return type(value)
    except (ValueError, TypeError):
        return default


class MultiDict(dict):
    """A dict of key -> list of values; indexing and .get() give the first value.

    dict(md) gives first values too; .getlist(key) / .to_dict(flat=False) all of them.
    """

    def __init__(self, mapping=None):
        dict.__init__(self)
        if mapping is None:
            return
        if isinstance(mapping, MultiDict):
            for k, vs in mapping.lists():
                dict.__setitem__(self, k, list(vs))
            return
        if hasattr(mapping, "items"):
            mapping = mapping.items()
        for k, v in mapping:
            if isinstance(v, (list, tuple)) and not isinstance(mapping, list):
                dict.setdefault(self, k, []).extend(v)
            else:
                dict.setdefault(self, k, []).append(v)

    def __getitem__(self, key):
        try:
            vs = dict.__getitem__(self, key)
        except KeyError:
            raise BadRequestKeyError(key)
        if vs:
            return vs[0]
        raise BadRequestKeyError(key)

    def __setitem__(self, key, value):
        dict.__setitem__(self, key, [value])

    def __iter__(self):
        return iter(dict.keys(self))

    def add(self, key, value):
        dict.setdefault(self, key, []).append(value)

    def get(self, key, default=None, type=None):
        try:
            vs = dict.__getitem__(self, key)
        except KeyError:
            return default
        if not vs:
            return default
        return _convert(vs[0], type, default)

    def getlist(self, key, type=None):
        try:
            vs = dict.__getitem__(self, key)
        except KeyError:
            return []
        if type is None:
            return list(vs)
        out = []
        for v in vs:
            try:
                out.append(type(v))
            except (ValueError, TypeError):
                pass
        return out

    def setlist(self, key, values):
        dict.__setitem__(self, key, list(values))

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def keys(self):
        return dict.keys(self)

    def items(self, multi=False):
        for k, vs in dict.items(self):
            if multi:
                for v in vs:
                    yield k, v
            elif vs:
                yield k, vs[0]

    def values(self):
        for vs in dict.values(self):
            if vs:
                yield vs[0]

    def lists(self):
        return iter(dict.items(self))

    def listvalues(self):
        return iter(dict.values(self))

    def pop(self, key, *default):
        try:
            vs = dict.pop(self, key)
        except KeyError:
            if default:
                return default[0]
            raise BadRequestKeyError(key)
        return vs[0] if vs else (default[0] if default else None)

    def to_dict(self, flat=True):
        if flat:
            return dict(self.items())
        return {k: list(vs) for k, vs in dict.items(self)}

    def copy(self):
        return type(self)(self)

    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, list(self.items(multi=True)))


ImmutableMultiDict = MultiDict


class CombinedMultiDict(MultiDict):
    def __init__(self, dicts=None):
        MultiDict.__init__(self)
        for d in dicts or ():
            for k, vs in d.lists():
                dict.setdefault(self, k, []).extend(vs)


class Headers:
    """Case-insensitive, ordered, multi-valued headers (werkzeug.datastructures.Headers).

    Iterating yields (name, value) pairs; dict(headers) gives a plain dict.
    """

    __slots__ = ("_list",)
    _k = staticmethod(str.lower)  # a name as looked up

    def __init__(self, defaults=None):
        self._list = []
        if defaults is not None:
            self.extend(defaults)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self._list[key]
        lk = self._k(key)
        for k, v in self._list:
            if k.lower() == lk:
                return v
        raise BadRequestKeyError(key)

    def get(self, key, default=None, type=None):
        lk = self._k(key)
        for k, v in self._list:
            if k.lower() == lk:
                return _convert(v, type, default)
        return default

    def getlist(self, key, type=None):
        lk = self._k(key)
        out = []
        for k, v in self._list:
            if k.lower() != lk:
                continue
            try:
                out.append(v if type is None else type(v))
            except (ValueError, TypeError):
                pass
        return out

    get_all = getlist

    def __contains__(self, key):
        lk = self._k(key)
        return any(k.lower() == lk for k, _ in self._list)

    has_key = __contains__

    def __iter__(self):
        return iter(self._list)

    def __len__(self):  # and truth: empty headers are false
        return len(self._list)

    def keys(self, lower=False):
        return [k.lower() if lower else k for k, _ in self._list]

    def values(self):
        return [v for _, v in self._list]

    def items(self, lower=False):
        return [(k.lower() if lower else k, v) for k, v in self._list]

    def add(self, _key, _value, **params):
        if params:
            extra = []
            for k, v in params.items():
                k = k.replace("_", "-")
                extra.append(k if v is None else '%s="%s"' % (k, v))
            _value = "; ".join([str(_value)] + extra)
        self._list.append((str(_key), str(_value)))

    def set(self, _key, _value, **params):
        self.remove(_key)
        self.add(_key, _value, **params)

    def __setitem__(self, key, value):
        if isinstance(key, int):
            self._list[key] = value
        else:
            self.set(key, value)

    def remove(self, key):
        lk = key.lower()
        self._list = [(k, v) for k, v in self._list if k.lower() != lk]

    def __delitem__(self, key):
        if isinstance(key, int):
            del self._list[key]
        else:
            self.remove(key)

    def pop(self, key=None, default=None):
        if key is None:
            return self._list.pop()
        if isinstance(key, int):
            return self._list.pop(key)
        v = self.get(key, default)
        self.remove(key)
        return v

    def setdefault(self, key, default):
        if key in self:
            return self[key]
        self.set(key, default)
        return default

    def extend(self, *args, **kwargs):
        for src in args + ((kwargs,) if kwargs else ()):
            if isinstance(src, Headers):
                self._list.extend(src._list)
                continue
            if hasattr(src, "items"):
                src = src.items()
            for k, v in src:
                if isinstance(v, (list, tuple)):
                    for x in v:
                        self.add(k, x)
                else:
                    self.add(k, v)

    def update(self, *args, **kwargs):
        for src in args + ((kwargs,) if kwargs else ()):
            if isinstance(src, Headers):
                src = src._list
            elif hasattr(src, "items"):
                src = src.items()
            seen = set()
            for k, v in src:
                if k.lower() not in seen:
                    self.remove(k)
                    seen.add(k.lower())
                if isinstance(v, (list, tuple)):
                    for x in v:
                        self.add(k, x)
                else:
                    self.add(k, v)

    def to_wsgi_list(self):
        return list(self._list)

    def copy(self):
        return Headers(self._list)

    def __eq__(self, other):
        if isinstance(other, Headers):
            other = other._list
        elif isinstance(other, dict):
            return {k.lower(): v for k, v in self._list} == {k.lower(): v for k, v in other.items()}
        return self._list == list(other)

    def __repr__(self):
        return "Headers(%r)" % (self._list,)

    def __str__(self):
        return "".join("%s: %s\r\n" % kv for kv in self._list) + "\r\n"


class _EnvironHeaders(Headers):
    """request.headers: `_` and `-` in a name are one, as werkzeug reads them from the environ."""
    __slots__ = ()
    _k = staticmethod(lambda key: key.lower().replace("_", "-"))


class FileStorage:
    """An uploaded file from a multipart/form-data body (request.files)."""

    def __init__(self, stream=None, filename=None, name=None, content_type=None, headers=None):
        import io
        self.stream = stream if stream is not None else io.BytesIO()
        self.filename = filename
        self.name = name
        self.headers = headers if headers is not None else Headers()
        if content_type is not None:
            self.headers.set("Content-Type", content_type)

    @property
    def content_type(self):
        return self.headers.get("Content-Type")

    @property
    def mimetype(self):
        return (self.content_type or "").split(";", 1)[0].strip().lower()

    def read(self, *a):
        return self.stream.read(*a)

    def save(self, dst, buffer_size=16384):
        import shutil
        if isinstance(dst, (str, bytes)) or hasattr(dst, "__fspath__"):
            with open(dst, "wb") as f:
                shutil.copyfileobj(self.stream, f, buffer_size)
        else:
            shutil.copyfileobj(self.stream, dst, buffer_size)

    def close(self):
        self.stream.close()

    def __bool__(self):
        return bool(self.filename)

    def __repr__(self):
        return "<FileStorage: %r (%r)>" % (self.filename, self.content_type)


# ---------------------------------------------------------------------------
# Request
# ---------------------------------------------------------------------------

def _parse_options(value):
    """'text/html; charset=UTF-8' -> ('text/html', {'charset': 'UTF-8'})."""
    parts = value.split(";")
    main = parts[0].strip().lower()
    params = {}
    for p in parts[1:]:
        k, sep, v = p.partition("=")
        if sep:
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            params[k.strip().lower()] = v
    return main, params


def _parse_qs(data):
    from urllib.parse import parse_qsl
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("latin-1")
        # percent-escapes decode as UTF-8; raw non-ASCII bytes too
        return MultiDict([(k.encode("latin-1").decode("utf-8", "replace"),
                           v.encode("latin-1").decode("utf-8", "replace"))
                          for k, v in parse_qsl(data, keep_blank_values=True,
                                                encoding="latin-1")])
    return MultiDict(parse_qsl(data, keep_blank_values=True))


def _parse_multipart(body, boundary):
    import io
    form = MultiDict()
    files = MultiDict()
    if not boundary:
        return form, files
    delim = b"--" + boundary.encode("latin-1")
    chunks = bytes(body).split(delim)
    for part in chunks[1:]:
        if part.startswith(b"--"):
            break
        if part.startswith(b"\r\n"):
            part = part[2:]
        if part.endswith(b"\r\n"):
            part = part[:-2]
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        headers = Headers()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            k, sep, v = line.partition(":")
            if sep:
                headers.add(k.strip(), v.strip())
        _, opts = _parse_options(headers.get("Content-Disposition", ""))
        name = opts.get("name")
        if name is None:
            continue
        filename = opts.get("filename")
        if filename is None and "filename*" in opts:
            from urllib.parse import unquote
            filename = unquote(opts["filename*"].split("''", 1)[-1])
        if filename is not None:
            files.add(name, FileStorage(io.BytesIO(data), filename, name, None, headers))
        else:
            _, copts = _parse_options(headers.get("Content-Type", "text/plain"))
            form.add(name, data.decode(copts.get("charset", "utf-8"), "replace"))
    return form, files


class _Globals:
    """flask.g: a per-request namespace."""

    def get(self, name, default=None):
        return self.__dict__.get(name, default)

    def pop(self, name, *default):
        return self.__dict__.pop(name, *default)

    def setdefault(self, name, default=None):
        return self.__dict__.setdefault(name, default)

    def __contains__(self, name):
        return name in self.__dict__

    def __iter__(self):
        return iter(self.__dict__)

    def __repr__(self):
        return "<flask.g of fusion>"


class Authorization(dict):
    """werkzeug's Authorization: `type`, `username`, `password`, `token`."""

    def __init__(self, auth_type, data=None, token=None):
        dict.__init__(self, data or {})
        self.type = auth_type
        self.token = token

    @property
    def username(self):
        return self.get("username")

    @property
    def password(self):
        return self.get("password")


class Request:
    """The current request, as flask.request presents it. Built by the runtime."""

    charset = "utf-8"
    max_content_length = None
    endpoint = None
    url_rule = None
    blueprint = None
    routing_exception = None
    scheme = "http"
    is_secure = False
    script_root = ""
    root_path = ""

    def __init__(self, method, target, raw_path, header_list, header_dict, body, remote_addr):
        self.method = method
        self._target = target
        self._raw_path = raw_path
        self._header_list = header_list
        self._hd = header_dict  # lower-case name -> combined value
        self._body = body
        self.remote_addr = remote_addr
        self.view_args = {}

    # -- URL
    @_cached
    def path(self):
        p = self._raw_path
        if "%" in p:
            from urllib.parse import unquote
            p = unquote(p, errors="replace")
        return p

    @_cached
    def query_string(self):
        i = self._target.find("?")
        return self._target[i + 1:].encode("latin-1") if i >= 0 else b""

    @_cached
    def args(self):
        return _parse_qs(self.query_string)

    @property
    def full_path(self):
        return "%s?%s" % (self.path, self.query_string.decode("latin-1"))

    @property
    def host(self):
        return self._hd.get("host") or "localhost"

    @property
    def host_url(self):
        return "%s://%s/" % (self.scheme, self.host)

    @property
    def url_root(self):
        return self.host_url

    @property
    def base_url(self):
        return "%s://%s%s" % (self.scheme, self.host, self._raw_path)

    @property
    def url(self):
        qs = self.query_string
        return self.base_url + ("?" + qs.decode("latin-1") if qs else "")

    # -- headers
    @_cached
    def headers(self):
        h = _EnvironHeaders()  # one entry per name, values joined, as a WSGI environ has them
        h._list = [(k.replace("_", "-").title(), self._hd[k]) for k in dict.fromkeys(k.lower() for k, _ in self._header_list)]
        return h

    @property
    def content_type(self):
        return self._hd.get("content-type")

    @_cached
    def _ct(self):
        return _parse_options(self._hd.get("content-type", ""))

    @property
    def mimetype(self):
        return self._ct[0]

    @property
    def mimetype_params(self):
        return dict(self._ct[1])

    @property
    def content_length(self):
        v = self._hd.get("content-length")
        if v is not None and v.isdigit():
            return int(v)
        if "transfer-encoding" in self._hd:
            return len(self._body)
        return None

    @property
    def content_encoding(self):
        return self._hd.get("content-encoding")

    @property
    def user_agent(self):
        return self._hd.get("user-agent", "")

    @property
    def referrer(self):
        return self._hd.get("referer")

    @property
    def access_route(self):
        xff = self._hd.get("x-forwarded-for")
        if xff:
            return [x.strip() for x in xff.split(",") if x.strip()]
        return [self.remote_addr]

    @_cached
    def cookies(self):
        md = MultiDict()
        raw = self._hd.get("cookie")
        if raw:
            for item in raw.split(";"):
                k, sep, v = item.partition("=")
                k = k.strip()
                if not sep or not k:
                    continue
                v = v.strip()
                if len(v) >= 2 and v[0] == v[-1] == '"':
                    v = v[1:-1]
                md.add(k, v)
        return md

    @property
    def origin(self):
        return self._hd.get("origin")

    @_cached
    def authorization(self):
        """werkzeug's Authorization of a Basic or Bearer header, else None."""
        raw = self._hd.get("authorization")
        if not raw:
            return None
        scheme, _, rest = raw.strip().partition(" ")
        scheme = scheme.lower()
        rest = rest.strip()
        if scheme == "basic":
            import base64
            import binascii
            try:
                user, sep, pw = base64.b64decode(rest).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            if not sep:
                return None
            return Authorization("basic", {"username": user, "password": pw})
        if scheme == "bearer" and rest:
            return Authorization("bearer", token=rest)
        return None

    # -- body
    def get_data(self, cache=True, as_text=False, parse_form_data=False):
        if as_text:
            return bytes(self._body).decode(self._ct[1].get("charset", "utf-8"), "replace")
        return bytes(self._body)

    @property
    def data(self):
        return bytes(self._body)

    @_cached
    def stream(self):
        import io
        return io.BytesIO(self._body)

    input_stream = stream

    @property
    def is_json(self):
        mt = self.mimetype
        return mt == "application/json" or (mt.startswith("application/") and mt.endswith("+json"))

    def get_json(self, force=False, silent=False, cache=True):
        """Parsed JSON body. Without force, None unless the content type is JSON;
        invalid JSON raises BadRequest (a 400 if uncaught) unless silent."""
        if not (force or self.is_json):
            return None
        key = "_json_cache"
        if cache and key in self.__dict__:
            return self.__dict__[key]
        import json
        try:
            data = bytes(self._body)
            if not data:
                raise ValueError("empty body")
            rv = json.loads(data)
        except ValueError as e:
            if silent:
                return None
            raise BadRequest("Failed to decode JSON object: %s" % e)
        if cache:
            self.__dict__[key] = rv
        return rv

    @property
    def json(self):
        return self.get_json()

    def _load_form(self):
        mt, params = self._ct
        if mt == "application/x-www-form-urlencoded":
            form, files = _parse_qs(self._body), MultiDict()
        elif mt == "multipart/form-data":
            form, files = _parse_multipart(self._body, params.get("boundary"))
        else:
            form, files = MultiDict(), MultiDict()
        self.__dict__["form"] = form
        self.__dict__["files"] = files

    @property
    def form(self):
        if "form" not in self.__dict__:
            self._load_form()
        return self.__dict__["form"]

    @property
    def files(self):
        if "files" not in self.__dict__:
            self._load_form()
        return self.__dict__["files"]

    @_cached
    def values(self):
        if self.method == "GET":
            return CombinedMultiDict([self.args])
        return CombinedMultiDict([self.args, self.form])

    # -- misc
    @_cached
    def environ(self):
        import io
        env = {
            "REQUEST_METHOD": self.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": self.path,
            "QUERY_STRING": self.query_string.decode("latin-1"),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": self.remote_addr,
            "wsgi.url_scheme": self.scheme,
            "wsgi.input": io.BytesIO(self._body),
            "wsgi.errors": sys.stderr,
        }
        host, _, port = self.host.partition(":")
        env["SERVER_NAME"] = host
        env["SERVER_PORT"] = port or "80"
        for k, v in self._hd.items():
            if k == "content-type":
                env["CONTENT_TYPE"] = v
            elif k == "content-length":
                env["CONTENT_LENGTH"] = v
            else:
                env["HTTP_" + k.upper().replace("-", "_")] = v
        return env

    @_cached
    def _g(self):
        return _Globals()

    def __repr__(self):
        return "<Request %r [%s]>" % (self.url, self.method)


class _Proxy:
    """Forwards everything to the object `get()` returns (werkzeug's LocalProxy)."""

    __slots__ = ("_fusion_get",)

    def __init__(self, get):
        object.__setattr__(self, "_fusion_get", get)

    def _get_current_object(self):
        return self._fusion_get()

    def __getattr__(self, name):
        return getattr(self._fusion_get(), name)

    def __setattr__(self, name, value):
        setattr(self._fusion_get(), name, value)

    def __delattr__(self, name):
        delattr(self._fusion_get(), name)

    def __contains__(self, item):
        return item in self._fusion_get()

    def __iter__(self):
        return iter(self._fusion_get())

    def __bool__(self):
        try:
            return bool(self._fusion_get())
        except RuntimeError:
            return False

    def __repr__(self):
        try:
            return repr(self._fusion_get())
        except RuntimeError:
            return "<unbound %s>" % type(self).__name__

    def __eq__(self, other):
        return self._fusion_get() == other

    def __hash__(self):
        return hash(self._fusion_get())


def _current_request():
    r = _request_var.get()
    if r is None:
        raise RuntimeError("Working outside of request context: flask.request is only "
                           "available while the function is handling a request.")
    return r


def has_request_context():
    return _request_var.get() is not None


request = _Proxy(_current_request)
g = _Proxy(lambda: _current_request()._g)


# ---------------------------------------------------------------------------
# Response
# ---------------------------------------------------------------------------

def _with_charset(mimetype):
    if "charset=" in mimetype:
        return mimetype
    if (mimetype.startswith("text/") or mimetype.endswith("+xml") or mimetype in (
            "application/xml", "application/javascript", "application/ecmascript",
            "application/xml-dtd")):
        return mimetype + "; charset=utf-8"
    return mimetype


def _status(value):
    if isinstance(value, int):
        return value, _REASONS.get(value, "Unknown")
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    value = str(value).strip()
    code, _, reason = value.partition(" ")
    code = int(code)
    return code, (reason.strip() or _REASONS.get(code, "Unknown"))


class Response:
    """flask.Response: Response(response=None, status=None, headers=None,
    mimetype=None, content_type=None). Default mimetype text/html, as Flask's."""

    default_status = 200
    default_mimetype = "text/html"
    charset = "utf-8"

    def __init__(self, response=None, status=None, headers=None, mimetype=None,
                 content_type=None, direct_passthrough=False):
        self.headers = headers.copy() if isinstance(headers, Headers) else Headers(headers)
        if content_type is None:
            if mimetype is None and "content-type" not in self.headers:
                mimetype = self.default_mimetype
            if mimetype is not None:
                content_type = _with_charset(mimetype)
        if content_type is not None:
            self.headers.set("Content-Type", content_type)
        self.status = self.default_status if status is None else status
        self.set_data(b"" if response is None else response)

    # -- status
    @property
    def status_code(self):
        return self._code

    @status_code.setter
    def status_code(self, code):
        self._code, self._reason = _status(int(code))

    @property
    def status(self):
        return "%d %s" % (self._code, self._reason)

    @status.setter
    def status(self, value):
        self._code, self._reason = _status(value)

    # -- body
    def set_data(self, value):
        if isinstance(value, str):
            self._data = value.encode(self.charset)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            self._data = bytes(value)
        elif hasattr(value, "__iter__") and not isinstance(value, (dict, str)):
            # an iterable of str/bytes chunks (a generator): collected, not streamed
            # (join refuses an int chunk, where bytes(3) would be three NULs)
            self._data = b"".join(c.encode(self.charset) if isinstance(c, str) else c for c in value)
        else:
            raise TypeError("response body must be str, bytes or an iterable of them, not %s"
                            % type(value).__name__)

    def get_data(self, as_text=False):
        return self._data.decode(self.charset, "replace") if as_text else self._data

    data = property(get_data, set_data)

    @property
    def response(self):
        return [self._data]

    @property
    def content_length(self):
        return len(self._data)

    # -- content type
    @property
    def content_type(self):
        return self.headers.get("Content-Type")

    @content_type.setter
    def content_type(self, value):
        self.headers.set("Content-Type", value)

    @property
    def mimetype(self):
        ct = self.headers.get("Content-Type")
        return ct.split(";", 1)[0].strip().lower() if ct else None

    @mimetype.setter
    def mimetype(self, value):
        self.headers.set("Content-Type", _with_charset(value))

    @property
    def mimetype_params(self):
        return _parse_options(self.headers.get("Content-Type", ""))[1]

    @property
    def is_json(self):
        mt = self.mimetype or ""
        return mt == "application/json" or (mt.startswith("application/") and mt.endswith("+json"))

    def get_json(self, force=False, silent=False):
        if not (force or self.is_json):
            return None
        import json
        try:
            return json.loads(self._data)
        except ValueError:
            if silent:
                return None
            raise

    @property
    def json(self):
        return self.get_json()

    @property
    def location(self):
        return self.headers.get("Location")

    @location.setter
    def location(self, value):
        self.headers.set("Location", value)

    # -- cookies
    def set_cookie(self, key, value="", max_age=None, expires=None, path="/", domain=None,
                   secure=False, httponly=False, samesite=None):
        from urllib.parse import quote
        parts = ["%s=%s" % (key, quote(str(value), safe="!#$&'()*+/:<=>?@[]^`{|}~"))]
        if domain:
            parts.append("Domain=%s" % domain)
        if hasattr(max_age, "total_seconds"):
            max_age = int(max_age.total_seconds())
        if expires is None and max_age is not None:  # as werkzeug: both, for old clients
            import time
            expires = time.time() + int(max_age)
        if expires is not None:
            if not isinstance(expires, str):
                expires = _http_date(expires)
            parts.append("Expires=%s" % expires)
        if max_age is not None:
            parts.append("Max-Age=%d" % int(max_age))
        if secure:
            parts.append("Secure")
        if httponly:
            parts.append("HttpOnly")
        if path:
            parts.append("Path=%s" % path)
        if samesite:
            parts.append("SameSite=%s" % str(samesite).title())
        self.headers.add("Set-Cookie", "; ".join(parts))

    def delete_cookie(self, key, path="/", domain=None, secure=False, httponly=False,
                      samesite=None):
        self.set_cookie(key, "", max_age=0, expires=0, path=path, domain=domain,
                        secure=secure, httponly=httponly, samesite=samesite)

    def __repr__(self):
        return "<Response %d bytes [%s]>" % (len(self._data), self.status)

    # -- for the runtime
    def _wire(self):
        return self._code, self._reason, self.headers._list, self._data


def _http_date(value):
    import time
    if isinstance(value, (int, float)):
        t = time.gmtime(value)
    else:  # date or datetime
        if getattr(value, "tzinfo", None) is not None:
            import datetime
            value = value.astimezone(datetime.timezone.utc)
        t = value.timetuple()
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", t)


def _json_default(o):
    import datetime
    if isinstance(o, datetime.date):
        return _http_date(o)
    if hasattr(o, "__html__"):
        return str(o.__html__())
    mod = type(o).__module__
    if mod in ("decimal", "uuid"):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses
        return dataclasses.asdict(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError("Object of type %s is not JSON serializable" % type(o).__name__)


def _dumps(obj):
    import json
    # as Flask's default JSON provider: compact, keys sorted, trailing newline
    return json.dumps(obj, separators=(",", ":"), sort_keys=True,
                      default=_json_default) + "\n"


def jsonify(*args, **kwargs):
    """A JSON response: jsonify(obj), jsonify(a, b) (a list) or jsonify(k=v) (a dict)."""
    if args and kwargs:
        raise TypeError("jsonify() behavior undefined when passed both args and kwargs")
    if not args:
        data = kwargs
    elif len(args) == 1:
        data = args[0]
    else:
        data = list(args)
    return Response(_dumps(data), mimetype="application/json")


def _make_response(rv):
    """A function's return value -> Response.

    str, bytes, a generator -> text/html (as Flask); dict/list -> JSON;
    None -> empty 200 (Flask: 500); a Response as is; (body, status), (body, headers) or
    (body, status, headers) where body is any of these.
    """
    status = headers = None
    if isinstance(rv, tuple):
        n = len(rv)
        if n == 3:
            rv, status, headers = rv
        elif n == 2:
            if isinstance(rv[1], (Headers, dict, list)):
                rv, headers = rv
            else:
                rv, status = rv
        elif n == 1:
            rv = rv[0]
        else:
            raise TypeError("a returned tuple must be (body, status, headers), (body, status)"
                            " or (body, headers); got %d items" % n)
    if isinstance(rv, Response):
        resp = rv
        if status is not None:
            resp.status = status
        if headers:
            resp.headers.update(headers)
        return resp
    if isinstance(rv, HTTPException):
        resp = rv.get_response()
        if status is not None:
            resp.status = status
        if headers:
            resp.headers.update(headers)
        return resp
    if rv is None:
        body, mimetype = b"", None
    elif isinstance(rv, (str, bytes, bytearray, memoryview)):
        body, mimetype = rv, "text/html; charset=utf-8"
    elif isinstance(rv, (dict, list)):
        body, mimetype = _dumps(rv), "application/json"
    elif hasattr(rv, "__next__"):  # a generator of chunks (as Flask: not a set, a range)
        body, mimetype = rv, "text/html; charset=utf-8"
    else:
        raise TypeError("the function returned %s; expected str, bytes, dict, list, tuple,"
                        " a generator or Response" % type(rv).__name__)
    hdrs = headers.copy() if isinstance(headers, Headers) else Headers(headers)
    user_ct = "content-type" in hdrs
    if mimetype is not None and not user_ct:
        hdrs.set("Content-Type", mimetype)
    resp = Response(body, status, hdrs)
    if mimetype is None and not user_ct:
        resp.headers.remove("Content-Type")  # an empty body has no type
    return resp


def make_response(*args):
    """flask.make_response: make_response(), make_response(body), make_response(body, status, ...)."""
    if not args:
        return Response()
    return _make_response(args[0] if len(args) == 1 else args)


def redirect(location, code=302, Response=None):
    import html
    cls = Response or globals()["Response"]
    esc = html.escape(location)
    body = ('<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n'
            '<h1>Redirecting...</h1>\n<p>You should be redirected automatically to the target '
            'URL: <a href="%s">%s</a>. If not, click the link.\n' % (esc, esc))
    resp = cls(body, code, mimetype="text/html")
    resp.headers.set("Location", location)
    return resp


def stream_with_context(gen):
    return gen


# ---------------------------------------------------------------------------
# current_app
# ---------------------------------------------------------------------------

class Flask:
    """Just enough of flask.Flask for module-level `app = Flask(__name__)` code."""

    def __init__(self, import_name="fusion", *args, **kwargs):
        self.import_name = import_name
        self.name = import_name
        self.config = {"DEBUG": False, "TESTING": False, "JSON_SORT_KEYS": True}
        self.debug = False
        self.testing = False
        self._logger = None

    @property
    def logger(self):
        if self._logger is None:
            import logging
            lg = logging.getLogger(self.name)
            if not lg.handlers:
                h = logging.StreamHandler(sys.stderr)
                h.setFormatter(logging.Formatter(
                    "[%(asctime)s] %(levelname)s in %(module)s: %(message)s"))
                lg.addHandler(h)
            # No level of its own, as Flask's: the root's (DEBUG, as the
            # runtime sets it, as Fission's does) holds.
            lg.propagate = False
            self._logger = lg
        return self._logger

    def route(self, *args, **kwargs):
        """Accepted and ignored: on Fusion the function is the entrypoint itself."""
        return lambda f: f

    def make_response(self, rv):
        return _make_response(rv)

    def __repr__(self):
        return "<Flask %r (fusion shim)>" % self.name


current_app = Flask("fusion")


def __getattr__(name):
    # flask.json, imported on first use (as the stand-in's other modules).
    if name == "json":
        import json
        return json
    raise AttributeError("module 'flask' (Fusion's stand-in) has no attribute %r" % name)
