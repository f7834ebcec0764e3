from flask import request


def main():
    name = request.args.get("name") or request.headers.get("X-Fission-Params-name") or "world"
    return "Hello, %s, from python!\n" % name
