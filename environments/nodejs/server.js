'use strict';
// Fusion nodejs runtime: Fission's environment protocol, Node built-ins only.
//
//   GET  /healthz          200 "ok", always
//   POST /v2/specialize    {"filepath", "functionName", ...}: load the function
//                          (Fusion's "fusionEnvVars": {name: value} set first)
//   POST /specialize       v1: load $USERFUNC_DIR/user (default /userfunc/user)
//   anything else          the function, once specialized (500 before)
//
// Functions have the shape of Fission's nodejs environment:
//   module.exports = async function (context) { return { status, body, headers }; };
//   module.exports = function (context, callback) { callback(status, body, headers); };
// context.request is the Node request, with express-like additions: body (parsed as
// Fission's body parsers do), rawBody (Buffer), query, path, params, get(name);
// context.response is the Node response with express's methods (status, send,
// json, set, type, sendStatus, redirect...).
// See ../README.md for the entrypoint rules.

const http = require('http');
const fs = require('fs');
const path = require('path');

const HOST = process.env.RUNTIME_HOST || '127.0.0.1';
const PORT = parseInt(process.env.RUNTIME_PORT || '8888', 10);

let userFunction = null; // set once by a successful specialization
let entryShown = null; // [filepath, entry] for messages
let specQueue = Promise.resolve();
const EMPTY = Buffer.alloc(0);

function log(msg) {
  process.stderr.write(msg + '\n');
}

function errText(e) {
  if (e instanceof SyntaxError && typeof e.stack === 'string' && !e.stack.startsWith('SyntaxError')) {
    // require()'s syntax errors carry the location only in the stack's first line
    return `${e.name}: ${e.message} (${e.stack.split('\n', 1)[0]})`;
  }
  if (e instanceof Error) {
    const msg = e.code === 'MODULE_NOT_FOUND' ? String(e.message).split('\n', 1)[0] : e.message;
    return `${e.name}: ${msg}`;
  }
  try {
    return typeof e === 'string' ? e : JSON.stringify(e);
  } catch (_) {
    return String(e);
  }
}

function errStack(e) {
  return e instanceof Error && e.stack ? e.stack : errText(e);
}

function shownName() {
  return entryShown ? entryShown[1] : '-';
}

function sendText(res, status, text) {
  const b = Buffer.from(text);
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': b.length });
  res.end(b);
}

// ---------------------------------------------------------------------------
// Specialization
// ---------------------------------------------------------------------------

function forget(before) {
  for (const k of Object.keys(require.cache)) if (!before.has(k)) delete require.cache[k];
}

function isMissing(e, target) {
  return e && e.code === 'MODULE_NOT_FOUND' && String(e.message).includes(`'${target}'`);
}

// Where `target` names a module: as require() finds it, else an ES module
// require() does not look for (`handler` for handler.mjs, a folder whose
// main module is index.mjs) or a `.cjs` file.
function resolveModule(target) {
  try {
    return require.resolve(target);
  } catch (e) {
    if (!isMissing(e, target)) throw e;
    for (const candidate of [`${target}.mjs`, `${target}.cjs`, path.join(target, 'index.mjs')]) {
      try {
        if (fs.statSync(candidate).isFile()) return candidate;
      } catch (_) {
        // not this one
      }
    }
    throw e;
  }
}

// Loads a module: CommonJS through require(), ES modules through import().
async function loadModule(target) {
  const resolved = resolveModule(target);
  try {
    return require(resolved);
  } catch (e) {
    if (e && e.code === 'ERR_REQUIRE_ESM') {
      const ns = await import(require('url').pathToFileURL(resolved).href);
      return ns;
    }
    throw e;
  }
}

function pick(mod, exportName, where) {
  let fn;
  if (exportName) {
    fn = mod != null ? mod[exportName] : undefined;
    if (fn === undefined && mod != null && mod.default != null) fn = mod.default[exportName];
    if (fn === undefined) throw new Error(`${where} has no export '${exportName}'`);
  } else {
    fn = mod;
    if (typeof fn !== 'function' && fn != null && typeof fn.default === 'function') fn = fn.default;
  }
  if (typeof fn !== 'function') {
    throw new TypeError(
      `${where}${exportName ? ` export '${exportName}'` : ' module.exports'} is ${fn === null ? 'null' : typeof fn}, not a function`
    );
  }
  return fn;
}

// Entrypoint rules (Fission's, made a little more forgiving):
//   file:  ""            -> module.exports (or its default export)
//          "a.b" / "b"   -> export b (after the last dot); if the module has no such
//                           export but module.exports is itself a function, that function
//   dir:   ""            -> the directory's main module (package.json "main" or index.js)
//          "file.fn"     -> export fn of <dir>/file (last dot splits; "lib/x.fn" works)
//          "file"        -> module.exports of <dir>/file; if there is no such module,
//                           export "file" of the directory's main module
async function load(filepath, name) {
  const st = fs.statSync(filepath); // throws ENOENT with a clear message
  const before = new Set(Object.keys(require.cache));
  try {
    if (!st.isDirectory()) {
      const mod = await loadModule(filepath);
      const exportName = name ? name.slice(name.lastIndexOf('.') + 1) : '';
      if (exportName && typeof mod === 'function' && mod[exportName] === undefined) {
        return [mod, '(module.exports)'];
      }
      return [pick(mod, exportName, filepath), exportName || '(module.exports)'];
    }
    if (!name) return [pick(await loadModule(filepath), '', filepath), '(main module)'];
    const dot = name.lastIndexOf('.');
    if (dot > 0) {
      const target = path.join(filepath, name.slice(0, dot));
      const exportName = name.slice(dot + 1);
      return [pick(await loadModule(target), exportName, target), name];
    }
    const target = path.join(filepath, name);
    let mod;
    try {
      mod = await loadModule(target);
    } catch (e) {
      if (!isMissing(e, target)) throw e;
      let main;
      try {
        main = await loadModule(filepath);
      } catch (e2) {
        if (!isMissing(e2, filepath)) throw e2;
        throw new Error(`no module '${name}' in ${filepath}, and no main module (index.js) to take export '${name}' from`);
      }
      if (main == null || main[name] === undefined) {
        throw new Error(`no module '${name}' in ${filepath}, and its main module has no export '${name}'`);
      }
      return [pick(main, name, filepath), `(main module).${name}`];
    }
    return [pick(mod, '', target), name];
  } catch (e) {
    forget(before); // stay generic: a later specialization starts clean
    throw e;
  }
}

async function specialize(v2, body, res) {
  let filepath;
  let name;
  let envVars = {};
  if (v2) {
    let info;
    try {
      info = JSON.parse(body.length ? body.toString('utf8') : '{}');
    } catch (e) {
      return sendText(res, 500, `specialize: request body is not JSON: ${e.message}\n`);
    }
    if (info === null || typeof info !== 'object' || Array.isArray(info)) {
      return sendText(res, 500, 'specialize: request body must be a JSON object\n');
    }
    filepath = info.filepath;
    name = info.functionName || '';
    if (typeof filepath !== 'string' || !filepath) {
      return sendText(res, 500, 'specialize: filepath is required\n');
    }
    if (typeof name !== 'string') return sendText(res, 500, 'specialize: functionName must be a string\n');
    // Fusion's extension: the function's environment variables.
    envVars = info.fusionEnvVars || {};
    if (typeof envVars !== 'object' || Array.isArray(envVars)
        || !Object.values(envVars).every((v) => typeof v === 'string')) {
      return sendText(res, 500, 'specialize: fusionEnvVars must map names to strings\n');
    }
  } else {
    filepath = path.join(process.env.USERFUNC_DIR || '/userfunc', 'user');
    name = '';
  }
  // One specialization at a time: a concurrent one waits, then gets 409 or its turn.
  const turn = specQueue.then(() => attempt(filepath, name, envVars, res));
  specQueue = turn.catch(() => {});
  return turn;
}

async function attempt(filepath, name, envVars, res) {
  if (userFunction !== null) {
    const [f, e] = entryShown;
    return sendText(res, 409, `already specialized with ${f} entry ${e}; an instance is specialized only once\n`);
  }
  const t0 = process.hrtime.bigint();
  Object.assign(process.env, envVars);
  try {
    const [fn, shown] = await load(filepath, name);
    userFunction = fn;
    entryShown = [filepath, shown];
  } catch (e) {
    log(`specialize ${filepath} entry '${name}' failed: ${errStack(e)}`);
    return sendText(res, 500, `specialize ${filepath} entry '${name}' failed: ${errText(e)}\n`);
  }
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  log(`specialized ${filepath} entry ${entryShown[1]} (${ms.toFixed(1)} ms)`);
  return sendText(res, 200, 'specialized\n');
}

// ---------------------------------------------------------------------------
// Invocation
// ---------------------------------------------------------------------------

let querystring = null;
function qs() {
  return querystring || (querystring = require('querystring'));
}

class BadBody extends Error {}

// Whether a body of this content type is one of those Fission's parsers
// read (body-parser's json, urlencoded, raw for octet-stream, text for
// text/*), or has no type (read as bytes). Any other is left in the request
// stream for the function to read (`request.on('data')`, `pipe` into a
// multipart parser), with `request.body` `{}`, as Fission leaves it.
function parsedType(ctype) {
  const semi = ctype.indexOf(';');
  const mime = (semi < 0 ? ctype : ctype.slice(0, semi)).trim().toLowerCase();
  return mime === '' || mime === 'application/json' ||
    (mime.startsWith('application/') && mime.endsWith('+json')) ||
    mime === 'application/x-www-form-urlencoded' || mime === 'application/octet-stream' ||
    mime.startsWith('text/');
}

// As Fission's express body parsers: JSON -> value, text/* -> string,
// urlencoded -> object; octet-stream or no type -> Buffer; an empty body -> {}.
function parseBody(ctype, body) {
  if (body.length === 0) return {};
  const semi = ctype.indexOf(';');
  const mime = (semi < 0 ? ctype : ctype.slice(0, semi)).trim().toLowerCase();
  if (mime === 'application/json' || (mime.startsWith('application/') && mime.endsWith('+json'))) {
    try {
      return JSON.parse(body.toString('utf8'));
    } catch (e) {
      throw new BadBody(`invalid JSON body: ${e.message}`);
    }
  }
  if (mime === 'application/x-www-form-urlencoded') {
    return Object.assign({}, qs().parse(body.toString('utf8')));
  }
  if (mime.startsWith('text/')) {
    const m = /charset=["']?([\w-]+)/i.exec(ctype);
    const cs = m ? m[1].toLowerCase() : 'utf-8';
    const enc = cs === 'iso-8859-1' || cs === 'latin1' || cs === 'us-ascii' ? 'latin1' : 'utf8';
    return body.toString(enc);
  }
  return body;
}

// Express's res.set of a Content-Type: a text, JSON or JavaScript type
// without a charset gets `charset=utf-8`.
function withCharset(value) {
  const v = String(value);
  if (/;\s*charset\s*=/i.test(v)) return v;
  return /^\s*(text\/|application\/(javascript|json))/i.test(v) ? `${v}; charset=utf-8` : v;
}

// Express's res.send of a string: its type says utf-8, whatever it said.
function utf8Type(type) {
  const parts = String(type).split(';');
  const params = parts.slice(1).map((p) => p.trim()).filter((p) => p && !/^charset\s*=/i.test(p));
  return [parts[0].trim(), ...params, 'charset=utf-8'].join('; ');
}

function respond(res, status, body, headers) {
  if (res.writableEnded || res.headersSent) return; // the function answered through context.response
  try {
    const code = status === undefined || status === null ? 200 : Number(status);
    if (!Number.isInteger(code) || code < 100 || code > 999) {
      throw new TypeError(`invalid status ${typeof status === 'string' ? JSON.stringify(status) : String(status)}`);
    }
    status = code;
    let buf = EMPTY;
    let ctype = null;
    if (body === undefined || body === null) {
      buf = EMPTY;
    } else if (Buffer.isBuffer(body)) {
      buf = body;
      ctype = 'application/octet-stream';
    } else if (body instanceof Uint8Array || body instanceof ArrayBuffer) {
      buf = body instanceof ArrayBuffer ? Buffer.from(body) : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
      ctype = 'application/octet-stream';
    } else if (typeof body === 'string') {
      // As Fission's runtime answers it (Express's res.send of a string).
      buf = Buffer.from(body);
      ctype = 'text/html; charset=utf-8';
    } else if (typeof body === 'object') {
      buf = Buffer.from(JSON.stringify(body));
      ctype = 'application/json; charset=utf-8';
    } else {
      buf = Buffer.from(String(body));
      ctype = 'text/plain; charset=utf-8';
    }
    if (headers) {
      for (const k of Object.keys(headers)) {
        const v = headers[k];
        if (v === undefined || v === null) continue;
        const lk = k.toLowerCase();
        if (lk === 'content-length' || lk === 'transfer-encoding' || lk === 'connection') continue;
        if (lk === 'content-type' && !Array.isArray(v)) {
          res.setHeader(k, withCharset(v));
          continue;
        }
        res.setHeader(k, Array.isArray(v) ? v.map(String) : String(v));
      }
    }
    if (ctype !== null && !res.hasHeader('content-type')) res.setHeader('Content-Type', ctype);
    if (typeof body === 'string') res.setHeader('Content-Type', utf8Type(res.getHeader('content-type')));
    res.statusCode = status;
    if (status === 204 || status === 304 || status < 200) {
      // As Express's send: no body, so no type of one.
      if (status !== 101) res.removeHeader('Content-Type');
      res.end();
    } else {
      res.setHeader('Content-Length', buf.length);
      res.end(buf);
    }
  } catch (e) {
    log(`function ${shownName()}: bad response: ${errStack(e)}`);
    if (!res.headersSent) {
      for (const h of res.getHeaderNames()) res.removeHeader(h);
      sendText(res, 500, INTERNAL_ERROR);
    }
  }
}

// The body of a 500 for an error in the function: nothing of the error itself
// (its message may hold a secret, and the caller may be anyone); the stack is
// in the function's log.
const INTERNAL_ERROR = '500 Internal Server Error: the function failed (see its log)\n';

function fail(res, e) {
  log(`${entryShown ? `function ${shownName()}` : 'request'} failed: ${errStack(e)}`);
  if (res.writableEnded) return;
  if (res.headersSent) {
    res.destroy();
    return;
  }
  for (const h of res.getHeaderNames()) res.removeHeader(h);
  sendText(res, 500, INTERNAL_ERROR);
}

function finish(res, result) {
  if (result === undefined || result === null) return respond(res, 200, undefined, undefined);
  if (typeof result === 'string' || Buffer.isBuffer(result) || result instanceof Uint8Array) {
    return respond(res, 200, result, undefined);
  }
  if (typeof result === 'object' && !Array.isArray(result) &&
      ('status' in result || 'body' in result || 'headers' in result)) {
    return respond(res, result.status, result.body, result.headers);
  }
  return respond(res, 200, result, undefined); // plain data: sent as JSON
}

// The caller's address, as Express's req.ip behind one proxy: the last
// X-Forwarded-For entry, the one Fusion's router added (a caller can put
// anything before it); else the connection's peer (none on a Unix socket).
function clientAddress(req) {
  const xff = String(req.headers['x-forwarded-for'] || '').split(',');
  const last = xff[xff.length - 1].trim();
  return last || req.socket.remoteAddress || '127.0.0.1';
}

// Express's shorthands for media types (type-is, accepts).
function mediaType(t) {
  const short = { json: 'application/json', html: 'text/html', text: 'text/plain',
    urlencoded: 'application/x-www-form-urlencoded', multipart: 'multipart/*', xml: 'application/xml' };
  t = String(t).trim().toLowerCase();
  if (short[t]) return short[t];
  if (t.startsWith('+')) return '*/*' + t;
  return t.includes('/') ? t : 'application/' + t;
}

// Whether `actual` (type/subtype) is matched by `pattern` (wildcards and a
// `*/*+json` suffix form allowed).
function typeMatches(pattern, actual) {
  const [pt, ps] = pattern.split('/');
  const [at, as] = actual.split('/');
  if (pt !== '*' && pt !== at) return false;
  if (ps === '*' || ps === as) return true;
  return ps !== undefined && ps.startsWith('*+') && as !== undefined && as.endsWith(ps.slice(1));
}

// Express's req.is: the first of `types` the request's body is, false for
// none, null without a body.
function typeIs(req, types) {
  const hasBody = req.headers['transfer-encoding'] !== undefined ||
    (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
  if (!hasBody) return null;
  const actual = String(req.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
  if (!actual) return false;
  if (types.length === 0) return actual;
  for (const t of types) {
    const m = mediaType(t);
    // As type-is: a pattern with a wildcard answers the type it matched.
    if (typeMatches(m, actual)) return m.includes('*') ? actual : t;
  }
  return false;
}

// Express's req.accepts: of `types`, the one the Accept header prefers (the
// first given when it says nothing), false when it takes none of them.
function accepts(header, types) {
  const ranges = String(header || '*/*').split(',').map((part) => {
    const [range, ...params] = part.trim().toLowerCase().split(';');
    const q = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
    return { range: range.trim(), q: q ? Number(q.slice(2)) : 1 };
  }).filter((r) => r.range && r.q > 0);
  if (types.length === 0) return ranges.map((r) => r.range);
  let best = false;
  let bestQ = 0;
  for (const t of types) {
    const m = mediaType(t);
    for (const r of ranges) {
      if ((typeMatches(r.range, m) || typeMatches(m, r.range)) && r.q > bestQ) {
        best = t;
        bestQ = r.q;
      }
    }
  }
  return best;
}

// `body` is undefined when the request stream is left to the function.
function invoke(req, res, url, body) {
  const q = url.indexOf('?');
  const pathname = q < 0 ? url : url.slice(0, q);
  req.rawBody = body;
  req.path = pathname;
  req.originalUrl = url;
  req.query = q < 0 ? {} : Object.assign({}, qs().parse(url.slice(q + 1)));
  req.params = {};
  req.protocol = 'http';
  req.ip = clientAddress(req);
  req.hostname = (req.headers.host || '').replace(/:\d+$/, '');
  req.get = req.header = (n) => {
    const ln = String(n).toLowerCase();
    return req.headers[ln === 'referrer' ? 'referer' : ln];
  };
  req.is = (...types) => typeIs(req, types.flat());
  req.accepts = (...types) => accepts(req.headers.accept, types.flat());
  try {
    req.body = body === undefined ? {} : parseBody(req.headers['content-type'] || '', body);
  } catch (e) {
    if (e instanceof BadBody) return sendText(res, 400, `Bad Request: ${e.message}\n`);
    throw e;
  }
  const context = { request: req, response: res };
  const fn = userFunction;
  let answered = false;
  try {
    if (fn.length >= 2) {
      const callback = (status, rbody, headers) => {
        if (answered) return;
        answered = true;
        respond(res, status, rbody, headers);
      };
      const r = fn(context, callback);
      if (r && typeof r.then === 'function') {
        r.then(undefined, (e) => {
          if (!answered) {
            answered = true;
            fail(res, e);
          }
        });
      }
      return;
    }
    const r = fn(context);
    if (r && typeof r.then === 'function') {
      r.then((v) => finish(res, v), (e) => fail(res, e));
    } else {
      finish(res, r);
    }
  } catch (e) {
    if (!answered) {
      answered = true;
      fail(res, e);
    }
  }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

function handle(req, res) {
  const url = req.url;
  const q = url.indexOf('?');
  const p = q < 0 ? url : url.slice(0, q);
  if (p === '/healthz') {
    req.resume();
    return sendText(res, 200, 'ok');
  }
  if (userFunction !== null && p !== '/v2/specialize' && p !== '/specialize' &&
      !parsedType(req.headers['content-type'] || '')) {
    req.on('error', () => res.destroy());
    try {
      return invoke(req, res, url, undefined);
    } catch (e) {
      return fail(res, e);
    }
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('error', () => res.destroy());
  req.on('end', () => {
    const body = chunks.length === 0 ? EMPTY : chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
    try {
      if (p === '/v2/specialize' || p === '/specialize') {
        if (req.method !== 'POST') {
          res.setHeader('Allow', 'POST');
          return sendText(res, 405, 'use POST\n');
        }
        specialize(p === '/v2/specialize', body, res).catch((e) => fail(res, e));
      } else if (userFunction === null) {
        sendText(res, 500, 'not specialized\n');
      } else {
        invoke(req, res, url, body);
      }
    } catch (e) {
      fail(res, e);
    }
  });
}

// A function's stray exception or unobserved rejection is logged, not fatal.
process.on('uncaughtException', (e) => log(`uncaught exception: ${errStack(e)}`));
process.on('unhandledRejection', (e) => log(`unhandled rejection: ${errStack(e)}`));

function watchStdin() {
  // The server holds the other end of our stdin pipe: EOF means it is gone
  // (even if it was SIGKILLed). Set up after listen(): process.stdin costs ~8 ms.
  const bye = () => process.exit(0);
  const stdin = process.stdin;
  stdin.on('end', bye);
  stdin.on('close', bye);
  stdin.on('error', () => {});
  stdin.on('data', () => {});
  stdin.resume();
}

// context.response: Node's response with the express methods Fission's
// nodejs environment gives functions (its `res` is express's): status, set,
// header, get, type, send, json, sendStatus, redirect, location, append.
// Defined once on a subclass, so a request pays nothing for them.
const TYPES = {
  json: 'application/json', html: 'text/html', text: 'text/plain', txt: 'text/plain',
  xml: 'application/xml', js: 'application/javascript', css: 'text/css',
  bin: 'application/octet-stream', form: 'application/x-www-form-urlencoded',
};
const STATUS_TEXT = http.STATUS_CODES;

class Response extends http.ServerResponse {
  status(code) {
    this.statusCode = Number(code);
    return this;
  }

  set(field, value) {
    if (typeof field === 'object' && field !== null) {
      for (const k of Object.keys(field)) this.set(k, field[k]);
      return this;
    }
    if (String(field).toLowerCase() === 'content-type' && !Array.isArray(value)) {
      this.setHeader(field, withCharset(value));
      return this;
    }
    this.setHeader(field, Array.isArray(value) ? value.map(String) : String(value));
    return this;
  }

  header(field, value) {
    return this.set(field, value);
  }

  get(field) {
    return this.getHeader(field);
  }

  append(field, value) {
    const prev = this.getHeader(field);
    const more = Array.isArray(value) ? value.map(String) : [String(value)];
    const all = prev === undefined ? more : (Array.isArray(prev) ? prev : [String(prev)]).concat(more);
    this.setHeader(field, all.length === 1 ? all[0] : all);
    return this;
  }

  type(t) {
    const s = String(t);
    const ctype = s.includes('/') ? s : TYPES[s.replace(/^\./, '').toLowerCase()] || 'application/octet-stream';
    this.setHeader('Content-Type', withCharset(ctype));
    return this;
  }

  location(url) {
    this.setHeader('Location', String(url));
    return this;
  }

  send(body) {
    if (this.writableEnded) return this;
    let buf = EMPTY;
    if (body === undefined || body === null) {
      buf = EMPTY;
    } else if (Buffer.isBuffer(body) || body instanceof Uint8Array) {
      buf = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
      if (!this.hasHeader('content-type')) this.setHeader('Content-Type', 'application/octet-stream');
    } else if (typeof body === 'string') {
      buf = Buffer.from(body);
      this.setHeader('Content-Type', this.hasHeader('content-type') ? utf8Type(this.getHeader('content-type')) : 'text/html; charset=utf-8');
    } else {
      return this.json(body);
    }
    if (this.statusCode === 204 || this.statusCode === 304) {
      this.removeHeader('Content-Type');
      this.removeHeader('Content-Length');
      this.end();
      return this;
    }
    this.setHeader('Content-Length', buf.length);
    this.end(buf);
    return this;
  }

  json(body) {
    if (!this.hasHeader('content-type')) this.setHeader('Content-Type', 'application/json; charset=utf-8');
    const text = JSON.stringify(body);
    return this.send(text === undefined ? '' : text);
  }

  sendStatus(code) {
    this.status(code);
    this.setHeader('Content-Type', 'text/plain; charset=utf-8');
    return this.send(STATUS_TEXT[code] || String(code));
  }

  redirect(a, b) {
    const [code, url] = b === undefined ? [302, a] : [a, b];
    this.status(code).location(url);
    this.setHeader('Content-Type', 'text/plain; charset=utf-8');
    return this.send(`${STATUS_TEXT[code] || 'Found'}. Redirecting to ${url}`);
  }
}

const server = http.createServer({ noDelay: true, maxHeaderSize: 65536, ServerResponse: Response }, handle);
server.keepAliveTimeout = 600000; // idle keep-alive kept 10 min: the router pools connections
server.headersTimeout = 605000;
server.requestTimeout = 0; // no cap on receiving a (large) request body
server.on('clientError', (err, socket) => {
  if (socket.writable && !socket.writableEnded) {
    socket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  } else {
    socket.destroy();
  }
});
// ---------------------------------------------------------------------------
// WebSockets, as Fission's nodejs environment serves them: each connection
// calls the function with (ws, clients), ws shaped as the `ws` package's
// WebSocket before its version 8 (on 'message' with a string for text, a
// Buffer for binary; send, ping, close, terminate, readyState), clients the
// instance's open connections.
// ---------------------------------------------------------------------------

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const UTF8 = new TextDecoder('utf-8', { fatal: true });
const WS_MAX_MESSAGE = 64 * 1024 * 1024;
const wsClients = new Set();

// One frame at the start of buf: {fin, opcode, payload, length}, null when
// it has not all arrived, {error, code} when it breaks the protocol.
function wsFrame(buf) {
  if (buf.length < 2) return null;
  const fin = (buf[0] & 0x80) !== 0;
  const opcode = buf[0] & 0x0f;
  if (buf[0] & 0x70) return { error: 'reserved bits set', code: 1002 };
  if (!(buf[1] & 0x80)) return { error: 'a client frame must be masked', code: 1002 };
  let len = buf[1] & 0x7f;
  let at = 2;
  if (len === 126) {
    if (buf.length < 4) return null;
    len = buf.readUInt16BE(2);
    at = 4;
  } else if (len === 127) {
    if (buf.length < 10) return null;
    const big = buf.readBigUInt64BE(2);
    if (big > BigInt(WS_MAX_MESSAGE)) return { error: 'message too big', code: 1009 };
    len = Number(big);
    at = 10;
  }
  if (opcode >= 0x8 && (!fin || len > 125)) return { error: 'bad control frame', code: 1002 };
  if (buf.length < at + 4 + len) return null;
  const mask = buf.subarray(at, at + 4);
  const payload = Buffer.from(buf.subarray(at + 4, at + 4 + len));
  for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
  return { fin, opcode, payload, length: at + 4 + len };
}

class WebSocket extends require('events').EventEmitter {
  constructor(socket) {
    super();
    this.socket = socket;
    this.readyState = WebSocket.OPEN;
    this.buf = EMPTY;
    this.parts = null; // a fragmented message: [opcode, [payloads], size]
    this.protocol = '';
    socket.on('data', (d) => this.received(d));
    // The peer gone without a close frame (a closed tab, a crashed client):
    // its half-closed connection is finished here, not left open.
    socket.on('end', () => {
      this.socket.end();
      this.ended(1006, '');
    });
    socket.on('close', () => this.ended(1006, ''));
    socket.on('error', (e) => this.listenerCount('error') > 0 && this.emit('error', e));
  }
  received(d) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    while (this.readyState !== WebSocket.CLOSED) {
      const f = wsFrame(this.buf);
      if (f === null) return;
      if (f.error) return this.close(f.code, f.error);
      this.buf = this.buf.subarray(f.length);
      this.frame(f);
    }
  }
  frame(f) {
    if (f.opcode === 0x1 || f.opcode === 0x2 || f.opcode === 0x0) {
      if ((f.opcode === 0x0) === (this.parts === null)) return this.close(1002, 'fragments out of order');
      if (f.opcode !== 0x0) this.parts = [f.opcode, [], 0];
      this.parts[1].push(f.payload);
      this.parts[2] += f.payload.length;
      if (this.parts[2] > WS_MAX_MESSAGE) return this.close(1009, 'message too big');
      if (!f.fin) return undefined;
      const [op, parts] = this.parts;
      this.parts = null;
      const data = parts.length === 1 ? parts[0] : Buffer.concat(parts);
      if (op === 0x2) return this.emit('message', data);
      let text;
      try {
        text = UTF8.decode(data);
      } catch (_) {
        return this.close(1007, 'a text message that is not UTF-8');
      }
      return this.emit('message', text);
    }
    if (f.opcode === 0x8) {
      const code = f.payload.length >= 2 ? f.payload.readUInt16BE(0) : 1005;
      const reason = f.payload.length > 2 ? f.payload.subarray(2).toString('utf8') : '';
      if (this.readyState === WebSocket.OPEN) this.frameOut(0x8, f.payload.subarray(0, 2));
      this.socket.end();
      return this.ended(code, reason);
    }
    if (f.opcode === 0x9) return this.frameOut(0xa, f.payload);
    if (f.opcode === 0xa) return this.emit('pong', f.payload);
    return this.close(1002, 'unknown opcode');
  }
  frameOut(opcode, payload, cb) {
    if (this.socket.destroyed || this.socket.writableEnded) {
      if (cb) cb(new Error('WebSocket is not open'));
      return;
    }
    const n = payload.length;
    const head = Buffer.alloc(n < 126 ? 2 : n < 65536 ? 4 : 10);
    head[0] = 0x80 | opcode;
    if (n < 126) head[1] = n;
    else if (n < 65536) {
      head[1] = 126;
      head.writeUInt16BE(n, 2);
    } else {
      head[1] = 127;
      head.writeBigUInt64BE(BigInt(n), 2);
    }
    this.socket.write(Buffer.concat([head, payload]), cb);
  }
  send(data, opts, cb) {
    if (typeof opts === 'function') [cb, opts] = [opts, undefined];
    if (this.readyState !== WebSocket.OPEN) {
      if (cb) cb(new Error('WebSocket is not open'));
      return;
    }
    let payload;
    if (Buffer.isBuffer(data)) payload = data;
    else if (data instanceof ArrayBuffer) payload = Buffer.from(data);
    else if (ArrayBuffer.isView(data)) payload = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    else payload = Buffer.from(String(data));
    // As the ws package: a string as text, anything else as binary, unless
    // `binary` says otherwise.
    const binary = opts && opts.binary !== undefined ? Boolean(opts.binary) : typeof data !== 'string';
    this.frameOut(binary ? 0x2 : 0x1, payload, cb);
  }
  ping(data) {
    if (this.readyState === WebSocket.OPEN) this.frameOut(0x9, data === undefined ? EMPTY : Buffer.from(String(data)));
  }
  close(code, reason) {
    if (this.readyState !== WebSocket.OPEN) return;
    const why = Buffer.from(String(reason || ''));
    const body = Buffer.alloc(2 + why.length);
    body.writeUInt16BE(code || 1000, 0);
    why.copy(body, 2);
    this.frameOut(0x8, body);
    this.readyState = WebSocket.CLOSING;
    // Nothing more is sent: the peer's close is still read. One that does
    // not close its side is cut off.
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 10000).unref();
  }
  terminate() {
    this.socket.destroy();
    this.ended(1006, '');
  }
  ended(code, reason) {
    if (this.readyState === WebSocket.CLOSED) return;
    this.readyState = WebSocket.CLOSED;
    wsClients.delete(this);
    this.emit('close', code, reason);
  }
}
for (const [name, value] of [['CONNECTING', 0], ['OPEN', 1], ['CLOSING', 2], ['CLOSED', 3]]) {
  WebSocket[name] = value;
  WebSocket.prototype[name] = value;
}

function upgrade(req, socket, head) {
  const key = req.headers['sec-websocket-key'];
  if (userFunction === null || String(req.headers.upgrade).toLowerCase() !== 'websocket' || !key) {
    const why = userFunction === null ? 'not specialized' : 'only WebSocket upgrades are served';
    socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: ${why.length + 1}\r\nConnection: close\r\n\r\n${why}\n`);
    return;
  }
  const accept = require('crypto').createHash('sha1').update(key + WS_GUID).digest('base64');
  // As the ws package: the first subprotocol the client offers, if any.
  const offered = String(req.headers['sec-websocket-protocol'] || '').split(',')[0].trim();
  socket.setNoDelay(true);
  socket.write(
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      `Sec-WebSocket-Accept: ${accept}\r\n${offered ? `Sec-WebSocket-Protocol: ${offered}\r\n` : ''}\r\n`
  );
  const ws = new WebSocket(socket);
  ws.protocol = offered;
  wsClients.add(ws);
  try {
    const r = userFunction(ws, wsClients);
    if (r && typeof r.then === 'function') {
      r.then(undefined, (e) => {
        log(`function failed on a WebSocket: ${errStack(e)}`);
        ws.close(1011, 'the function failed');
      });
    }
  } catch (e) {
    log(`function failed on a WebSocket: ${errStack(e)}`);
    ws.close(1011, 'the function failed');
  }
  if (head && head.length) ws.received(head);
}

server.on('upgrade', upgrade);

// A Unix socket only this instance owns (Fusion sets it on its local backends), else TCP.
const SOCKET = process.env.RUNTIME_SOCKET || '';
const WHERE = SOCKET || `${HOST}:${PORT}`;
server.on('error', (e) => {
  log(`listen ${WHERE} failed: ${errText(e)}`);
  process.exit(1);
});
const listening = () => {
  log(`listening on ${WHERE}`);
  if (process.env.FUSION_NO_STDIN_WATCH !== '1') watchStdin();
};
if (SOCKET) {
  try { require('fs').unlinkSync(SOCKET); } catch (_) { /* not there */ }
  server.listen(SOCKET, listening);
} else {
  server.listen(PORT, HOST, listening);
}
