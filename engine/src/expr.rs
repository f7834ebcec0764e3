//! Expressions: a string that is wholly `{ ... }` is JavaScript, evaluated in QuickJS
//! with `$` (the run's scope), `taskId` and Fission Workflows' helpers (`param`,
//! `input`, `output`, `outputHeaders`, `task`, `uid`). Each evaluation is bounded in
//! time (interrupt handler) and memory. One runtime and context per thread is reused:
//! creating one costs far more than an evaluation. Evaluations run synchronously on
//! the calling thread and never across an `.await`. The common forms (`param()`,
//! `output('X')`, `$.Tasks.X.Output`, `task().Inputs._item`, ...) are resolved
//! first without JavaScript (fastexpr.rs), with the same results.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rquickjs::{Context, Ctx, Runtime};
use serde_json::Value;

use crate::fastexpr;
use crate::spec::{is_task_spec, is_workflow_spec};

/// Time limit of one evaluation.
pub const TIME_LIMIT: Duration = Duration::from_millis(100);
/// Memory limit of a thread's JavaScript runtime.
pub const MEMORY_LIMIT: usize = 32 * 1024 * 1024;

/// An expression that could not be evaluated: which one, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("expression {expr:?} failed: {message}")]
pub struct ExprError {
    pub expr: String,
    pub message: String,
}

impl ExprError {
    /// Whether the failed expression reads the invocation's input (`param()`,
    /// `$.Invocation`): then the input most likely does not fit the workflow,
    /// and a synchronous caller is told so with a 4xx. Not when the
    /// expression itself is wrong, whatever it reads: a name it does not
    /// define (`ReferenceError`). A `SyntaxError` at run time is the input's:
    /// the document's expressions compiled when it was stored, so it comes
    /// from `JSON.parse` of what the caller sent.
    pub fn reads_invocation(&self) -> bool {
        reads_invocation(&self.expr) && !self.message.starts_with("ReferenceError")
    }
}

/// Whether an expression's text can read the run's invocation (the caller's input).
pub fn reads_invocation(expr: &str) -> bool {
    expr.contains("param(") || expr.contains("Invocation")
}

/// The JavaScript source of a string that is an expression (the text inside the
/// outer braces), or None for a literal string.
pub fn expression_source(s: &str) -> Option<&str> {
    let t = s.trim();
    if t.len() >= 2 && t.starts_with('{') && t.ends_with('}') {
        Some(&t[1..t.len() - 1])
    } else {
        None
    }
}

const PRELUDE: &str = r#"
(function (g) {
  function def(name, fn) {
    Object.defineProperty(g, name, { value: fn, writable: false, configurable: false, enumerable: false });
  }
  def('task', function (id) {
    var t = $.Tasks || {};
    return t[id === undefined ? taskId : id];
  });
  def('param', function (key) {
    var inv = $.Invocation || {};
    var ins = inv.Inputs || {};
    return ins[key === undefined ? 'default' : key];
  });
  def('input', function (id, key) {
    var t = task(id);
    if (!t || !t.Inputs) return undefined;
    return t.Inputs[key === undefined ? 'default' : key];
  });
  def('output', function (id) {
    var t = task(id);
    return t ? t.Output : undefined;
  });
  def('outputHeaders', function (id, key) {
    var t = task(id);
    if (!t || !t.OutputHeaders) return undefined;
    return key === undefined ? t.OutputHeaders : t.OutputHeaders[key];
  });
  def('uid', function () {
    var s = '';
    for (var i = 0; i < 32; i++) {
      s += Math.floor(Math.random() * 16).toString(16);
      if (i === 7 || i === 11 || i === 15 || i === 19) s += '-';
    }
    return s;
  });
  // Underscore's helpers, as Fission Workflows' expressions had them (its
  // JavaScript engine loaded underscore): the common ones, same names and
  // arguments. An iteratee may be a function, a property name, or an object
  // of properties to match.
  def('_', (function () {
    var u = {};
    function cb(f) {
      if (f === undefined || f === null) return function (v) { return v; };
      if (typeof f === 'function') return f;
      if (typeof f === 'object') return function (v) { return u.isMatch(v, f); };
      return function (v) { return v == null ? undefined : v[f]; };
    }
    function vals(l) { return Array.isArray(l) ? l : (l == null ? [] : u.values(l)); }
    function ents(l) {
      if (Array.isArray(l)) return l.map(function (v, i) { return [i, v]; });
      return l == null ? [] : Object.keys(l).map(function (k) { return [k, l[k]]; });
    }
    u.each = u.forEach = function (l, f) { ents(l).forEach(function (e) { f(e[1], e[0], l); }); return l; };
    u.map = u.collect = function (l, f) { f = cb(f); return ents(l).map(function (e) { return f(e[1], e[0], l); }); };
    u.filter = u.select = function (l, f) { f = cb(f); return ents(l).filter(function (e) { return f(e[1], e[0], l); }).map(function (e) { return e[1]; }); };
    u.reject = function (l, f) { f = cb(f); return u.filter(l, function (v, k, l2) { return !f(v, k, l2); }); };
    u.reduce = u.foldl = u.inject = function (l, f, memo) {
      var es = ents(l), i = 0;
      if (arguments.length < 3) { memo = es.length ? es[0][1] : undefined; i = 1; }
      for (; i < es.length; i++) memo = f(memo, es[i][1], es[i][0], l);
      return memo;
    };
    u.reduceRight = u.foldr = function (l, f, memo) {
      var es = ents(l).reverse(), i = 0;
      if (arguments.length < 3) { memo = es.length ? es[0][1] : undefined; i = 1; }
      for (; i < es.length; i++) memo = f(memo, es[i][1], es[i][0], l);
      return memo;
    };
    u.find = u.detect = function (l, f) { f = cb(f); var e = ents(l).find(function (e) { return f(e[1], e[0], l); }); return e ? e[1] : undefined; };
    u.every = u.all = function (l, f) { f = cb(f); return ents(l).every(function (e) { return f(e[1], e[0], l); }); };
    u.some = u.any = function (l, f) { f = cb(f); return ents(l).some(function (e) { return f(e[1], e[0], l); }); };
    u.contains = u.include = u.includes = function (l, v) { return vals(l).indexOf(v) >= 0; };
    u.pluck = function (l, k) { return u.map(l, k); };
    u.where = function (l, a) { return u.filter(l, a); };
    u.findWhere = function (l, a) { return u.find(l, a); };
    u.max = function (l, f) { f = cb(f); var best, bv = -Infinity; vals(l).forEach(function (v) { var c = f(v); if (c > bv) { bv = c; best = v; } }); return best === undefined ? -Infinity : best; };
    u.min = function (l, f) { f = cb(f); var best, bv = Infinity; vals(l).forEach(function (v) { var c = f(v); if (c < bv) { bv = c; best = v; } }); return best === undefined ? Infinity : best; };
    u.sortBy = function (l, f) {
      f = cb(f);
      return vals(l).map(function (v, i) { return { v: v, i: i, c: f(v, i, l) }; })
        .sort(function (a, b) { return a.c < b.c ? -1 : a.c > b.c ? 1 : a.i - b.i; })
        .map(function (x) { return x.v; });
    };
    function by(put) {
      return function (l, f) { f = cb(f); var out = {}; vals(l).forEach(function (v, i) { put(out, f(v, i, l), v); }); return out; };
    }
    u.groupBy = by(function (o, k, v) { (o[k] = o[k] || []).push(v); });
    u.indexBy = by(function (o, k, v) { o[k] = v; });
    u.countBy = by(function (o, k) { o[k] = (o[k] || 0) + 1; });
    u.partition = function (l, f) { f = cb(f); var p = [[], []]; vals(l).forEach(function (v, i) { p[f(v, i, l) ? 0 : 1].push(v); }); return p; };
    u.size = function (l) { return vals(l).length; };
    u.toArray = function (l) { return vals(l).slice(); };
    u.first = u.head = u.take = function (a, n) { return n === undefined ? (a || [])[0] : (a || []).slice(0, Math.max(0, n)); };
    u.last = function (a, n) { a = a || []; return n === undefined ? a[a.length - 1] : a.slice(Math.max(0, a.length - n)); };
    u.initial = function (a, n) { a = a || []; return a.slice(0, Math.max(0, a.length - (n === undefined ? 1 : n))); };
    u.rest = u.tail = u.drop = function (a, n) { return (a || []).slice(n === undefined ? 1 : n); };
    u.compact = function (a) { return (a || []).filter(Boolean); };
    u.flatten = function (a, shallow) {
      var out = [];
      (a || []).forEach(function (v) { if (Array.isArray(v)) { out.push.apply(out, shallow ? v : u.flatten(v)); } else { out.push(v); } });
      return out;
    };
    u.uniq = u.unique = function (a, sorted, f) {
      if (typeof sorted !== 'boolean') { f = sorted; }
      f = cb(f); var seen = [], out = [];
      (a || []).forEach(function (v, i) { var c = f(v, i, a); if (seen.indexOf(c) < 0) { seen.push(c); out.push(v); } });
      return out;
    };
    u.without = function (a) { var drop = Array.prototype.slice.call(arguments, 1); return (a || []).filter(function (v) { return drop.indexOf(v) < 0; }); };
    u.union = function () { return u.uniq(u.flatten(Array.prototype.slice.call(arguments), true)); };
    u.intersection = function (a) {
      var others = Array.prototype.slice.call(arguments, 1);
      return u.uniq(a || []).filter(function (v) { return others.every(function (o) { return (o || []).indexOf(v) >= 0; }); });
    };
    u.difference = function (a) {
      var others = u.flatten(Array.prototype.slice.call(arguments, 1), true);
      return (a || []).filter(function (v) { return others.indexOf(v) < 0; });
    };
    u.zip = function () {
      var as = Array.prototype.slice.call(arguments), n = Math.max.apply(null, as.map(function (a) { return a.length; }).concat(0));
      var out = []; for (var i = 0; i < n; i++) out.push(as.map(function (a) { return a[i]; })); return out;
    };
    u.object = function (l, vs) { var o = {}; (l || []).forEach(function (k, i) { if (vs) { o[k] = vs[i]; } else { o[k[0]] = k[1]; } }); return o; };
    u.indexOf = function (a, v) { return (a || []).indexOf(v); };
    u.lastIndexOf = function (a, v) { return (a || []).lastIndexOf(v); };
    u.range = function (start, stop, step) {
      if (stop === undefined) { stop = start || 0; start = 0; }
      step = step || 1; var out = [];
      for (var i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
      return out;
    };
    u.keys = function (o) { return o !== null && typeof o === 'object' ? Object.keys(o) : []; };
    u.values = function (o) { return u.keys(o).map(function (k) { return o[k]; }); };
    u.pairs = function (o) { return u.keys(o).map(function (k) { return [k, o[k]]; }); };
    u.invert = function (o) { var r = {}; u.keys(o).forEach(function (k) { r[o[k]] = k; }); return r; };
    u.mapObject = function (o, f) { f = cb(f); var r = {}; u.keys(o).forEach(function (k) { r[k] = f(o[k], k, o); }); return r; };
    u.extend = function (o) { Array.prototype.slice.call(arguments, 1).forEach(function (s) { u.keys(s).forEach(function (k) { o[k] = s[k]; }); }); return o; };
    u.defaults = function (o) { Array.prototype.slice.call(arguments, 1).forEach(function (s) { u.keys(s).forEach(function (k) { if (o[k] === undefined) o[k] = s[k]; }); }); return o; };
    u.clone = function (o) { return Array.isArray(o) ? o.slice() : (u.isObject(o) ? u.extend({}, o) : o); };
    u.pick = function (o) { var ks = u.flatten(Array.prototype.slice.call(arguments, 1)), r = {}; ks.forEach(function (k) { if (o != null && k in Object(o)) r[k] = o[k]; }); return r; };
    u.omit = function (o) { var ks = u.flatten(Array.prototype.slice.call(arguments, 1)).map(String), r = {}; u.keys(o).forEach(function (k) { if (ks.indexOf(k) < 0) r[k] = o[k]; }); return r; };
    u.has = function (o, k) { return o != null && Object.prototype.hasOwnProperty.call(o, k); };
    u.isMatch = function (o, a) { return u.keys(a).every(function (k) { return o != null && u.isEqual(o[k], a[k]); }); };
    u.isEqual = function (a, b) { return JSON.stringify(a) === JSON.stringify(b); };
    u.isEmpty = function (o) { return o == null || (typeof o === 'string' || Array.isArray(o) ? o.length === 0 : u.keys(o).length === 0); };
    u.isArray = Array.isArray;
    u.isObject = function (o) { return typeof o === 'function' || (typeof o === 'object' && o !== null); };
    u.isFunction = function (o) { return typeof o === 'function'; };
    u.isString = function (o) { return typeof o === 'string'; };
    u.isNumber = function (o) { return typeof o === 'number'; };
    u.isBoolean = function (o) { return o === true || o === false; };
    u.isNull = function (o) { return o === null; };
    u.isUndefined = function (o) { return o === undefined; };
    u.isFinite = function (o) { return typeof o === 'number' && isFinite(o); };
    u.isNaN = function (o) { return typeof o === 'number' && o !== o; };
    u.identity = function (v) { return v; };
    u.constant = function (v) { return function () { return v; }; };
    u.times = function (n, f) { var out = []; for (var i = 0; i < n; i++) out.push(f(i)); return out; };
    u.escape = function (s) {
      return String(s).replace(/[&<>"'`]/g, function (c) { return { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#x27;', '`': '&#x60;' }[c]; });
    };
    return u;
  })());
  def('__compile', function (src) {
    try {
      new Function('return (' + src + '\n);');
    } catch (e) {
      if (!(e instanceof SyntaxError)) throw e;
      new Function(src);
    }
    return true;
  });
  def('__run', function (src) {
    var f = null;
    try {
      f = new Function('return (' + src + '\n);');
    } catch (e) {
      if (!(e instanceof SyntaxError)) throw e;
    }
    // Statements run through a direct eval inside a function, so their `var`s
    // stay local to this evaluation instead of leaking into the next one.
    var v = f ? f() : (function () { return eval(src); })();
    if (v === undefined || typeof v === 'function') return null;
    var out = JSON.stringify(v);
    return out === undefined ? null : out;
  });
  // Nothing an evaluation does may reach the next one (another task, another
  // run): the built-ins and their prototypes are frozen and made read-only
  // globals, and `__reset` removes whatever globals an evaluation added.
  var writable = { $: true, taskId: true, __src: true, __inputs: true };
  var seen = new Set([g]);
  function freeze(o) {
    if (o === null || (typeof o !== 'object' && typeof o !== 'function') || seen.has(o)) return;
    seen.add(o);
    Object.freeze(o);
    Reflect.ownKeys(o).forEach(function (k) {
      var d = Object.getOwnPropertyDescriptor(o, k);
      if (d && 'value' in d) freeze(d.value);
      if (d && d.get) freeze(d.get);
      if (d && d.set) freeze(d.set);
    });
    freeze(Object.getPrototypeOf(o));
  }
  var keep = new Set(Reflect.ownKeys(g));
  var proto = Object.getPrototypeOf(g);
  Reflect.ownKeys(g).forEach(function (k) {
    if (writable[k]) return;
    var d = Object.getOwnPropertyDescriptor(g, k);
    if ('value' in d) freeze(d.value);
    if (d.configurable) Object.defineProperty(g, k, { writable: false, configurable: false });
  });
  freeze(proto);
  Object.defineProperty(g, '__reset', {
    value: function () {
      var clean = true;
      Reflect.ownKeys(g).forEach(function (k) {
        // `$`, `taskId` and the like are set anew before every evaluation.
        if (keep.has(k) || writable[k]) return;
        try {
          if (!delete g[k]) clean = false;
        } catch (e) {
          clean = false;
        }
      });
      if (Object.getPrototypeOf(g) !== proto && !Reflect.setPrototypeOf(g, proto)) clean = false;
      return clean;
    },
    writable: false, configurable: false, enumerable: false
  });
  // Defined after `keep` was taken: without this, every reset failed on it and
  // the runtime was rebuilt after every evaluation.
  keep.add('__reset');
})(globalThis);
"#;

struct Js {
    runtime: Runtime,
    context: Context,
    deadline: Arc<AtomicU64>,
    base: Instant,
    /// Set when an evaluation left state behind that could not be removed: the
    /// runtime is dropped and a fresh one made for the next evaluation.
    tainted: Cell<bool>,
}

impl Js {
    fn new() -> Result<Js, String> {
        let runtime = Runtime::new().map_err(|e| e.to_string())?;
        runtime.set_memory_limit(MEMORY_LIMIT);
        runtime.set_max_stack_size(512 * 1024);
        let deadline = Arc::new(AtomicU64::new(0));
        let base = Instant::now();
        let d = deadline.clone();
        runtime.set_interrupt_handler(Some(Box::new(move || {
            let at = d.load(Ordering::Relaxed);
            at != 0 && base.elapsed().as_nanos() as u64 > at
        })));
        let context = Context::full(&runtime).map_err(|e| e.to_string())?;
        context.with(|ctx| {
            ctx.eval::<(), _>("var $ = {}; var taskId = ''; var __src = ''; var __inputs = '';")
                .and_then(|_| ctx.eval::<(), _>(PRELUDE))
                .map_err(|e| caught(&ctx, e))
        })?;
        Ok(Js {
            runtime,
            context,
            deadline,
            base,
            tainted: Cell::new(false),
        })
    }

    fn arm(&self) {
        let at = self.base.elapsed() + TIME_LIMIT;
        self.deadline
            .store(at.as_nanos().max(1) as u64, Ordering::Relaxed);
    }

    fn disarm(&self) {
        self.deadline.store(0, Ordering::Relaxed);
    }

    fn timed_out(&self) -> bool {
        let at = self.deadline.load(Ordering::Relaxed);
        at != 0 && self.base.elapsed().as_nanos() as u64 > at
    }
}

thread_local! {
    static JS: RefCell<Option<Js>> = const { RefCell::new(None) };
    /// Runtimes created on this thread (tests check that they are reused).
    static CREATED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Expressions evaluated in JavaScript on this thread (tests check which
    /// ones are not).
    static JS_EVALS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn with_js<R>(f: impl FnOnce(&Js) -> Result<R, String>) -> Result<R, String> {
    JS.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Js::new()?);
            CREATED.with(|c| c.set(c.get() + 1));
        }
        let js = slot.as_ref().ok_or("no JavaScript runtime")?;
        let result = f(js);
        js.disarm();
        let oom = matches!(&result, Err(msg) if msg.contains("out of memory"));
        // A runtime that ran out of memory, or that an evaluation left changed,
        // is not trusted again.
        if oom || js.tainted.get() {
            *slot = None;
        }
        result
    })
}

fn caught(ctx: &Ctx<'_>, err: rquickjs::Error) -> String {
    if !err.is_exception() {
        return err.to_string();
    }
    let v = ctx.catch();
    if let Some(exc) = v.as_exception() {
        let msg = exc.message().unwrap_or_default();
        let name: Option<String> = exc.get("name").ok();
        return match name {
            Some(n) if !n.is_empty() => format!("{n}: {msg}"),
            _ => msg,
        };
    }
    if let Some(s) = v.as_string().and_then(|s| s.to_string().ok()) {
        return s;
    }
    ctx.json_stringify(v)
        .ok()
        .flatten()
        .and_then(|s| s.to_string().ok())
        .unwrap_or_else(|| "exception".to_string())
}

/// Checks that an expression's JavaScript compiles, without running it.
pub fn check_syntax(source: &str) -> Result<(), String> {
    if fastexpr::handles(source) {
        return Ok(());
    }
    with_js(|js| {
        js.arm();
        js.context.with(|ctx| {
            ctx.globals()
                .set("__src", source)
                .map_err(|e| e.to_string())?;
            ctx.eval::<bool, _>("__compile(__src)")
                .map(|_| ())
                .map_err(|e| caught(&ctx, e))
        })
    })
}

/// An evaluator with `$` and `taskId` set, for the duration of one closure.
/// `$` is handed to JavaScript only when an expression needs it; until then the
/// common forms are read from `scope` directly.
pub struct Evaluator<'a> {
    js: &'a Js,
    scope: &'a Value,
    task_id: &'a str,
    /// The current task's inputs, as `set_task_inputs` last set them.
    inputs: RefCell<Option<Value>>,
    /// Whether `$` and `taskId` are set in JavaScript. From then on every
    /// expression is evaluated there: one may have changed `$`.
    live: Cell<bool>,
}

impl Evaluator<'_> {
    /// Evaluates one expression string (with its braces).
    pub fn eval(&self, expr: &str) -> Result<Value, ExprError> {
        if !self.live.get() {
            let source = expression_source(expr).unwrap_or(expr);
            let inputs = self.inputs.borrow();
            let view = fastexpr::View {
                scope: self.scope,
                task_id: self.task_id,
                inputs: inputs.as_ref(),
            };
            if let Some(v) = fastexpr::eval(source, &view) {
                return Ok(v);
            }
        }
        self.eval_js(expr)
    }

    /// Sets `$`, `taskId` and the current task's inputs in JavaScript, once.
    fn go_live(&self) -> Result<(), String> {
        if self.live.get() {
            return Ok(());
        }
        let scope_json = self.scope.to_string();
        self.js.context.with(|ctx| {
            let v = ctx.json_parse(scope_json).map_err(|e| caught(&ctx, e))?;
            ctx.globals().set("$", v).map_err(|e| e.to_string())?;
            ctx.globals()
                .set("taskId", self.task_id)
                .map_err(|e| e.to_string())
        })?;
        self.live.set(true);
        if let Some(inputs) = self.inputs.borrow().as_ref() {
            self.set_inputs_js(inputs).map_err(|e| e.message)?;
        }
        Ok(())
    }

    /// Evaluates one expression string in JavaScript.
    fn eval_js(&self, expr: &str) -> Result<Value, ExprError> {
        let source = expression_source(expr).unwrap_or(expr);
        let err = |message: String| ExprError {
            expr: expr.to_string(),
            message,
        };
        self.go_live().map_err(err)?;
        JS_EVALS.with(|c| c.set(c.get() + 1));
        self.js.arm();
        let out = self.js.context.with(|ctx| {
            ctx.globals()
                .set("__src", source)
                .map_err(|e| e.to_string())?;
            ctx.eval::<Option<String>, _>("__run(__src)")
                .map_err(|e| caught(&ctx, e))
        });
        // Promise jobs an expression queued run now, under the same deadline,
        // so none outlive the evaluation or pile up on the runtime.
        let mut jobs = 0;
        while self.js.runtime.is_job_pending() && jobs < 10_000 && !self.js.timed_out() {
            if self.js.runtime.execute_pending_job().is_err() {
                break;
            }
            jobs += 1;
        }
        if self.js.runtime.is_job_pending() {
            self.js.tainted.set(true);
        }
        let timed_out = self.js.timed_out();
        self.js.disarm();
        let clean = self
            .js
            .context
            .with(|ctx| ctx.eval::<bool, _>("__reset()").unwrap_or(false));
        if !clean {
            self.js.tainted.set(true);
        }
        match out {
            Ok(None) => Ok(Value::Null),
            Ok(Some(json)) => serde_json::from_str(&json).map_err(|e| err(e.to_string())),
            Err(_) if timed_out => Err(err(format!(
                "timed out after {} ms",
                TIME_LIMIT.as_millis()
            ))),
            Err(msg) => Err(err(msg)),
        }
    }

    /// Evaluates expressions in a value, recursively through maps and lists but
    /// not inside embedded task or workflow specs.
    pub fn resolve(&self, value: &Value) -> Result<Value, ExprError> {
        match value {
            Value::String(s) if expression_source(s).is_some() => self.eval(s),
            Value::Array(items) => items
                .iter()
                .map(|v| self.resolve(v))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(_) if is_task_spec(value) || is_workflow_spec(value) => Ok(value.clone()),
            Value::Object(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    out.insert(k.clone(), self.resolve(v)?);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    /// Replaces the current task's `Inputs` in `$.Tasks`.
    pub fn set_task_inputs(&self, inputs: &Value) -> Result<(), ExprError> {
        *self.inputs.borrow_mut() = Some(inputs.clone());
        if self.live.get() {
            self.set_inputs_js(inputs)?;
        }
        Ok(())
    }

    fn set_inputs_js(&self, inputs: &Value) -> Result<(), ExprError> {
        let json = inputs.to_string();
        self.js
            .context
            .with(|ctx| {
                ctx.globals().set("__inputs", json)?;
                ctx.eval::<(), _>(
                    "if (!$.Tasks) $.Tasks = {}; if (!$.Tasks[taskId]) $.Tasks[taskId] = {}; \
                     $.Tasks[taskId].Inputs = JSON.parse(__inputs);",
                )
            })
            .map_err(|e| ExprError {
                expr: String::new(),
                message: e.to_string(),
            })
    }
}

/// Runs `f` with `$` set to `scope` and `taskId` to `task_id`.
pub fn with_scope<R>(
    scope: &Value,
    task_id: &str,
    f: impl FnOnce(&Evaluator<'_>) -> Result<R, ExprError>,
) -> Result<R, ExprError> {
    let mut inner: Option<Result<R, ExprError>> = None;
    let setup = with_js(|js| {
        inner = Some(f(&Evaluator {
            js,
            scope,
            task_id,
            inputs: RefCell::new(None),
            live: Cell::new(false),
        }));
        Ok(())
    });
    match setup {
        Err(message) => Err(ExprError {
            expr: String::new(),
            message,
        }),
        Ok(()) => inner.unwrap_or_else(|| {
            Err(ExprError {
                expr: String::new(),
                message: "evaluation did not run".into(),
            })
        }),
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// An evaluator thread: where to send it jobs, and its kernel thread id.
struct Worker {
    jobs: mpsc::Sender<Job>,
    tid: i32,
}

/// Evaluator threads waiting for work.
static IDLE: Mutex<Vec<Worker>> = Mutex::new(Vec::new());
/// Evaluator threads given up on (still running an evaluation the interrupt
/// handler cannot stop).
static RUNAWAY: AtomicUsize = AtomicUsize::new(0);
/// Beyond this many runaway evaluations, new ones are refused rather than
/// starting more threads that burn CPU.
const MAX_RUNAWAY: usize = 8;

fn evaluator_thread() -> Result<Worker, String> {
    let (jobs, rx) = mpsc::channel::<Job>();
    let (tid_tx, tid_rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("fusion-expr".into())
        .spawn(move || {
            let _ = tid_tx.send(pool_manager::sys::thread_id());
            while let Ok(job) = rx.recv() {
                job();
            }
        })
        .map_err(|e| format!("cannot start an evaluator thread: {e}"))?;
    let tid = tid_rx
        .recv()
        .map_err(|_| "an evaluator thread stopped at its start".to_string())?;
    Ok(Worker { jobs, tid })
}

/// Moves a thread given up on to the idle scheduling class. What it still
/// computes (native work QuickJS does not interrupt: `Array(1e9).join('x')`
/// runs 26 s, a sort over a length of 2^32 - 1 more than four minutes) then
/// takes only CPU time nothing else wants, instead of up to `MAX_RUNAWAY` cores
/// from the server. The thread ends once its evaluation does.
fn demote(tid: i32) {
    // A thread that ended meanwhile fails with ESRCH, which changes nothing.
    if let Err(e) = pool_manager::sys::make_thread_idle(tid) {
        tracing::debug!("cannot lower a runaway evaluator thread's priority: {e}");
    }
}

/// Runs `job` (JavaScript evaluations) on an evaluator thread and waits at most
/// `limit`. QuickJS's interrupt handler stops runaway JavaScript (and, since
/// QuickJS-ng 0.16, a backtracking regular expression), but not all native
/// work: `Array(1e9).join('x')` would otherwise hold the calling thread (a
/// tokio worker, and the run) for 26 s, a sort over a huge length for longer.
/// Such a thread is given up on: it ends when its evaluation does, at idle
/// priority meanwhile (`demote`).
fn isolated<R: Send + 'static>(
    limit: Duration,
    job: impl FnOnce() -> R + Send + 'static,
) -> Result<R, String> {
    if RUNAWAY.load(Ordering::Relaxed) >= MAX_RUNAWAY {
        return Err("too many runaway expressions are still running; try again later".into());
    }
    let worker = IDLE.lock().ok().and_then(|mut idle| idle.pop());
    let worker = match worker {
        Some(w) => w,
        None => evaluator_thread()?,
    };
    let (tx, rx) = mpsc::sync_channel(1);
    let abandoned = Arc::new(AtomicBool::new(false));
    let flag = abandoned.clone();
    let job: Job = Box::new(move || {
        let r = job();
        if flag.load(Ordering::SeqCst) {
            RUNAWAY.fetch_sub(1, Ordering::SeqCst);
        }
        let _ = tx.send(r);
    });
    let worker = match worker.jobs.send(job) {
        Ok(()) => worker,
        Err(mpsc::SendError(job)) => {
            // That thread is gone (a panic): use a new one.
            let w = evaluator_thread()?;
            w.jobs
                .send(job)
                .map_err(|_| "the evaluator thread stopped".to_string())?;
            w
        }
    };
    match rx.recv_timeout(limit) {
        Ok(r) => {
            if let Ok(mut idle) = IDLE.lock() {
                idle.push(worker);
            }
            Ok(r)
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            RUNAWAY.fetch_add(1, Ordering::SeqCst);
            abandoned.store(true, Ordering::SeqCst);
            // The job may have ended between the timeout and the flag.
            if let Ok(r) = rx.try_recv() {
                return Ok(r);
            }
            demote(worker.tid);
            Err(format!("timed out after {} ms", TIME_LIMIT.as_millis()))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("the evaluation failed".into()),
    }
}

/// How long a job of `n` evaluations may take on its evaluator thread: each has
/// its own time limit, and the setup of `$` is not free.
fn job_limit(n: usize) -> Duration {
    TIME_LIMIT * (n as u32).max(1) + Duration::from_millis(500)
}

/// Runs one expression (the `javascript` built-in) on an evaluator thread with
/// `$` set to `scope`.
pub fn eval_isolated(scope: Value, expr: String) -> Result<Value, ExprError> {
    let e = expr.clone();
    isolated(job_limit(1), move || {
        with_scope(&scope, "", |ev| ev.eval(&e))
    })
    .unwrap_or_else(|message| Err(ExprError { expr, message }))
}

/// Resolves a task's named inputs: inputs whose name starts with `_` (injected by
/// built-ins: `_item`, `_prev`, ...) first, so the others can read them through
/// `task().Inputs`. The common forms are resolved here, without JavaScript; any
/// other expression sends them all to an evaluator thread (see `isolated`).
pub fn resolve_inputs(
    scope: &Value,
    task_id: &str,
    inputs: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, ExprError> {
    if !inputs.values().any(contains_expression) {
        return Ok(inputs.clone());
    }
    // The common forms need neither JavaScript nor an evaluator thread.
    if let Some(out) = resolve_inputs_fast(scope, task_id, inputs) {
        return Ok(out);
    }
    let mut exprs = Vec::new();
    for v in inputs.values() {
        all_expressions(v, &mut exprs);
    }
    let first = exprs.first().cloned().unwrap_or_default();
    let (scope, task_id, inputs) = (scope.clone(), task_id.to_string(), inputs.clone());
    isolated(job_limit(exprs.len()), move || {
        resolve_inputs_here(&scope, &task_id, &inputs)
    })
    .unwrap_or_else(|message| {
        Err(ExprError {
            expr: first,
            message,
        })
    })
}

/// `resolve_inputs_here` without JavaScript: None as soon as one expression
/// needs it (nothing was changed by the ones before: they only read).
fn resolve_inputs_fast(
    scope: &Value,
    task_id: &str,
    inputs: &BTreeMap<String, Value>,
) -> Option<BTreeMap<String, Value>> {
    let view = fastexpr::View {
        scope,
        task_id,
        inputs: None,
    };
    let mut out = BTreeMap::new();
    for (k, v) in inputs.iter().filter(|(k, _)| k.starts_with('_')) {
        out.insert(k.clone(), resolve_fast(v, &view)?);
    }
    let partial = Value::Object(
        inputs
            .iter()
            .map(|(k, v)| (k.clone(), out.get(k).cloned().unwrap_or_else(|| v.clone())))
            .collect(),
    );
    let view = fastexpr::View {
        scope,
        task_id,
        inputs: Some(&partial),
    };
    for (k, v) in inputs.iter().filter(|(k, _)| !k.starts_with('_')) {
        let r = resolve_fast(v, &view)?;
        out.insert(k.clone(), r);
    }
    Some(out)
}

/// `Evaluator::resolve` without JavaScript, or None.
fn resolve_fast(value: &Value, view: &fastexpr::View<'_>) -> Option<Value> {
    match value {
        Value::String(s) => match expression_source(s) {
            Some(src) => fastexpr::eval(src, view),
            None => Some(value.clone()),
        },
        Value::Array(items) => items
            .iter()
            .map(|v| resolve_fast(v, view))
            .collect::<Option<Vec<_>>>()
            .map(Value::Array),
        Value::Object(_) if is_task_spec(value) || is_workflow_spec(value) => Some(value.clone()),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Some((k.clone(), resolve_fast(v, view)?)))
            .collect::<Option<serde_json::Map<_, _>>>()
            .map(Value::Object),
        other => Some(other.clone()),
    }
}

fn resolve_inputs_here(
    scope: &Value,
    task_id: &str,
    inputs: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, ExprError> {
    with_scope(scope, task_id, |ev| {
        let mut out = BTreeMap::new();
        for (k, v) in inputs.iter().filter(|(k, _)| k.starts_with('_')) {
            out.insert(k.clone(), ev.resolve(v)?);
        }
        let partial = Value::Object(
            inputs
                .iter()
                .map(|(k, v)| (k.clone(), out.get(k).cloned().unwrap_or_else(|| v.clone())))
                .collect(),
        );
        ev.set_task_inputs(&partial)?;
        for (k, v) in inputs.iter().filter(|(k, _)| !k.starts_with('_')) {
            out.insert(k.clone(), ev.resolve(v)?);
        }
        Ok(out)
    })
}

/// Whether a value holds an expression outside embedded specs.
pub fn contains_expression(value: &Value) -> bool {
    match value {
        Value::String(s) => expression_source(s).is_some(),
        Value::Array(items) => items.iter().any(contains_expression),
        Value::Object(_) if is_task_spec(value) || is_workflow_spec(value) => false,
        Value::Object(m) => m.values().any(contains_expression),
        _ => false,
    }
}

/// Every expression string in a value, embedded specs included (for validation).
/// Whether these expressions reach tasks only by literal name (`$.Tasks.X`,
/// `output('X')`, `task()`, ...), so that a scope holding just the tasks whose
/// names appear in them (and the current task) gives the same results. A
/// computed reference (`$.Tasks[k]`, `output(name)`, `Object.keys($.Tasks)`)
/// needs every task.
pub fn names_tasks_literally(sources: &[String]) -> bool {
    const HELPERS: [&str; 4] = ["task(", "input(", "output(", "outputHeaders("];
    sources.iter().all(|src| {
        let tasks_by_dot = src
            .match_indices("Tasks")
            .all(|(i, _)| src[i + "Tasks".len()..].starts_with('.'));
        // The first argument a whole string literal (`output('T' + i)` is
        // computed), or none.
        let helpers_by_literal = HELPERS.iter().all(|h| {
            src.match_indices(h).all(|(i, _)| {
                let arg = src[i + h.len()..].trim_start();
                let Some(quote) = arg.chars().next().filter(|c| ['\'', '"'].contains(c)) else {
                    return arg.starts_with(')');
                };
                arg[1..].split_once(quote).is_some_and(|(name, rest)| {
                    !name.contains('\\') && rest.trim_start().starts_with([')', ','])
                })
            })
        });
        // `$` itself only through a named member (`$.Tasks.`, `$.Invocation`, ...).
        let scope_by_member = src
            .match_indices('$')
            .all(|(i, _)| src[i + 1..].starts_with('.'));
        tasks_by_dot && helpers_by_literal && scope_by_member
    })
}

pub fn all_expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) if expression_source(s).is_some() => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| all_expressions(v, out)),
        Value::Object(m) => m.values().for_each(|v| all_expressions(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A failed expression that reads the caller's input blames the input
    /// (422) when the input could be why (`null` has no `trim`), not when the
    /// expression is wrong whatever comes (a name it never defined).
    #[test]
    fn an_expressions_own_mistake_is_not_blamed_on_the_input() {
        let failed = |message: &str| ExprError {
            expr: "{ nope(param()).trim() }".into(),
            message: message.into(),
        };
        assert!(failed("TypeError: cannot read property 'trim' of null").reads_invocation());
        assert!(!failed("ReferenceError: nope is not defined").reads_invocation());
        // Stored expressions compile: a SyntaxError is `JSON.parse` of the input.
        assert!(failed("SyntaxError: unexpected token in JSON").reads_invocation());
    }

    fn scope() -> Value {
        json!({
            "Workflow": {"Name": "wf"},
            "Invocation": {"Id": "r1", "Inputs": {"default": "hello", "n": 3}},
            "Tasks": {
                "A": {"Status": "succeeded", "Output": {"x": 42}, "OutputHeaders": {"Content-Type": "application/json"}, "Inputs": {"default": "in-a"}},
                "B": {"Status": "running", "Inputs": {"default": 1, "other": "o"}}
            }
        })
    }

    fn eval(expr: &str) -> Result<Value, ExprError> {
        with_scope(&scope(), "B", |ev| ev.eval(expr))
    }

    /// Underscore's helpers, as Fission Workflows' expressions had them.
    #[test]
    fn underscore_helpers() {
        let people = "[{n: 'ada', a: 36}, {n: 'bob', a: 20}, {n: 'cy', a: 36}]";
        for (expr, want) in [
            (format!("{{ _.pluck({people}, 'n') }}"), json!(["ada", "bob", "cy"])),
            (format!("{{ _.sortBy({people}, 'a').map(function (p) {{ return p.n; }}) }}"), json!(["bob", "ada", "cy"])),
            (format!("{{ _.groupBy({people}, 'a')['36'].length }}"), json!(2)),
            (format!("{{ _.countBy({people}, function (p) {{ return p.a > 30 ? 'old' : 'young'; }}) }}"), json!({"old": 2, "young": 1})),
            (format!("{{ _.findWhere({people}, {{a: 20}}).n }}"), json!("bob")),
            (format!("{{ _.where({people}, {{a: 36}}).length }}"), json!(2)),
            (format!("{{ _.max({people}, 'a').n }}"), json!("ada")),
            ("{ _.map({a: 1, b: 2}, function (v, k) { return k + v; }) }".into(), json!(["a1", "b2"])),
            ("{ _.filter([1, 2, 3, 4], function (x) { return x % 2; }) }".into(), json!([1, 3])),
            ("{ _.reduce([1, 2, 3], function (m, x) { return m + x; }, 10) }".into(), json!(16)),
            ("{ _.reduce([1, 2, 3], function (m, x) { return m + x; }) }".into(), json!(6)),
            ("{ _.uniq([1, 2, 1, 3, 2]) }".into(), json!([1, 2, 3])),
            ("{ _.flatten([1, [2, [3]]]) }".into(), json!([1, 2, 3])),
            ("{ _.flatten([1, [2, [3]]], true) }".into(), json!([1, 2, [3]])),
            ("{ _.difference([1, 2, 3], [2], [3]) }".into(), json!([1])),
            ("{ _.intersection([1, 2, 3], [2, 3], [3, 2]) }".into(), json!([2, 3])),
            ("{ _.union([1, 2], [2, 3]) }".into(), json!([1, 2, 3])),
            ("{ _.without([1, 2, 1, 3], 1) }".into(), json!([2, 3])),
            ("{ _.zip(['a', 'b'], [1, 2]) }".into(), json!([["a", 1], ["b", 2]])),
            ("{ _.object([['a', 1], ['b', 2]]) }".into(), json!({"a": 1, "b": 2})),
            ("{ _.range(0, 10, 3) }".into(), json!([0, 3, 6, 9])),
            ("{ _.keys(param('n') ? {x: 1, y: 2} : {}) }".into(), json!(["x", "y"])),
            ("{ _.pick({a: 1, b: 2, c: 3}, 'a', 'c') }".into(), json!({"a": 1, "c": 3})),
            ("{ _.omit({a: 1, b: 2}, 'a') }".into(), json!({"b": 2})),
            ("{ _.extend({a: 1}, {b: 2}, {a: 3}) }".into(), json!({"a": 3, "b": 2})),
            ("{ [_.isEmpty([]), _.isEmpty({a: 1}), _.isString(param()), _.contains([1, 2], 2)] }".into(), json!([true, false, true, true])),
            ("{ [_.first([1, 2, 3]), _.last([1, 2, 3]), _.rest([1, 2, 3]), _.compact([0, 1, '', 2])] }".into(), json!([1, 3, [2, 3], [1, 2]])),
            ("{ _.escape('<a href=\"x\">') }".into(), json!("&lt;a href=&quot;x&quot;&gt;")),
            ("{ _.times(3, function (i) { return i * i; }) }".into(), json!([0, 1, 4])),
        ] {
            assert_eq!(eval(&expr).unwrap(), want, "{expr}");
        }
        // Read-only, as every built-in: an evaluation cannot change it for the next.
        let _ = eval("{ _.pluck = function () { return 'changed'; } }");
        assert_eq!(eval("{ _.pluck([{n: 1}], 'n') }").unwrap(), json!([1]));
    }

    #[test]
    fn helpers() {
        assert_eq!(eval("{ param() }").unwrap(), json!("hello"));
        assert_eq!(eval("{ param('n') + 1 }").unwrap(), json!(4));
        assert_eq!(eval("{ $.Tasks.A.Output.x }").unwrap(), json!(42));
        assert_eq!(eval("{ output('A').x }").unwrap(), json!(42));
        assert_eq!(eval("{ input() }").unwrap(), json!(1));
        assert_eq!(eval("{ input('B', 'other') }").unwrap(), json!("o"));
        assert_eq!(eval("{ input('A') }").unwrap(), json!("in-a"));
        assert_eq!(
            eval("{ outputHeaders('A', 'Content-Type') }").unwrap(),
            json!("application/json")
        );
        assert_eq!(eval("{ task().Status }").unwrap(), json!("running"));
        assert_eq!(eval("{ task('A').Status }").unwrap(), json!("succeeded"));
        assert_eq!(eval("{ taskId }").unwrap(), json!("B"));
        assert_eq!(eval("{ uid().length }").unwrap(), json!(36));
        assert_eq!(eval("{ $.Workflow.Name }").unwrap(), json!("wf"));
        assert_eq!(eval("{ {a: 1} }").unwrap(), json!({"a": 1}));
        assert_eq!(eval("{ undefined }").unwrap(), Value::Null);
        assert_eq!(eval("{ var x = 2; x * 3 }").unwrap(), json!(6));
        assert_eq!(eval("{ let y = 2; y * 4 }").unwrap(), json!(8));
        assert_eq!(eval("{ let y = 3; y * 4 }").unwrap(), json!(12));
    }

    #[test]
    fn literal_task_references_are_told_from_computed_ones() {
        let lit = |s: &str| names_tasks_literally(&[s.to_string()]);
        assert!(lit(
            "{ $.Tasks.A.Output + output('B') + task().Inputs._item }"
        ));
        assert!(lit(
            "{ input(\"C\", 'x') + outputHeaders( 'D') + param() + taskId }"
        ));
        assert!(!lit("{ $.Tasks[name].Output }"));
        assert!(!lit("{ Object.keys($.Tasks).length }"));
        assert!(!lit("{ output(prev) }"));
        assert!(!lit("{ task(ids[0]).Status }"));
        assert!(!lit("{ JSON.stringify($) }"));
        assert!(!lit("{ $['Tasks'] }"));
        assert!(!lit("{ [0, 1].map(i => output('T' + i)) }"));
        assert!(!lit("{ output(`T${i}`) }"));
    }

    #[test]
    fn clean_evaluations_reuse_the_runtime() {
        // Creating a runtime costs milliseconds; an evaluation, microseconds.
        eval("{ 1 }").unwrap();
        let before = CREATED.with(|c| c.get());
        for _ in 0..5 {
            eval("{ task().Inputs.default + param() }").unwrap();
        }
        assert_eq!(CREATED.with(|c| c.get()), before, "the runtime was rebuilt");
    }

    #[test]
    fn queued_promise_jobs_do_not_outlive_their_evaluation() {
        assert_eq!(
            eval("{ Promise.resolve(1).then(function () { globalThis.late = 1; }); 2 }").unwrap(),
            json!(2)
        );
        let pending = with_js(|js| Ok(js.runtime.is_job_pending())).unwrap();
        assert!(!pending, "a queued job outlived its evaluation");
        let e = eval("{ late }").unwrap_err();
        assert!(e.message.contains("late"), "{}", e.message);
    }

    #[test]
    fn statements_do_not_leak_variables_into_later_evaluations() {
        assert_eq!(eval("{ var leaked = 5; leaked }").unwrap(), json!(5));
        let e = eval("{ leaked }").unwrap_err();
        assert!(e.message.contains("leaked"), "{}", e.message);
    }

    #[test]
    fn evaluations_cannot_change_what_later_ones_see() {
        // An assignment without `var` in an expression (sloppy mode) makes a global.
        assert_eq!(eval("{ (sneaky = 5) + sneaky }").unwrap(), json!(10));
        assert_eq!(eval("{ typeof sneaky }").unwrap(), json!("undefined"));
        assert_eq!(eval("{ globalThis.g2 = 1; 1 }").unwrap(), json!(1));
        assert_eq!(eval("{ typeof g2 }").unwrap(), json!("undefined"));
        // Built-ins and their prototypes stay as they were.
        let _ = eval("{ Array.prototype.extra = 7; Math.max = function () { return -1 }; 1 }");
        assert_eq!(eval("{ [].extra }").unwrap(), Value::Null);
        assert_eq!(eval("{ Math.max(1, 2) }").unwrap(), json!(2));
        let _ = eval("{ Object.defineProperty(globalThis, 'stuck', {value: 1}); 1 }");
        assert_eq!(eval("{ typeof stuck }").unwrap(), json!("undefined"));
        // A replaced JSON.parse would run, without a time limit, when the next
        // task's inputs are set.
        let _ = eval("{ JSON = {parse: function () { while (true) {} }}; 1 }");
        let inputs = BTreeMap::from([
            ("_item".to_string(), json!("{ 5 }")),
            ("default".to_string(), json!("{ task().Inputs._item * 2 }")),
        ]);
        assert_eq!(
            resolve_inputs(&scope(), "C", &inputs).unwrap()["default"],
            json!(10)
        );
    }

    #[test]
    fn throw_is_an_error_naming_the_expression() {
        let e = eval("{ throw new Error('boom') }").unwrap_err();
        assert_eq!(e.expr, "{ throw new Error('boom') }");
        assert!(e.message.contains("boom"), "{}", e.message);
        let e = eval("{ nosuchthing.x }").unwrap_err();
        assert!(e.message.contains("nosuchthing"), "{}", e.message);
    }

    #[test]
    fn endless_loop_times_out() {
        let e = eval("{ while(true){} }").unwrap_err();
        assert!(e.message.contains("timed out"), "{}", e.message);
        // The runtime is usable afterwards.
        assert_eq!(eval("{ 1 + 1 }").unwrap(), json!(2));
    }

    /// Resolves an input of `expr`, which runs past its deadline: the task
    /// fails with `timed out` within seconds, and later evaluations still work.
    fn times_out_and_leaves_evaluation_working(expr: &str) {
        let inputs = BTreeMap::from([("default".to_string(), json!(expr))]);
        let t = Instant::now();
        let e = resolve_inputs(&scope(), "B", &inputs).unwrap_err();
        assert!(e.message.contains("timed out"), "{}", e.message);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let ok = BTreeMap::from([("default".to_string(), json!("{ 1 + 2 }"))]);
        assert_eq!(
            resolve_inputs(&scope(), "B", &ok).unwrap()["default"],
            json!(3)
        );
    }

    #[test]
    fn runaway_regex_is_stopped() {
        // This backtracks 2^40 times unless something stops it (QuickJS-ng
        // 0.16 polls the interrupt handler inside its regex engine; 0.8 did
        // not, and only the evaluator thread's deadline did).
        times_out_and_leaves_evaluation_working("{ /(a+)+$/.test('a'.repeat(40) + 'b') }");
    }

    #[test]
    fn native_work_past_its_deadline_is_given_up_and_left_only_idle_cpu() {
        // QuickJS does not poll the interrupt handler inside `join`: this runs
        // for 26 s of CPU in a release build before it fails for memory.
        times_out_and_leaves_evaluation_working("{ Array(1e9).join('x').length }");
        // The thread still joining runs only when nothing else wants the CPU.
        assert!(idle_evaluator_threads() >= 1);
    }

    /// Evaluator threads of this process in the idle scheduling class (the
    /// `policy` field of /proc's thread stat, SCHED_IDLE = 5).
    fn idle_evaluator_threads() -> usize {
        let tasks = std::fs::read_dir("/proc/self/task").unwrap();
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
            .filter(|stat| {
                let Some((head, rest)) = stat.rsplit_once(')') else {
                    return false;
                };
                // Fields from the third (state) on: policy is the 41st.
                head.ends_with("(fusion-expr") && rest.split_whitespace().nth(41 - 3) == Some("5")
            })
            .count()
    }

    #[test]
    fn memory_is_limited() {
        let e =
            eval("{ var a = []; while(true) { a.push(new Array(100000).fill(1)); } }").unwrap_err();
        assert!(!e.message.is_empty());
        assert_eq!(eval("{ 2 + 2 }").unwrap(), json!(4));
    }

    #[test]
    fn expressions_running_out_of_memory_at_once_fail_without_taking_the_process_down() {
        // QuickJS-ng 0.8 (rquickjs 0.9) could, for an evaluation running out
        // of memory, write the backtrace into an exception object it had
        // already freed: a segfault of the whole server in about one of 2,000
        // such evaluations on four threads of this 2-core machine.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let _heap: Vec<Vec<u8>> = (0..(i * 7 + t) % 50)
                            .map(|k| vec![0; 1000 * k + 1])
                            .collect();
                        let e = eval(
                            "{ var a = []; while(true) { a.push(new Array(100000).fill(1)); } }",
                        )
                        .unwrap_err();
                        assert!(
                            e.message.contains("out of memory") || e.message.contains("timed out"),
                            "{}",
                            e.message
                        );
                    }
                    eval("{ param() }").unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), json!("hello"));
        }
    }

    #[test]
    fn helpers_cannot_be_replaced() {
        let _ = eval("{ param = function() { return 'evil' }; 1 }");
        assert_eq!(eval("{ param() }").unwrap(), json!("hello"));
    }

    #[test]
    fn syntax_check() {
        assert!(check_syntax(" $.Tasks.A.Output ").is_ok());
        assert!(check_syntax(" var x = 1; x ").is_ok());
        assert!(check_syntax(" $.Tasks.( ").is_err());
        // Not run: an endless loop compiles fine and returns at once.
        assert!(check_syntax(" while(true){} ").is_ok());
    }

    #[test]
    fn resolves_recursively_but_not_in_specs() {
        let v = json!({
            "a": "{ 1 + 1 }",
            "list": ["{ param() }", "plain"],
            "then": {"run": "noop", "inputs": "{ param() }"},
            "wf": {"tasks": {"x": {"run": "noop", "inputs": "{ 2 }"}}, "output": "x"}
        });
        let out = with_scope(&scope(), "B", |ev| ev.resolve(&v)).unwrap();
        assert_eq!(out["a"], json!(2));
        assert_eq!(out["list"], json!(["hello", "plain"]));
        assert_eq!(out["then"]["inputs"], json!("{ param() }"));
        assert_eq!(out["wf"]["tasks"]["x"]["inputs"], json!("{ 2 }"));
    }

    #[test]
    fn underscore_inputs_first() {
        let inputs = BTreeMap::from([
            ("_item".to_string(), json!("{ 5 }")),
            ("default".to_string(), json!("{ task().Inputs._item * 2 }")),
        ]);
        let out = resolve_inputs(&scope(), "C", &inputs).unwrap();
        assert_eq!(out["default"], json!(10));
    }

    /// An expression evaluated both ways: the fast path first (as `eval` does)
    /// and JavaScript only, each in a fresh scope.
    fn both(
        scope: &Value,
        task_id: &str,
        inputs: Option<&Value>,
        expr: &str,
    ) -> [Result<Value, ExprError>; 2] {
        let run = |js_only: bool| {
            with_scope(scope, task_id, |ev| {
                if let Some(i) = inputs {
                    ev.set_task_inputs(i)?;
                }
                if js_only {
                    ev.eval_js(expr)
                } else {
                    ev.eval(expr)
                }
            })
        };
        [run(false), run(true)]
    }

    fn js_evals() -> usize {
        JS_EVALS.with(|c| c.get())
    }

    #[test]
    fn common_forms_skip_javascript_with_the_same_results() {
        let s = scope();
        let inputs = json!({"_item": {"k": [10, 20]}, "default": "{ task().Inputs._item }"});
        let cases: [(&str, Option<&Value>, Value); 17] = [
            ("{ param() }", None, json!("hello")),
            ("{param('n')}", None, json!(3)),
            ("{ param('missing') }", None, Value::Null),
            ("{ output('A') }", None, json!({"x": 42})),
            ("{ output('A').x }", None, json!(42)),
            ("{ output('A')['x'] }", None, json!(42)),
            ("{ output('B') }", None, Value::Null),
            ("{ output('Nope') }", None, Value::Null),
            ("{ $.Tasks.A.Output.x }", None, json!(42)),
            ("{ $.Invocation.Inputs.default }", None, json!("hello")),
            ("{ $['Workflow'].Name }", None, json!("wf")),
            ("{ task().Status }", None, json!("running")),
            ("{ task('A').Inputs.default }", None, json!("in-a")),
            ("{ task().Inputs._item.k[1] }", Some(&inputs), json!(20)),
            ("{ task().Inputs._item.k[2] }", Some(&inputs), Value::Null),
            ("{ $.Tasks.B.Inputs.other }", Some(&inputs), Value::Null),
            ("{ task().Inputs.other }", None, json!("o")),
        ];
        for (expr, inputs, want) in cases {
            let before = js_evals();
            let [fast, js] = both(&s, "B", inputs, expr);
            assert_eq!(js_evals(), before + 1, "{expr} went to JavaScript");
            assert_eq!(fast, Ok(want), "{expr}");
            assert_eq!(fast, js, "{expr}");
        }
    }

    #[test]
    fn what_the_fast_path_is_not_sure_of_goes_to_javascript() {
        let s = json!({
            "Invocation": {"Inputs": {"default": [1, 2], "f": 1.5, "big": 9007199254740993u64, "s": "abc"}},
            "Tasks": {"A": {"Output": null}}
        });
        for (expr, want) in [
            // A field of undefined or null: JavaScript's TypeError.
            ("{ output('A').x }", None),
            ("{ param('none').x }", None),
            ("{ $.Nope.x }", None),
            // Inherited names.
            ("{ param().length }", Some(json!(2))),
            ("{ param('s').length }", Some(json!(3))),
            ("{ param('s')[0] }", Some(json!("a"))),
            ("{ param('toString').name }", Some(json!("toString"))),
            ("{ $.Tasks.constructor.name }", Some(json!("Object"))),
            // Other syntax.
            ("{ param()[1] + 1 }", Some(json!(3))),
            ("{ param(); }", Some(json!([1, 2]))),
        ] {
            let before = js_evals();
            let [fast, js] = both(&s, "T", None, expr);
            assert_eq!(js_evals(), before + 2, "{expr} did not go to JavaScript");
            assert_eq!(fast, js, "{expr}");
            match want {
                Some(v) => assert_eq!(fast, Ok(v), "{expr}"),
                None => assert!(fast.is_err(), "{expr}: {fast:?}"),
            }
        }
    }

    /// A number selected and passed on is not changed: JavaScript would round
    /// an integer past 2^53 (an order id) on its way.
    #[test]
    fn numbers_are_selected_exactly() {
        let s = json!({
            "Invocation": {"Inputs": {"default": {"id": 9007199254740993u64, "neg": -9007199254740993i64}, "f": 0.1, "one": 1.0}},
            "Tasks": {}
        });
        for (expr, want) in [
            ("{ param().id }", json!(9007199254740993u64)),
            (
                "{ param() }",
                json!({"id": 9007199254740993u64, "neg": -9007199254740993i64}),
            ),
            ("{ $.Invocation.Inputs.f }", json!(0.1)),
            ("{ param('one') }", json!(1)),
        ] {
            let before = js_evals();
            let [fast, js] = both(&s, "T", None, expr);
            assert_eq!(js_evals(), before + 1, "{expr} went to JavaScript");
            assert_eq!(fast, Ok(want), "{expr} (JavaScript gives {js:?})");
        }
    }

    #[test]
    fn after_javascript_ran_in_a_scope_it_evaluates_the_rest() {
        // An expression may change `$`; later ones in the same scope see it.
        let out = with_scope(&scope(), "B", |ev| {
            ev.eval("{ $.Tasks.A.Output.x = 7 }")?;
            ev.eval("{ output('A').x }")
        });
        assert_eq!(out, Ok(json!(7)));
    }

    #[test]
    fn resolve_inputs_of_common_forms() {
        let inputs = BTreeMap::from([
            ("_item".to_string(), json!({"n": "{ param('n') }"})),
            (
                "default".to_string(),
                json!(["{ task().Inputs._item.n }", "{ output('A').x }", "plain"]),
            ),
        ]);
        let out = resolve_inputs(&scope(), "C", &inputs).unwrap();
        assert_eq!(out["_item"], json!({"n": 3}));
        assert_eq!(out["default"], json!([3, 42, "plain"]));
        // One form the fast path does not take: all of them in JavaScript.
        let mut mixed = inputs.clone();
        mixed.insert("x".into(), json!("{ task().Inputs._item.n * 2 }"));
        let out = resolve_inputs(&scope(), "C", &mixed).unwrap();
        assert_eq!(out["default"], json!([3, 42, "plain"]));
        assert_eq!(out["x"], json!(6));
    }

    mod differential {
        use super::*;
        use proptest::prelude::*;

        const KEYS: [&str; 14] = [
            "a",
            "b",
            "0",
            "1",
            "default",
            "Output",
            "Inputs",
            "X",
            "B",
            "length",
            "toString",
            "__proto__",
            "constructor",
            "",
        ];

        fn key() -> impl Strategy<Value = String> {
            proptest::sample::select(KEYS.to_vec()).prop_map(String::from)
        }

        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                (-3i64..3).prop_map(|n| json!(n)),
                Just(json!(1.5)),
                Just(json!(2.0)),
                Just(json!(-0.0)),
                Just(json!(9007199254740993u64)),
                proptest::sample::select(vec!["", "a", "0"]).prop_map(|s| json!(s)),
            ]
        }

        fn value() -> impl Strategy<Value = Value> {
            leaf().prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map(key(), inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn task_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                1 => value(),
                3 => (value(), value()).prop_map(|(o, i)| json!({"Output": o, "Inputs": i, "Status": "succeeded"})),
            ]
        }

        fn scope_value() -> impl Strategy<Value = Value> {
            let tasks = prop_oneof![
                1 => value(),
                4 => proptest::collection::btree_map(
                    proptest::sample::select(vec!["X", "B", "0", "toString"]).prop_map(String::from),
                    task_value(),
                    0..4,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ];
            let invocation = prop_oneof![
                1 => value(),
                3 => value().prop_map(|d| json!({"Inputs": {"default": d, "a": 1}})),
            ];
            (
                proptest::option::of(tasks),
                proptest::option::of(invocation),
            )
                .prop_map(|(t, i)| {
                    let mut m = serde_json::Map::new();
                    if let Some(t) = t {
                        m.insert("Tasks".into(), t);
                    }
                    if let Some(i) = i {
                        m.insert("Invocation".into(), i);
                    }
                    Value::Object(m)
                })
        }

        fn expr() -> impl Strategy<Value = String> {
            let root = proptest::sample::select(vec![
                "$",
                "param()",
                "param('a')",
                "param(\"default\")",
                "output('X')",
                "output()",
                "task()",
                "task('X')",
                "task('0')",
                "output('B')",
                "param('toString')",
            ]);
            let access = (0..3u8, key(), 0..3usize).prop_map(|(how, k, i)| match how {
                0 if !k.is_empty() && !k.starts_with(|c: char| c.is_ascii_digit()) => {
                    format!(".{k}")
                }
                1 => format!("[{i}]"),
                _ => format!("['{k}']"),
            });
            (root, proptest::collection::vec(access, 0..4))
                .prop_map(|(r, a)| format!("{{ {r}{} }}", a.concat()))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn fast_path_and_javascript_agree(
                scope in scope_value(),
                task_id in proptest::sample::select(vec!["X", "B", "0", "", "T"]),
                inputs in proptest::option::of(value()),
                expr in expr(),
            ) {
                let [fast, js] = both(&scope, task_id, inputs.as_ref(), &expr);
                // JavaScript's time limit is wall-clock: a loaded machine can
                // hit it in a debug build. That case says nothing about the
                // two paths' results.
                let timed_out = |r: &Result<Value, ExprError>| {
                    r.as_ref().is_err_and(|e| e.message.starts_with("timed out after"))
                };
                prop_assume!(!timed_out(&js) && !timed_out(&fast));
                // Numbers aside: the fast path keeps those JavaScript rounds.
                let fast = fast.map(|v| as_javascript_numbers(&v));
                prop_assert_eq!(fast, js, "{} on {} (task {:?}, inputs {:?})", expr, scope, task_id, inputs);
            }
        }

        /// `v` with each number as JavaScript holds it (a double) and gives it
        /// back through JSON: an integer past 2^53 rounded.
        fn as_javascript_numbers(v: &Value) -> Value {
            match v {
                Value::Number(n) => {
                    let f = n.as_f64().unwrap();
                    if f.fract() == 0.0 && f.abs() < 1e19 {
                        if f < 0.0 {
                            json!(f as i64)
                        } else {
                            json!(f as u64)
                        }
                    } else {
                        json!(f)
                    }
                }
                Value::Array(a) => Value::Array(a.iter().map(as_javascript_numbers).collect()),
                Value::Object(m) => Value::Object(
                    m.iter()
                        .map(|(k, v)| (k.clone(), as_javascript_numbers(v)))
                        .collect(),
                ),
                other => other.clone(),
            }
        }
    }
}
