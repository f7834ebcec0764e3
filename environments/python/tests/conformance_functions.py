"""The user functions of the flask conformance set (flask_conformance.py).

Written as a Fission user writes them: `from flask import ...`, no arguments.
The harness loads this file as `main.py` of a package directory, once with the
runtime's shim and once with real Flask in the package, and sends each request
of its table to `main`, which calls the function named by the first path
segment (`/text/...` -> text()).
"""

import asyncio
import datetime

import flask
from flask import (Response, abort, current_app, g, jsonify, make_response, redirect,
                   request)


def main():
    name = request.path.strip("/").split("/")[0]
    return globals()[name]()


# -- return values

def text():
    return "hello"


def text_unicode():
    return "h\u00e9llo \u2713"


def raw_bytes():
    return b"\x00\x01bytes"


def a_dict():
    return {"b": 1, "a": [1, 2], "c": {"z": None, "y": True}, "u": "\u00e9"}


def a_list():
    return [3, "x", None, 1.5]


def nothing():
    return None


def tuple_status():
    return "created", 201


def tuple_status_headers():
    return {"ok": True}, 202, {"X-Extra": "1"}


def tuple_headers():
    return "h", {"X-Only-Headers": "yes"}


def tuple_header_list():
    return "h", 200, [("X-A", "1"), ("X-B", "2")]


def tuple_content_type():
    return "a,b\n", 200, {"Content-Type": "text/csv"}


def status_string():
    return "tea", "418 I'm a teapot"


def response_object():
    return Response("r", status=203, headers={"X-R": "1"}, mimetype="text/csv")


def response_default():
    return Response("<b>r</b>")


def response_subclass():
    class XmlResponse(Response):
        default_mimetype = "application/xml"

    return XmlResponse("<a/>")


def response_then_status():
    return Response("x"), 207


def jsonify_kwargs():
    return jsonify(a=1, b=[1, 2])


def jsonify_args():
    return jsonify(1, "two", 3)


def jsonify_status():
    return jsonify(error="bad"), 400


def cookies_set():
    r = make_response("c")
    r.set_cookie("sid", "abc", max_age=60, httponly=True,
                 expires=datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc))
    r.set_cookie("theme", "dark", path="/app", samesite="Lax", secure=True, domain="example.test")
    r.headers["X-M"] = "1"
    return r


def cookies_max_age():
    r = make_response("c")
    r.set_cookie("sid", "abc", max_age=3600)
    return r


def cookie_value_quoting():
    r = make_response("q")
    r.set_cookie("k", "a b;c")
    return r


def cookies_delete():
    r = make_response("gone")
    r.delete_cookie("sid")
    return r


def make_response_args():
    return make_response("made", 201, {"X-Made": "yes"})


def redirect_to():
    return redirect("/elsewhere?x=1")


def redirect_301():
    return redirect("/moved", 301)


def generator():
    def gen():
        yield "a"
        yield "b"
    return gen()


def generator_of_ints():
    def gen():
        yield 1
        yield 2
    return gen()


def returns_set():
    return {1, 2}


async def async_function():
    await asyncio.sleep(0)
    return "async ok"


# -- errors

def abort_404():
    abort(404)


def abort_400_message():
    abort(400, "bad thing")


def abort_with_response():
    abort(make_response("custom", 409))


def raise_error():
    raise ValueError("boom")


def missing_arg():
    return request.args["nope"]


# -- the request

def echo_method():
    return request.method


def echo_args():
    return {
        "args": request.args.to_dict(flat=False),
        "q": request.args.get("q"),
        "qs": request.args.getlist("q"),
        "n": request.args.get("n", type=int),
        "bad_n": request.args.get("q", -1, type=int),
        "query_string": request.query_string.decode(),
    }


def echo_json():
    return {"got": request.get_json()}


def echo_json_silent():
    return {"got": request.get_json(silent=True)}


def echo_json_force():
    return {"got": request.get_json(force=True), "is_json": request.is_json}


def echo_form():
    return {
        "form": request.form.to_dict(flat=False),
        "values": request.values.to_dict(flat=False),
        "files": {k: {"filename": f.filename, "data": f.read().decode(),
                      "content_type": f.content_type}
                  for k, f in request.files.items()},
    }


def echo_data():
    return {
        "data": request.get_data(as_text=True),
        "len": len(request.data),
        "content_length": request.content_length,
    }


def echo_headers():
    return {
        "user_agent": request.headers.get("User-Agent"),
        "custom": request.headers.get("X-Custom"),
        "custom_lower": request.headers.get("x-custom"),
        "has_custom": "x-custom" in request.headers,
        "missing": request.headers.get("X-Missing", "default"),
        "content_type": request.content_type,
        "mimetype": request.mimetype,
        "mimetype_params": request.mimetype_params,
        "fission_param": request.headers.get("X-Fission-Params-Id"),
    }


def echo_repeated():
    return {
        "custom": request.headers.get("X-Custom"),
        "custom_list": request.headers.getlist("X-Custom"),
        "accept": request.headers.get("Accept"),
        "names": [k for k, _ in request.headers if k.lower() in ("x-custom", "accept")],
    }


def echo_cookies():
    return {"cookies": request.cookies.to_dict()}


def echo_url():
    return {
        "path": request.path,
        "url": request.url,
        "base_url": request.base_url,
        "host": request.host,
        "host_url": request.host_url,
        "url_root": request.url_root,
        "script_root": request.script_root,
    }


def echo_full_path():
    return {"full_path": request.full_path}


def echo_remote():
    return {"remote_addr": request.remote_addr, "access_route": request.access_route}


def g_and_app():
    g.seen = "yes"
    return {"g": g.get("seen"), "missing": g.get("nope", 0), "app": current_app.name}


def echo_auth():
    a = request.authorization
    if a is None:
        return {"auth": None}
    return {"auth": {"type": a.type, "username": a.username, "password": a.password}}


def echo_origin():
    return {"origin": request.origin}


def werkzeug_not_found():
    from werkzeug.exceptions import NotFound
    raise NotFound()


def flask_json():
    from flask import json as fjson
    return fjson.dumps({"b": [1, 2], "a": fjson.loads('"x"')}, sort_keys=True)


def flask_origin():
    """Not a case: the harness asks which flask the runtime gave the function."""
    return {"file": flask.__file__}
