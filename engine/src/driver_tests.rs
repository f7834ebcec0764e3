//! Driver tests with a fake invoker and paused tokio time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use executor::{CallError, CallFuture, FunctionCall, FunctionResponse, Invoker};
use serde_json::{json, Value};

use crate::state::{Event, RunStatus, TaskStatus};
use crate::store::SledStore;
use crate::{Engine, EngineConfig};

type Behavior =
    Arc<dyn Fn(&FunctionCall, usize) -> Result<FunctionResponse, CallError> + Send + Sync>;

#[derive(Default)]
pub struct FakeInvoker {
    functions: Mutex<HashMap<String, (Behavior, Option<Duration>)>>,
    pub calls: Mutex<Vec<FunctionCall>>,
}

impl FakeInvoker {
    pub fn add(
        &self,
        name: &str,
        delay: Option<Duration>,
        f: impl Fn(&FunctionCall, usize) -> Result<FunctionResponse, CallError> + Send + Sync + 'static,
    ) {
        self.functions
            .lock()
            .unwrap()
            .insert(name.into(), (Arc::new(f), delay));
    }

    pub fn count(&self, name: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.function == name)
            .count()
    }

    pub fn keys(&self, name: &str) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.function == name)
            .filter_map(|c| c.idempotency_key.clone())
            .collect()
    }
}

pub fn text(status: u16, body: &str) -> Result<FunctionResponse, CallError> {
    Ok(FunctionResponse {
        status,
        headers: [("content-type".to_string(), "text/plain".to_string())].into(),
        body: Bytes::from(body.to_string()),
    })
}

pub fn json_resp(v: Value) -> Result<FunctionResponse, CallError> {
    Ok(FunctionResponse {
        status: 200,
        headers: [("content-type".to_string(), "application/json".to_string())].into(),
        body: Bytes::from(v.to_string()),
    })
}

pub struct Shared(pub Arc<FakeInvoker>);

impl Invoker for Shared {
    fn call(&self, call: FunctionCall) -> CallFuture {
        let n = {
            let mut calls = self.0.calls.lock().unwrap();
            calls.push(call.clone());
            calls.iter().filter(|c| c.function == call.function).count()
        };
        let f = self
            .0
            .functions
            .lock()
            .unwrap()
            .get(&call.function)
            .cloned();
        Box::pin(async move {
            let Some((f, delay)) = f else {
                return Err(CallError::UnknownFunction(call.function));
            };
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            f(&call, n)
        })
    }

    fn function_exists(&self, name: &str) -> bool {
        self.0.functions.lock().unwrap().contains_key(name)
    }
}

/// The engine's storage in a test: sled and the store's journal, in a
/// directory removed when the test ends, once the stores of the engines
/// opened on it are closed. A store still open then, held by a task the
/// runtime drops only after the test's body (a retention sweep on a blocking
/// thread), would make its last checkpoint into the journal's directory on
/// that thread while this one removes it, and the removal would give up
/// (`tempfile` says nothing) and leave the directory behind.
struct Storage {
    db: sled::Db,
    journal: std::path::PathBuf,
    opened: Mutex<Vec<Weak<SledStore>>>,
    dir: Option<tempfile::TempDir>,
}

impl Storage {
    async fn open(&self, invoker: &Arc<FakeInvoker>, config: EngineConfig) -> Arc<Engine> {
        let e = Engine::open(
            self.db.clone(),
            &self.journal,
            Arc::new(Shared(invoker.clone())),
            config,
        )
        .await
        .unwrap();
        self.opened.lock().unwrap().push(Arc::downgrade(e.store()));
        e
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        let open: Vec<_> = self
            .opened
            .get_mut()
            .map(|o| o.drain(..).filter_map(|s| s.upgrade()).collect())
            .unwrap_or_default();
        // Closing waits for the store's flusher thread; the test's runtime
        // runs on this thread, so the wait happens on another.
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("a runtime to close the stores with");
                for store in &open {
                    // A store the test shut down already answers an error.
                    let _ = rt.block_on(store.close());
                }
            });
        });
        if let Some(dir) = self.dir.take() {
            let path = dir.path().display().to_string();
            if let Err(e) = dir.close() {
                if !std::thread::panicking() {
                    panic!("the test's directory {path} was not removed: {e}");
                }
            }
        }
    }
}

async fn engine_with(fake: &Arc<FakeInvoker>, db: &Storage) -> Arc<Engine> {
    db.open(fake, EngineConfig::default()).await
}

fn setup() -> (Storage, Arc<FakeInvoker>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Storage {
        db: sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap(),
        journal: dir.path().join("journal"),
        opened: Mutex::default(),
        dir: Some(dir),
    };
    let fake = Arc::new(FakeInvoker::default());
    fake.add("echo", None, |c, _| {
        text(200, &String::from_utf8_lossy(&c.body))
    });
    fake.add("double", None, |c, _| {
        let n: f64 = serde_json::from_slice(&c.body).unwrap_or(0.0);
        json_resp(json!(n * 2.0))
    });
    (db, fake)
}

async fn run(
    engine: &Arc<Engine>,
    name: &str,
    yaml: &str,
    input: Value,
) -> crate::store::RunSummary {
    engine.create_workflow(name, yaml).unwrap();
    let started = engine
        .start_run(name, input, Default::default())
        .await
        .unwrap();
    engine.wait(&started.id).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn function_chain_with_expressions() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let yaml = "output: B\ntasks:\n  A:\n    run: echo\n    inputs: \"{ param() }\"\n  B:\n    run: echo\n    inputs: \"{ output('A') + '!' }\"\n    requires: [A]\n";
    let s = run(&e, "w", yaml, json!({"default": "hi"})).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!("hi!")));
    assert_eq!(fake.count("echo"), 2);
    let keys = fake.keys("echo");
    assert!(keys[0].ends_with("/A"), "{keys:?}");
}

#[tokio::test(start_paused = true)]
async fn builtins_end_to_end() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let cases: &[(&str, &str, Value)] = &[
        ("compose", "output: C\ntasks:\n  C:\n    run: compose\n    inputs:\n      a: 1\n      b: \"{ param() }\"\n", json!({"a": 1, "b": "x"})),
        ("if", "output: I\ntasks:\n  I:\n    run: if\n    inputs:\n      if: \"{ param() == 'x' }\"\n      then:\n        run: echo\n        inputs: yes\n      else: no\n", json!("yes")),
        ("switch", "output: S\ntasks:\n  S:\n    run: switch\n    inputs:\n      switch: \"{ param() }\"\n      cases:\n      - case: x\n        action: ex\n      default: other\n", json!("ex")),
        ("foreach", "output: F\ntasks:\n  F:\n    run: foreach\n    inputs:\n      foreach: [1, 2, 3]\n      do:\n        run: double\n        inputs: \"{ task().Inputs._item }\"\n", json!([2, 4, 6])),
        ("repeat", "output: R\ntasks:\n  R:\n    run: repeat\n    inputs:\n      times: 5\n      do:\n        run: javascript\n        inputs:\n          expr: \"(args || 0) + 1\"\n          args: \"{ task().Inputs._prev }\"\n", json!(5)),
        ("while", "output: W\ntasks:\n  W:\n    run: while\n    inputs:\n      expr: \"{ (task().Inputs._prev || 0) < 5 }\"\n      limit: 10\n      delay: 10ms\n      do:\n        run: javascript\n        inputs:\n          expr: \"(args || 0) + 1\"\n          args: \"{ task().Inputs._prev }\"\n", json!(5)),
        ("sleep", "output: Z\ntasks:\n  S:\n    run: sleep\n    inputs: 5s\n  Z:\n    run: noop\n    inputs: done\n    requires: [S]\n", json!("done")),
        ("inline", "output: N\ntasks:\n  N:\n    run: noop\n    inputs:\n      output: b\n      tasks:\n        a:\n          run: echo\n          inputs: \"{ param() }\"\n        b:\n          run: echo\n          inputs: \"{ output('a') + '2' }\"\n          requires: [a]\n", json!("x2")),
    ];
    for (name, yaml, want) in cases {
        let s = run(&e, name, yaml, json!({"default": "x"})).await;
        assert_eq!(s.status, RunStatus::Succeeded, "{name}: {s:?}");
        assert_eq!(s.output.as_ref(), Some(want), "{name}");
    }
    let s = run(
        &e,
        "fails",
        "output: F\ntasks:\n  F:\n    run: fail\n    inputs: broken\n",
        json!(null),
    )
    .await;
    assert_eq!(s.status, RunStatus::Failed);
    assert_eq!(s.error.unwrap().message, "broken");
    // A task written in a built-in's input is named after that input
    // (`Check/then`), not a bare `task`, in what the run says.
    let s = run(
        &e,
        "checks",
        "output: Check\ntasks:\n  Check:\n    run: if\n    inputs:\n      if: true\n      then:\n        run: fail\n        inputs: missing user\n",
        json!(null),
    )
    .await;
    assert_eq!(s.status, RunStatus::Failed);
    let err = s.error.unwrap();
    assert!(
        err.message.contains(r#"task "Check/then" failed"#),
        "{err:?}"
    );
    let events = e.run_events(&s.id).unwrap();
    assert!(
        events
            .iter()
            .any(|ev| serde_json::to_value(ev).unwrap()["task"] == "Check/then"),
        "{events:?}"
    );
}

/// A workflow whose `while` `W` counts to `n`, one built-in per iteration,
/// with no delay: its output is `n`.
fn counting_loop(n: u32) -> String {
    format!("output: W\ntasks:\n  W:\n    run: while\n    inputs:\n      expr: \"{{ (task().Inputs._prev || 0) < {n} }}\"\n      limit: {n}\n      delay: 0ms\n      do:\n        run: noop\n        inputs: \"{{ (task().Inputs._prev || 0) + 1 }}\"\n")
}

/// A loop's iterations are named under it, `W/n/action` (each was once
/// nested in the last, `W/condition/condition/action`, which made the
/// engine's work per iteration grow with the loop), and long loops run to
/// their end.
#[tokio::test(start_paused = true)]
async fn long_loops_run_to_their_end() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let yaml = &counting_loop(300);
    let s = run(&e, "counts", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!(300)));
    let tasks = shown_tasks(&e, &s.id);
    assert_eq!(tasks["W/1/action"]["output"], json!(1));
    assert_eq!(tasks["W/300/action"]["output"], json!(300));
    // The check after the last iteration ended the loop.
    assert_eq!(tasks["W/300/condition"]["status"], "succeeded");
    assert!(!tasks.contains_key("W/301/action"));

    let yaml = "output: R\ntasks:\n  R:\n    run: repeat\n    inputs:\n      times: 2000\n      do:\n        run: noop\n        inputs: \"{ (task().Inputs._prev || 0) + 1 }\"\n";
    let s = run(&e, "repeats", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!(2000)));
}

/// A sub-workflow ends as a run does: once the tasks beside its output
/// have run too, whatever the timing or its `concurrency` (those not
/// started when the output was ready were left unrun, and the run said it
/// succeeded).
#[tokio::test(start_paused = true)]
async fn a_sub_workflow_ends_once_the_tasks_beside_its_output_have_run() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let limited = "output: E\ntasks:\n  E:\n    run: foreach\n    inputs:\n      foreach: [0, 1, 2]\n      do:\n        output: X\n        concurrency: 2\n        tasks:\n          X: {run: sleep, inputs: 100ms}\n          Y: {run: sleep, inputs: 100ms}\n          Z: {run: noop, inputs: z}\n";
    let slower = "output: E\ntasks:\n  E:\n    run: foreach\n    inputs:\n      foreach: [0, 1, 2]\n      do:\n        output: X\n        tasks:\n          X: {run: sleep, inputs: 50ms}\n          Y: {run: sleep, inputs: 150ms}\n          Z: {run: noop, inputs: z, requires: [Y]}\n";
    for (name, yaml) in [("limited", limited), ("slower", slower)] {
        let s = run(&e, name, yaml, json!(null)).await;
        assert_eq!(s.status, RunStatus::Succeeded, "{name}: {s:?}");
        let tasks = shown_tasks(&e, &s.id);
        for i in 0..3 {
            let item = &tasks[&format!("E/do_{i}")];
            let z = &tasks[&format!("E/do_{i}/Z")];
            assert_eq!(z["status"], "succeeded", "{name}: {z}");
            assert_eq!(item["status"], "succeeded", "{name}: {item}");
            let ended = |t: &Value| t["ended_at"].as_u64().unwrap();
            assert!(ended(item) >= ended(z), "{name}: {item} before {z}");
        }
    }
}

/// A loop in a loop counts its own iterations from 0 each time: it began
/// at the outer loop's count, so its `limit` ran out early.
#[tokio::test(start_paused = true)]
async fn a_loop_in_a_loop_counts_its_own_iterations() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let yaml = "output: Outer\ntasks:\n  Outer:\n    run: while\n    inputs:\n      expr: \"{ (task().Inputs._prev || 0) < 6 }\"\n      limit: 5\n      delay: 0ms\n      do:\n        run: while\n        inputs:\n          expr: \"{ (task().Inputs._count || 0) < 2 }\"\n          limit: 2\n          delay: 0ms\n          do:\n            run: noop\n            inputs: \"{ (task().Inputs._prev || 0) + 1 }\"\n";
    let s = run(&e, "nested", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!(6)));
}

/// A long loop of built-ins writes its events as it goes, turn by turn:
/// its history shows how far it got while it runs (it showed only its
/// start until the loop's end, and a crash lost all of it).
#[tokio::test(start_paused = true)]
async fn a_long_loop_of_built_ins_is_written_as_it_goes() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let yaml = &counting_loop(3000);
    e.create_workflow("spins", yaml).unwrap();
    let started = e
        .start_run("spins", json!(null), Default::default())
        .await
        .unwrap();
    let mut seen_running = 0;
    while e.run_summary(&started.id).unwrap().status == RunStatus::Running {
        seen_running = seen_running.max(e.run_events(&started.id).unwrap().len());
        tokio::task::yield_now().await;
    }
    assert!(
        seen_running > 100,
        "{seen_running} events seen while it ran"
    );
    let s = e.wait(&started.id).await.unwrap();
    assert_eq!(s.output, Some(json!(3000)), "{s:?}");
}

/// A `while` that is a `foreach`'s `do` sees its item at every check, not
/// only the first (it stopped after one iteration).
#[tokio::test(start_paused = true)]
async fn a_loop_in_a_foreach_sees_its_item_at_every_check() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let yaml = "output: E\ntasks:\n  E:\n    run: foreach\n    inputs:\n      foreach: [3, 1, 4]\n      do:\n        run: while\n        inputs:\n          expr: \"{ (task().Inputs._prev || 0) < task().Inputs._item }\"\n          limit: 10\n          delay: 0ms\n          do:\n            run: javascript\n            inputs:\n              expr: \"(args || 0) + 1\"\n              args: \"{ task().Inputs._prev }\"\n";
    let s = run(&e, "counts", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!([3, 1, 4])));
}

/// A loop of built-ins, which waits for nothing, still takes a cancel in
/// the middle: the run reads what was sent to it between turns (it ran to
/// its end first, and the cancel found it finished).
#[tokio::test(start_paused = true)]
async fn a_long_loop_of_built_ins_can_be_cancelled_in_the_middle() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let yaml = &counting_loop(3000);
    e.create_workflow("spins", yaml).unwrap();
    let started = e
        .start_run("spins", json!(null), Default::default())
        .await
        .unwrap();
    let s = e.cancel(&started.id, "by test").await.unwrap();
    assert_eq!(s.status, RunStatus::Cancelled, "{s:?}");
    let tasks = shown_tasks(&e, &s.id);
    assert!(tasks.contains_key("W/1/action"));
    assert!(!tasks.contains_key("W/3000/action"), "it ran to its end");
}

/// Fission Workflows' own `fibonacci` example (examples/misc/fibonacci.wf.yaml):
/// the `javascript` task names its `args` keys as variables.
#[tokio::test(start_paused = true)]
async fn fission_workflows_fibonacci_example() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let yaml = r#"
output: ExtractResult
tasks:
  Fib:
    run: repeat
    inputs:
      times: "{ param() || 0 }"
      do:
        run: javascript
        inputs:
          _prev:
            fn1: 0
            fn2: 1
          args:
            fn1: "{ task().Inputs._prev.fn1 }"
            fn2: "{ task().Inputs._prev.fn2 }"
          expr: "({
            'fn1': fn2,
            'fn2': (fn1 + fn2)
          })"
  ExtractResult:
    run: compose
    inputs: "{ (output('Fib') || {}).fn2 || 0 }"
    requires:
    - Fib
"#;
    let s = run(&e, "fibonacci", yaml, json!({"default": 10})).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!(89)));
}

#[tokio::test(start_paused = true)]
async fn nested_workflow_by_name() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    e.create_workflow(
        "inner",
        "output: T\ntasks:\n  T:\n    run: echo\n    inputs: \"{ param() + '-inner' }\"\n",
    )
    .unwrap();
    let s = run(
        &e,
        "outer",
        "output: O\ntasks:\n  O:\n    run: inner\n    inputs: \"{ param() }\"\n",
        json!({"default": "x"}),
    )
    .await;
    assert_eq!(s.output, Some(json!("x-inner")), "{s:?}");
}

/// As in Fission Workflows, a run ends once every task that can run has run:
/// a task beside the output (a side effect nothing needs) is waited for, not
/// cut off when the output is ready.
#[tokio::test(start_paused = true)]
async fn a_run_waits_for_a_task_beside_its_output() {
    let (db, fake) = setup();
    fake.add("side", Some(Duration::from_secs(5)), |_, _| {
        text(200, "side done")
    });
    let e = engine_with(&fake, &db).await;
    let yaml =
        "output: Fast\ntasks:\n  Side:\n    run: side\n  Fast:\n    run: noop\n    inputs: fast\n";
    let s = run(&e, "beside", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!("fast")));
    let state = e.run_state(&s.id).unwrap();
    assert_eq!(state.tasks["Side"].status, TaskStatus::Succeeded);
    assert_eq!(fake.count("side"), 1);
    assert!(s.finished_at.unwrap() >= s.created_at + 5000, "{s:?}");
}

/// A run that fails leaves no task running or pending in its history: what
/// was in flight beside the failed task, or waiting for it, is cancelled.
#[tokio::test(start_paused = true)]
async fn a_failed_run_cancels_the_tasks_it_leaves_unfinished() {
    let (db, fake) = setup();
    fake.add("boom", None, |_, _| text(400, "boom"));
    fake.add("slow", Some(Duration::from_secs(60)), |_, _| {
        text(200, "late")
    });
    let e = engine_with(&fake, &db).await;
    let yaml = "output: C\ntasks:\n  A:\n    run: boom\n  B:\n    run: slow\n  C:\n    run: noop\n    requires: [A, B]\n";
    let s = run(&e, "broken", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Failed, "{s:?}");
    let state = e.run_state(&s.id).unwrap();
    assert_eq!(state.tasks["A"].status, TaskStatus::Failed);
    assert_eq!(state.tasks["B"].status, TaskStatus::Cancelled);
    assert_eq!(state.tasks["C"].status, TaskStatus::Cancelled);
    assert_eq!(state.tasks["B"].ended_at, s.finished_at);
}

/// `fission://<namespace>/<fn>` names a function by its key, here and when stored.
#[tokio::test(start_paused = true)]
async fn fission_function_references_run_the_function() {
    let (db, fake) = setup();
    fake.add("team-a/shout", None, |c, _| {
        text(200, &String::from_utf8_lossy(&c.body).to_uppercase())
    });
    let e = engine_with(&fake, &db).await;
    let yaml = "output: B\ntasks:\n  A:\n    run: fission://default/echo\n    inputs: \"{ param() }\"\n  B:\n    run: fission://team-a/shout\n    inputs: \"{ output('A') }\"\n    requires: [A]\n";
    let s = run(&e, "refs", yaml, json!({"default": "hi"})).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!("HI")));
    assert_eq!(fake.count("echo"), 1);
    assert_eq!(fake.count("team-a/shout"), 1);
}

/// A `fission://` reference is a function even when a built-in has its name.
#[tokio::test(start_paused = true)]
async fn a_fission_reference_is_the_function_not_a_builtin_of_its_name() {
    let (db, fake) = setup();
    fake.add("sleep", None, |_, _| text(200, "the function"));
    let e = engine_with(&fake, &db).await;
    let yaml = "output: A\ntasks:\n  A:\n    run: fission://default/sleep\n    inputs: 1s\n";
    let s = run(&e, "shadow", yaml, json!({})).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!("the function")));
    assert_eq!(fake.count("sleep"), 1);
}

/// A `fission://` reference to a name no function has runs the workflow of
/// that name, a built-in's name too (what the `shadowed_by_builtin` warning
/// advises), as the router's `/fission-function/<name>` does.
#[tokio::test(start_paused = true)]
async fn a_fission_reference_runs_the_workflow_no_function_shadows() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    e.create_workflow(
        "switch",
        "output: A\ntasks:\n  A:\n    run: echo\n    inputs: \"{ param() + '!' }\"\n",
    )
    .unwrap();
    let yaml = "output: A\ntasks:\n  A:\n    run: fission://switch\n    inputs: hi\n";
    let s = run(&e, "outer", yaml, json!({})).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!("hi!")));
}

/// A workflow invoked by name with a `body` input sees it as `default` too, as
/// when it is invoked over HTTP.
#[tokio::test(start_paused = true)]
async fn nested_workflow_sees_its_body_as_default() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    e.create_workflow(
        "inner",
        "output: T\ntasks:\n  T:\n    run: compose\n    inputs:\n      p: \"{ param() }\"\n      b: \"{ param('body') }\"\n",
    )
    .unwrap();
    let s = run(
        &e,
        "outer",
        "output: O\ntasks:\n  O:\n    run: inner\n    inputs:\n      body: \"{ param() }\"\n",
        json!({"default": "x"}),
    )
    .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!({"p": "x", "b": "x"})), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn retries_with_backoff_then_succeeds() {
    let (db, fake) = setup();
    fake.add("flaky", None, |_, n| {
        if n < 3 {
            text(503, "busy")
        } else {
            text(200, "ok")
        }
    });
    let e = engine_with(&fake, &db).await;
    let yaml = "output: F\ntasks:\n  F:\n    run: flaky\n    retry:\n      maxAttempts: 3\n      backoff: {initial: 1s, max: 5s}\n";
    let s = run(&e, "w", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(fake.count("flaky"), 3);
    assert_eq!(fake.keys("flaky").last().unwrap(), &format!("{}/F", s.id));
    // 4xx is never retried.
    fake.add("bad", None, |_, _| text(404, "no such thing"));
    let yaml = "output: F\ntasks:\n  F:\n    run: bad\n    retry: {maxAttempts: 5}\n";
    let s = run(&e, "w2", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Failed);
    assert_eq!(s.error.as_ref().unwrap().status, Some(404));
    assert_eq!(s.error.as_ref().unwrap().task.as_deref(), Some("F"));
    assert_eq!(fake.count("bad"), 1);
}

#[tokio::test(start_paused = true)]
async fn task_and_run_timeouts() {
    let (db, fake) = setup();
    fake.add("slow", Some(Duration::from_secs(60)), |_, _| {
        text(200, "late")
    });
    let e = engine_with(&fake, &db).await;
    let s = run(
        &e,
        "t1",
        "output: S\ntasks:\n  S:\n    run: slow\n    timeout: 1s\n",
        json!(null),
    )
    .await;
    assert_eq!(s.status, RunStatus::Failed);
    let err = s.error.unwrap();
    assert!(
        err.message.contains("timed out") && err.is_timeout(),
        "{err:?}"
    );
    let s = run(
        &e,
        "t2",
        "output: S\ntimeout: 2s\ntasks:\n  S:\n    run: slow\n",
        json!(null),
    )
    .await;
    assert_eq!(s.status, RunStatus::Failed);
    let err = s.error.unwrap();
    assert!(
        err.message.contains("run timed out") && err.is_timeout(),
        "{err:?}"
    );
    // Through a workflow a task runs: still a timeout.
    let s = run(
        &e,
        "t3",
        "output: W\ntasks:\n  W:\n    run: t1\n",
        json!(null),
    )
    .await;
    let err = s.error.unwrap();
    assert!(err.is_timeout(), "{err:?}");
}

/// A task's `timeout` bounds a `sleep` and a task that runs other tasks (a
/// `foreach`, a workflow by name) as it bounds a call: the attempt fails at
/// its time, and what it runs is cancelled, a call in flight abandoned.
#[tokio::test(start_paused = true)]
async fn the_task_timeout_bounds_a_sleep_and_what_a_task_runs() {
    let (db, fake) = setup();
    fake.add("slow", Some(Duration::from_secs(60)), |_, _| {
        text(200, "late")
    });
    let e = engine_with(&fake, &db).await;
    e.create_workflow("inner", "output: S\ntasks:\n  S:\n    run: slow\n")
        .unwrap();
    for (name, yaml) in [
        (
            "sleeps",
            "output: A\ntasks:\n  A:\n    run: sleep\n    inputs: 60s\n    timeout: 1s\n",
        ),
        (
            "loops",
            "output: A\ntasks:\n  A:\n    run: foreach\n    timeout: 1s\n    inputs:\n      foreach: [1, 2]\n      do:\n        run: slow\n",
        ),
        (
            "nests",
            "output: A\ntasks:\n  A:\n    run: inner\n    timeout: 1s\n",
        ),
    ] {
        let s = run(&e, name, yaml, json!(null)).await;
        assert_eq!(s.status, RunStatus::Failed, "{name}: {s:?}");
        let err = s.error.unwrap();
        assert!(
            err.message.contains("the task timed out after 1s") && err.is_timeout(),
            "{name}: {err:?}"
        );
        let state = e.run_state(&s.id).unwrap();
        for t in state.tasks.values().filter(|t| t.scope.is_some()) {
            assert_eq!(t.status, TaskStatus::Cancelled, "{name}: {t:?}");
            assert_eq!(
                t.cancel_reason.as_deref(),
                Some("task \"A\", which ran it, timed out"),
                "{name}: {t:?}"
            );
        }
    }
    // A fallback takes over from a task that timed out (the call inside it
    // would have answered "late").
    let s = run(
        &e,
        "falls-back",
        "output: A\ntasks:\n  A:\n    run: inner\n    timeout: 1s\n    onFailure: F\n  F:\n    run: noop\n    inputs: fallback\n",
        json!(null),
    )
    .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!("fallback")));
}

/// A retry of a Fission `Workflow` keeps the steps that succeeded (a
/// Parallel's finished branch among them) and goes on from the failed one.
#[tokio::test(start_paused = true)]
async fn a_state_machine_retry_keeps_what_succeeded() {
    let (db, fake) = setup();
    let fail_now = Arc::new(Mutex::new(true));
    let f = fail_now.clone();
    fake.add("flaky", None, move |_, _| {
        if *f.lock().unwrap() {
            text(500, "down")
        } else {
            text(200, "up")
        }
    });
    let e = engine_with(&fake, &db).await;
    let doc = "startAt: first
states:
  first: {type: Task, function: {name: echo}, resultPath: $.first, next: fan}
  fan:
    type: Parallel
    next: last
    branches:
      - startAt: ok
        states:
          ok: {type: Task, function: {name: echo}, end: true}
      - startAt: bad
        states:
          bad: {type: Task, function: {name: flaky}, end: true}
  last: {type: Task, function: {name: echo}, end: true}
";
    let s = run(&e, "sm", doc, json!({"x": 1})).await;
    assert_eq!(s.status, RunStatus::Failed, "{s:?}");
    assert_eq!(fake.count("echo"), 2, "first, and the ok branch");
    *fail_now.lock().unwrap() = false;
    let again = e.retry(&s.id).await.unwrap();
    let s2 = e.wait(&again.id).await.unwrap();
    assert_eq!(s2.status, RunStatus::Succeeded, "{s2:?}");
    assert_eq!(fake.count("flaky"), 2, "the failed branch ran again");
    assert_eq!(
        fake.count("echo"),
        3,
        "only `last` is new: first and ok were kept"
    );
}

/// An RFC-0022 Task state whose function is a stored workflow fails at
/// once, saying so (the workflow's tasks were added and never run: the run
/// waited for its timeout, 24 h by default).
#[tokio::test(start_paused = true)]
async fn a_state_machine_task_naming_a_workflow_fails_at_once() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    e.create_workflow(
        "inner",
        "output: T\ntasks:\n  T:\n    run: echo\n    inputs: inner\n",
    )
    .unwrap();
    let doc = "startAt: call\nstates:\n  call: {type: Task, function: {name: inner}, end: true}\n";
    // Stored, with a warning that says what the name is (it said the
    // function did not exist yet, as if it might).
    let warned = e.warnings(doc);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0]
            .message
            .contains("\"inner\" is a workflow, not a function"),
        "{warned:?}"
    );
    let s = run(&e, "sm-inner", doc, json!({})).await;
    assert_eq!(s.status, RunStatus::Failed, "{s:?}");
    let error = s.error.unwrap().message;
    assert!(error.contains("\"inner\" is a workflow"), "{error}");
    // Never retried: as a function that does not exist.
    assert!(error.starts_with("Fission.PermanentError"), "{error}");
}

/// A task that names a stored state machine fails at once, saying so (it
/// waited for ever: a state machine's steps are no tasks to add).
#[tokio::test(start_paused = true)]
async fn a_task_naming_a_state_machine_fails_at_once() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    e.create_workflow(
        "machine",
        "apiVersion: fission.io/v1\nkind: Workflow\nmetadata: {name: machine}\nspec:\n  startAt: done\n  states:\n    done: {type: Succeed}\n",
    )
    .unwrap();
    let yaml = "output: C\ntasks:\n  C:\n    run: machine\n    inputs: {a: 1}\n";
    let s = run(&e, "calls-machine", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Failed, "{s:?}");
    let error = s.error.unwrap().message;
    assert!(
        error.contains("is a Fission `Workflow` (a state machine)"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_and_retry_from_failure() {
    let (db, fake) = setup();
    fake.add("slow", Some(Duration::from_secs(60)), |_, _| {
        text(200, "late")
    });
    let e = engine_with(&fake, &db).await;
    e.create_workflow("c", "output: S\ntasks:\n  S:\n    run: slow\n")
        .unwrap();
    let started = e
        .start_run("c", json!(null), Default::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let s = e.cancel(&started.id, "by test").await.unwrap();
    assert_eq!(s.status, RunStatus::Cancelled);

    let fail_first = Arc::new(Mutex::new(true));
    let ff = fail_first.clone();
    fake.add("sometimes", None, move |_, _| {
        if *ff.lock().unwrap() {
            text(500, "down")
        } else {
            text(200, "up")
        }
    });
    let yaml = "output: B\ntasks:\n  A:\n    run: echo\n    inputs: a\n  B:\n    run: sometimes\n    requires: [A]\n";
    let s = run(&e, "r", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Failed);
    *fail_first.lock().unwrap() = false;
    let again = e.retry(&s.id).await.unwrap();
    let s2 = e.wait(&again.id).await.unwrap();
    assert_eq!(s2.status, RunStatus::Succeeded);
    assert_eq!(s2.retry_of.as_deref(), Some(s.id.as_str()));
    assert_eq!(fake.count("echo"), 1, "A kept its output");
    assert_eq!(fake.count("sometimes"), 2);
    // A run is retried once: a second retry would repeat what the first did.
    let Err(crate::EngineError::Conflict(m)) = e.retry(&s.id).await else {
        panic!("a second retry of {} was started", s.id);
    };
    assert!(
        m.contains(&format!("retried already, as run {}", again.id)),
        "{m}"
    );
    assert!(m.contains("(succeeded)"), "{m}");
    assert_eq!(fake.count("sometimes"), 2, "nothing ran again");
    // A retry an earlier server made, under the id it gave retries then
    // (named by the run's id alone), is still found as the run's retry.
    *fail_first.lock().unwrap() = true;
    let old = e
        .start_run("r", json!(null), Default::default())
        .await
        .unwrap();
    let old = e.wait(&old.id).await.unwrap();
    assert_eq!(old.status, RunStatus::Failed);
    let before = e.retry_as_before(&old.id).await.unwrap();
    e.wait(&before.id).await.unwrap();
    assert_eq!(e.retried_by(&old.id).unwrap(), Some(before.id.clone()));
    let Err(crate::EngineError::Conflict(m)) = e.retry(&old.id).await else {
        panic!("a run an earlier server retried was retried again");
    };
    assert!(m.contains(&before.id), "{m}");
    // A failed retry is retried in its turn.
    *fail_first.lock().unwrap() = true;
    let s3 = e
        .start_run("r", json!(null), Default::default())
        .await
        .unwrap();
    let s3 = e.wait(&s3.id).await.unwrap();
    assert_eq!(s3.status, RunStatus::Failed);
    let r1 = e.retry(&s3.id).await.unwrap();
    assert_eq!(e.wait(&r1.id).await.unwrap().status, RunStatus::Failed);
    *fail_first.lock().unwrap() = false;
    let r2 = e.retry(&r1.id).await.unwrap();
    assert_eq!(e.wait(&r2.id).await.unwrap().status, RunStatus::Succeeded);
}

/// Cancelling a run ends its running and pending tasks as cancelled; those that
/// finished keep their status, and a later retry runs the cancelled ones.
#[tokio::test(start_paused = true)]
async fn cancel_ends_running_and_pending_tasks_as_cancelled() {
    use crate::state::TaskStatus;
    let (db, fake) = setup();
    fake.add("slow", Some(Duration::from_secs(60)), |_, _| {
        text(200, "late")
    });
    let e = engine_with(&fake, &db).await;
    let yaml = "output: C\ntasks:\n  A:\n    run: echo\n    inputs: a\n  B:\n    run: slow\n    requires: [A]\n  C:\n    run: echo\n    requires: [B]\n";
    e.create_workflow("c", yaml).unwrap();
    let started = e
        .start_run("c", json!(null), Default::default())
        .await
        .unwrap();
    until_called(&fake, "slow", 1).await;
    assert_eq!(fake.count("slow"), 1, "B was dispatched");
    e.cancel(&started.id, "by test").await.unwrap();
    let state = e.run_state(&started.id).unwrap();
    let status = |t: &str| state.tasks[t].status;
    assert_eq!(status("A"), TaskStatus::Succeeded);
    assert_eq!(status("B"), TaskStatus::Cancelled);
    assert_eq!(status("C"), TaskStatus::Cancelled);
    assert!(state.tasks["B"].ended_at.is_some());
    let again = e.retry(&started.id).await.unwrap();
    let s = e.wait(&again.id).await.unwrap();
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
}

/// An input the workflow's expressions cannot read fails the run with 422 (the
/// caller's mistake); an expression over a task's output fails it without one.
#[tokio::test(start_paused = true)]
async fn an_input_that_does_not_fit_fails_with_422() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let yaml =
        "output: A\ntasks:\n  A:\n    run: echo\n    inputs: \"{ param().name.toUpperCase() }\"\n";
    let s = run(&e, "fit", yaml, json!({"default": {}})).await;
    assert_eq!(s.status, RunStatus::Failed);
    let err = s.error.unwrap();
    assert_eq!(err.status, Some(422), "{err:?}");
    assert!(err.message.contains("the input does not fit"), "{err:?}");
    let yaml = "output: B\ntasks:\n  A:\n    run: echo\n  B:\n    run: echo\n    inputs: \"{ output('A').x.y }\"\n    requires: [A]\n";
    let s = run(&e, "bug", yaml, json!({"default": {}})).await;
    assert_eq!(s.status, RunStatus::Failed);
    assert_eq!(s.error.unwrap().status, None);
    // A built-in that cannot take what the caller sent: the caller's mistake
    // too; the same built-in given a bad literal is the workflow's.
    let yaml = "output: A\ntasks:\n  A:\n    run: sleep\n    inputs: \"{ param() }\"\n";
    let s = run(&e, "nap", yaml, json!({"default": "banana"})).await;
    let err = s.error.unwrap();
    assert_eq!(err.status, Some(422), "{err:?}");
    assert!(err.message.contains("not a duration"), "{err:?}");
    let yaml = "output: A\ntasks:\n  A:\n    run: foreach\n    inputs:\n      foreach: \"{ param().items }\"\n      do: {run: noop}\n";
    let s = run(&e, "each", yaml, json!({"default": {"items": 3}})).await;
    assert_eq!(s.error.unwrap().status, Some(422));
    let again = e
        .start_run(
            "each",
            json!({"default": {"items": [1, 2]}}),
            Default::default(),
        )
        .await;
    let s = e.wait(&again.unwrap().id).await.unwrap();
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    // More items than a run may hold, sent by the caller.
    let many: Vec<u32> = vec![0; crate::driver::MAX_TASKS_PER_RUN + 1];
    let s = run(&e, "many", "output: A\ntasks:\n  A:\n    run: foreach\n    inputs:\n      foreach: \"{ param() }\"\n      do: {run: noop}\n", json!({"default": many})).await;
    let err = s.error.unwrap();
    assert_eq!(err.status, Some(422), "{err:?}");
    assert!(err.message.contains("100001 items"), "{err:?}");
    // A URL the caller sent that no request can go to.
    let yaml = "output: A\ntasks:\n  A:\n    run: http\n    inputs:\n      url: \"{ param() }\"\n";
    let s = run(&e, "get", yaml, json!({"default": "::::"})).await;
    let err = s.error.unwrap();
    assert_eq!(err.status, Some(422), "{err:?}");
    assert!(err.message.contains("not an http or https URL"), "{err:?}");
    let yaml = "output: A\ntasks:\n  A:\n    run: fail\n    inputs: \"{ param() }\"\n";
    let s = run(&e, "no", yaml, json!({"default": "out of stock"})).await;
    let err = s.error.unwrap();
    assert_eq!((err.status, err.message.as_str()), (None, "out of stock"));
}

#[tokio::test(start_paused = true)]
async fn recovery_redispatches_in_flight_with_same_key() {
    let (db, fake) = setup();
    fake.add("slow", Some(Duration::from_secs(10)), |_, _| {
        text(200, "slow-done")
    });
    let e = engine_with(&fake, &db).await;
    let yaml = "output: B\ntasks:\n  A:\n    run: echo\n    inputs: a\n  B:\n    run: slow\n    requires: [A]\n";
    e.create_workflow("rec", yaml).unwrap();
    let started = e
        .start_run("rec", json!(null), Default::default())
        .await
        .unwrap();
    until_called(&fake, "slow", 1).await;
    assert_eq!(fake.count("slow"), 1);
    e.shutdown().await;
    drop(e);
    let e2 = engine_with(&fake, &db).await;
    let s = e2.wait(&started.id).await.unwrap();
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!("slow-done")));
    assert_eq!(fake.count("echo"), 1, "finished task not run again");
    let keys = fake.keys("slow");
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "same idempotency key");
    let events = e2.run_events(&started.id).unwrap();
    assert_eq!(events.iter().filter(|e| e.is_terminal()).count(), 1);
    assert!(matches!(events.last(), Some(Event::RunSucceeded { .. })));
    // Its history says it was taken up again, and which call was repeated.
    let resumed: Vec<&Vec<String>> = events
        .iter()
        .filter_map(|e| match e {
            Event::RunResumed { repeated, .. } => Some(repeated),
            _ => None,
        })
        .collect();
    assert_eq!(resumed, vec![&vec!["B".to_string()]]);
}

#[tokio::test(start_paused = true)]
async fn expression_error_fails_the_task() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let s = run(&e, "x", "output: A\ntasks:\n  A:\n    run: noop\n    inputs: \"{ (function(){ throw new Error('nope') })() }\"\n", json!(null)).await;
    assert_eq!(s.status, RunStatus::Failed);
    let err = s.error.unwrap();
    assert!(
        err.message.contains("nope") && err.message.contains("throw"),
        "{}",
        err.message
    );
}

/// An output or inputs nested deeper than a document may be (a function's
/// JSON, a JavaScript value) fail their task; the run's history stays
/// readable (such a record could not be read back).
#[tokio::test(start_paused = true)]
async fn values_nested_too_deep_fail_their_task_and_the_history_reads() {
    let (db, fake) = setup();
    fake.add("deep", None, |_, _| {
        let mut v = json!(1);
        for _ in 0..126 {
            v = json!([v]);
        }
        json_resp(v)
    });
    // Deeper than its parser reads (128): not taken as text instead.
    fake.add("deeper", None, |_, _| {
        let text = format!("{}{}", "[".repeat(200), "]".repeat(200));
        Ok(FunctionResponse {
            status: 200,
            headers: [("content-type".to_string(), "application/json".to_string())].into(),
            body: Bytes::from(text),
        })
    });
    let e = engine_with(&fake, &db).await;
    for f in ["deep", "deeper"] {
        let s = run(
            &e,
            &format!("wf-{f}"),
            &format!("output: A\ntasks:\n  A:\n    run: {f}\n"),
            json!(null),
        )
        .await;
        assert_eq!(s.status, RunStatus::Failed, "{f}: {s:?}");
        let err = s.error.unwrap();
        assert!(
            err.message
                .contains("its output nests deeper than 64 levels"),
            "{f}: {}",
            err.message
        );
    }
    let made = "output: B\ntasks:\n  B:\n    run: noop\n    inputs: \"{ (function(){ let a = 1; for (let i = 0; i < 100; i++) a = [a]; return a })() }\"\n";
    let s = run(&e, "m", made, json!(null)).await;
    assert_eq!(s.status, RunStatus::Failed, "{s:?}");
    assert!(
        s.error
            .unwrap()
            .message
            .contains("its inputs nest deeper than 64"),
        "inputs"
    );
    // Every run reads back, listed and whole.
    let page = e
        .list_runs(&crate::store::RunFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.runs.len(), 3);
    for r in &page.runs {
        e.run_events(&r.id).unwrap();
    }
    // As deep as a document may be is kept.
    fake.add("sixty-four", None, |_, _| {
        let mut v = json!(1);
        for _ in 0..64 {
            v = json!([v]);
        }
        json_resp(v)
    });
    let s = run(
        &e,
        "ok",
        "output: A\ntasks:\n  A:\n    run: sixty-four\n",
        json!(null),
    )
    .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
}

mod api {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn call(
        app: &axum::Router,
        req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).to_string()));
        (status, headers, v)
    }

    /// A problem's code and place (`{code, line, column}`: an error or a
    /// warning), to compare at once.
    fn said_at(p: &Value) -> (Option<&str>, Option<u64>, Option<u64>) {
        (p["code"].as_str(), p["line"].as_u64(), p["column"].as_u64())
    }

    fn req(method: &str, uri: &str, body: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    /// Creates workflow `name`, one task that runs `function`.
    async fn one_task_workflow(app: &axum::Router, name: &str, function: &str) {
        let yaml = format!("output: C\ntasks:\n  C:\n    run: {function}\n");
        let uri = format!("/v1/workflows?name={name}");
        let (s, _, v) = call(app, req("POST", &uri, &yaml)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// Invokes `workflow` with `Idempotency-Key: key` and waits: the run
    /// must fail. Retries it and waits for the retry; answers both ids.
    async fn failed_then_retried(
        app: &axum::Router,
        e: &Arc<Engine>,
        workflow: &str,
        key: &str,
    ) -> (String, String) {
        let invoke = Request::builder()
            .method("POST")
            .uri(format!("/v1/workflows/{workflow}/invoke"))
            .header("idempotency-key", key)
            .body(Body::from("order-7"))
            .unwrap();
        let (s, h, v) = call(app, invoke).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
        let failed = h["x-fusion-run-id"].to_str().unwrap().to_string();
        let (s, _, retry) = call(app, req("POST", &format!("/v1/runs/{failed}/retry"), "")).await;
        assert!(s.is_success(), "{retry}");
        let retried = retry["id"].as_str().unwrap().to_string();
        e.wait(&retried).await.unwrap();
        (failed, retried)
    }

    /// A long poll (`?wait=`) answers the run as it is when the server's
    /// stop begins, rather than hold the stop for the poll's whole time. In
    /// real time: the store's flusher is a thread, and a paused clock would
    /// jump to the next timer (the poll's own end) while a read waits for it.
    #[tokio::test]
    async fn a_long_poll_answers_when_the_server_stops() {
        let (db, fake) = setup();
        let e = engine_with(&fake, &db).await;
        let app = crate::router(e.clone());
        e.create_workflow(
            "w",
            "output: A\ntasks:\n  A:\n    run: callback\n    timeout: 1h\n",
        )
        .unwrap();
        let id = e
            .start_run("w", json!(null), Default::default())
            .await
            .unwrap()
            .id;
        let poll = tokio::spawn({
            let app = app.clone();
            let uri = format!("/v1/runs/{id}?wait=300");
            async move { call(&app, req("GET", &uri, "")).await }
        });
        while e.polls_waiting() == 0 {
            tokio::task::yield_now().await;
        }
        e.end_polls();
        // Well before the poll's 300 s.
        let answered = tokio::time::timeout(Duration::from_secs(60), poll).await;
        let (s, _, v) = answered.expect("the poll answers at the stop").unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["status"], "running", "{v}");
        // A poll that comes later answers at once too.
        let later = call(&app, req("GET", &format!("/v1/runs/{id}?wait=300"), ""));
        let (s, _, v) = tokio::time::timeout(Duration::from_secs(60), later)
            .await
            .expect("a later poll answers at once");
        assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("running")));
    }

    /// A document saved with a byte-order mark (as Windows editors save) is
    /// read as the same document without it, in both formats.
    #[tokio::test(start_paused = true)]
    async fn a_workflow_saved_with_a_byte_order_mark_is_taken() {
        let (db, fake) = setup();
        let e = engine_with(&fake, &db).await;
        let app = crate::router(e.clone());
        let bom = "\u{feff}";
        let yaml = format!("{bom}apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: noop\n");
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=b1", &yaml)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let machine = format!(
            "{bom}apiVersion: fission.io/v1\nkind: Workflow\nmetadata:\n  name: b2\nspec:\n  startAt: done\n  states:\n    done:\n      type: Succeed\n"
        );
        let (s, _, v) = call(&app, req("POST", "/v1/workflows", &machine)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, _, v) = call(&app, req("PUT", "/v1/workflows/b1", &yaml)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    /// A workflow file that ends with `---` (or holds documents of nothing
    /// but comments beside its own) is its one workflow, as Fission
    /// Workflows' parser read a file's first document; a second document with
    /// content is refused where it starts, not dropped.
    #[tokio::test(start_paused = true)]
    async fn a_workflow_file_of_one_document_and_empty_ones_is_taken() {
        let (db, fake) = setup();
        let e = engine_with(&fake, &db).await;
        let app = crate::router(e.clone());
        let yaml = "---\nname: m1\noutput: A\ntasks:\n  A:\n    run: noop\n    inputs: '{ param() }'\n---\n# the end\n---\n";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows", yaml)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, _, v) = call(&app, req("POST", "/v1/workflows/m1/invoke", "7")).await;
        assert_eq!((s, &v), (StatusCode::OK, &json!(7)));
        // Kept and shown as it was written; the same file again is no version.
        let (_, _, v) = call(&app, req("GET", "/v1/workflows/m1", "")).await;
        assert_eq!(v["source"], json!(yaml), "{v}");
        let (s, _, v) = call(&app, req("PUT", "/v1/workflows/m1", yaml)).await;
        assert_eq!((s, &v["unchanged"]), (StatusCode::OK, &json!(true)), "{v}");
        let machine = "apiVersion: fission.io/v1\nkind: Workflow\nmetadata:\n  name: m2\nspec:\n  startAt: done\n  states:\n    done:\n      type: Succeed\n...\n";
        let (s, _, v) = call(
            &app,
            req("POST", "/v1/workflows", &format!("{machine}---\n")),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        // A Fission `Function` before the workflow: neither is dropped.
        let two = format!(
            "apiVersion: fission.io/v1\nkind: Function\nmetadata:\n  name: f\n---\n{}",
            &yaml[4..]
        );
        for (method, path) in [("POST", "/v1/workflows"), ("PUT", "/v1/workflows/m1")] {
            let (s, _, v) = call(&app, req(method, path, &two)).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
            assert_eq!(
                said_at(&v["error"]),
                (Some("several_documents"), Some(5), Some(1)),
                "{v}"
            );
        }
        // Errors in the one document are where the file has them.
        let bad =
            "# a comment\n---\noutput: A\ntasks:\n  A:\n    run: noop\n    requires: [B]\n---\n";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=m3", bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"]["line"], 7, "{v}");
    }

    /// A task with `requires` and nothing to run is a join, run as `noop` as
    /// Fission Workflows ran it; `create` says so, where the task is.
    #[tokio::test(start_paused = true)]
    async fn a_task_without_run_joins_as_a_noop_and_is_said() {
        let (db, fake) = setup();
        let e = engine_with(&fake, &db).await;
        let app = crate::router(e.clone());
        let yaml = "output: C\ntasks:\n  A:\n    run: noop\n    inputs: a\n  J:\n    requires: [A]\n  C:\n    run: noop\n    inputs: \"{ output('A') }\"\n    requires: [J]\n";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=join", yaml)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(
            said_at(&v["warnings"][0]),
            (Some("missing_run"), Some(6), Some(3)),
            "{v}"
        );
        let (s, _, v) = call(&app, req("POST", "/v1/workflows/join/invoke", "")).await;
        assert_eq!((s, &v), (StatusCode::OK, &json!("a")));
    }

    /// A call without a body gives `param()` the empty text, as Fission
    /// Workflows did: its KubeCon demo (`fortunewhale`) tells "no input" by
    /// `!!param()` and trims what it got. A JSON call without one is `null`.
    #[tokio::test(start_paused = true)]
    async fn a_call_without_a_body_reads_as_empty_text() {
        let (db, fake) = setup();
        let e = engine_with(&fake, &db).await;
        let app = crate::router(e.clone());
        let yaml = "output: Pick\ntasks:\n  Pick:\n    run: if\n    inputs:\n      if: \"{ !!param() }\"\n      then: \"{ param().trim() }\"\n      else: no input\n";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=pick", yaml)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        for (body, out) in [("", "no input"), (" Hi \n", "Hi")] {
            let (s, _, v) = call(&app, req("POST", "/v1/workflows/pick/invoke", body)).await;
            assert_eq!((s, &v), (StatusCode::OK, &json!(out)), "{body:?}");
        }
        let json_call = Request::builder()
            .method("POST")
            .uri("/v1/workflows/pick/invoke")
            .header("content-type", "application/json")
            .body(Body::empty())
            .unwrap();
        let (_, _, v) = call(&app, json_call).await;
        assert_eq!(v["error"]["code"], "run_failed", "null has no trim: {v}");
    }

    /// A workflow whose task runs the workflow itself at every run is stored
    /// with a warning where it says so; one inside an `if` (a recursion
    /// that can end) is not said.
    #[tokio::test(start_paused = true)]
    async fn a_workflow_that_always_runs_itself_is_said() {
        let (db, fake) = setup();
        let e = engine_with(&fake, &db).await;
        let app = crate::router(e.clone());
        let yaml = "output: Again\ntasks:\n  Again:\n    run: rec\n";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=rec", yaml)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(
            said_at(&v["warnings"][0]),
            (Some("runs_itself"), Some(4), Some(10)),
            "{v}"
        );
        let by_scheme = "output: Again\ntasks:\n  Again:\n    run: fission://rec2\n";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=rec2", by_scheme)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["warnings"][0]["code"], "runs_itself", "{v}");
        let ends = "output: Count\ntasks:\n  Count:\n    run: if\n    inputs:\n      if: \"{ param() > 0 }\"\n      then:\n        run: down\n        inputs: \"{ param() - 1 }\"\n      else: done\n";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=down", ends)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert!(v.get("warnings").is_none(), "{v}");
    }

    /// A caller whose input an expression cannot read is told so (422),
    /// text that is not the JSON it parses too; a name the expression never
    /// defined is the workflow's mistake (500), whatever it reads.
    #[tokio::test(start_paused = true)]
    async fn what_fails_an_expression_is_blamed_where_it_lies() {
        let (db, fake) = setup();
        let e = engine_with(&fake, &db).await;
        let app = crate::router(e.clone());
        for (name, expr) in [
            ("parse", "{ JSON.parse(param()).n }"),
            ("undefined", "{ nope(param()) }"),
        ] {
            let yaml = format!("output: A\ntasks:\n  A:\n    run: noop\n    inputs: \"{expr}\"\n");
            let (s, _, v) = call(
                &app,
                req("POST", &format!("/v1/workflows?name={name}"), &yaml),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
        }
        let (s, _, v) = call(
            &app,
            req("POST", "/v1/workflows/parse/invoke", "{\"n\": 2}"),
        )
        .await;
        assert_eq!((s, &v), (StatusCode::OK, &json!(2)));
        let (s, _, v) = call(&app, req("POST", "/v1/workflows/parse/invoke", "abc")).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        let (s, _, v) = call(&app, req("POST", "/v1/workflows/undefined/invoke", "abc")).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("ReferenceError"),
            "{v}"
        );
    }

    /// A second create is `already_exists` (as for every resource); an
    /// update's document may not name another workflow; a version a workflow
    /// does not have is said as such.
    #[tokio::test(start_paused = true)]
    async fn workflow_names_and_versions_are_checked_as_the_user_wrote_them() {
        let (db, fake) = setup();
        let e = engine_with(&fake, &db).await;
        let app = crate::router(e.clone());
        let yaml = "output: A\ntasks:\n  A:\n    run: noop\n";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=w1", yaml)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=w1", yaml)).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["error"]["code"], "already_exists", "{v}");
        let other = format!("name: other\n{yaml}");
        let (s, _, v) = call(&app, req("PUT", "/v1/workflows/w1", &other)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"]["code"], "name_mismatch", "{v}");
        // A Fission document of another kind names no workflow: it is
        // refused as what it is, whatever name the request gives.
        let function =
            "apiVersion: fission.io/v1\nkind: Function\nmetadata:\n  name: other\nspec: {}\n";
        for (method, path) in [
            ("PUT", "/v1/workflows/w1"),
            ("POST", "/v1/workflows?name=w2"),
            ("POST", "/v1/workflows"),
        ] {
            let (s, _, v) = call(&app, req(method, path, function)).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path}: {v}");
            assert_eq!(v["error"]["code"], "not_a_workflow", "{method} {path}: {v}");
            assert_eq!(
                v["error"]["details"][0]["code"], "not_a_workflow",
                "{method} {path}: {v}"
            );
        }
        let own = format!("name: w1\n{yaml}");
        let (s, _, v) = call(&app, req("PUT", "/v1/workflows/w1", &own)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, _, v) = call(&app, req("GET", "/v1/workflows/w1?version=99", "")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        assert_eq!(
            v["error"]["message"],
            "workflow \"w1\" has no version 99 (its latest is 2; `fusion wf versions w1` lists them)",
            "{v}"
        );
    }

    /// A task that runs a built-in also named by a function is stored with a
    /// warning: the built-in runs (as in Fission Workflows), not the function.
    #[tokio::test(start_paused = true)]
    async fn a_shadowing_builtin_and_a_bare_expression_are_warnings() {
        let (db, fake) = setup();
        fake.add("sleep", None, |_, _| text(200, "the function"));
        let e = engine_with(&fake, &db).await;
        let app = crate::router(e.clone());
        let yaml = "output: A\ntasks:\n  A:\n    run: sleep\n    inputs: 1ms\n";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=nap", yaml)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let w = &v["warnings"][0];
        assert_eq!(w["code"], "shadowed_by_builtin", "{v}");
        assert_eq!(
            (w["line"].clone(), w["column"].clone()),
            (json!(4), json!(10)),
            "{v}"
        );
        assert!(
            w["message"].as_str().unwrap().contains("fission://sleep"),
            "{v}"
        );
        // An expression without its braces (as old Fission Workflows examples
        // wrote them) is text, and said so.
        let bare = "output: B\ntasks:\n  A:\n    run: noop\n  B:\n    run: noop\n    inputs: $.Tasks.A.Output\n    requires: [A]\n";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=bare", bare)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["warnings"][0]["code"], "bare_expression", "{v}");
        assert_eq!(v["warnings"][0]["line"], 7, "{v}");
        assert!(
            v["warnings"][0]["message"]
                .as_str()
                .unwrap()
                .contains("{ $.Tasks.A.Output }"),
            "{v}"
        );
        // So is an expression inside other text, and a version Fission
        // Workflows never had (both read as they are, as there).
        let embedded = "apiVersion: 2\noutput: A\ntasks:\n  A:\n    run: noop\n    inputs: \"Whale says: {$.Invocation.Inputs.default}\"\n";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=emb", embedded)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let codes: Vec<_> = v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["code"].as_str().unwrap(), w["line"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            codes,
            [("unknown_api_version", 1), ("embedded_expression", 6)],
            "{v}"
        );
        let explicit = "apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: fission://sleep\n    inputs: \"{ 'at ' + param() }\"\n";
        let (s, _, v) = call(&app, req("PUT", "/v1/workflows/nap", explicit)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(v.get("warnings").is_none(), "{v}");
    }

    /// What reads as nothing at run time is said when the workflow is stored:
    /// an input a function is not sent, a task read that does not exist or
    /// is not waited for.
    #[tokio::test(start_paused = true)]
    async fn unsent_inputs_and_tasks_read_unknown_or_unrequired_are_warnings() {
        let (db, fake) = setup();
        fake.add("charge", None, |_, _| text(200, "ok"));
        let e = engine_with(&fake, &db).await;
        let app = crate::router(e.clone());
        let yaml = "output: C
tasks:
  A:
    run: charge
    inputs:
      default: 1
      amount: 10
  B:
    run: noop
    inputs: \"{ output('A') }\"
  C:
    run: noop
    inputs: \"{ output('Nope') }\"
    requires: [B]
  D:
    run: noop
    inputs: \"{ task('A').Output }\"
    requires: [B]
  E:
    run: noop
    inputs: \"{ $.Tasks.A.Output }\"
    requires: [A]
";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=reads", yaml)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let said: Vec<(String, u64, String)> = v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["code"].as_str().unwrap().to_string(),
                    w["line"].as_u64().unwrap(),
                    w["message"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let codes: Vec<(&str, u64)> = said.iter().map(|(c, l, _)| (c.as_str(), *l)).collect();
        assert_eq!(
            codes,
            [
                ("unsent_input", 7),
                ("not_required", 10),
                ("unknown_task", 13),
                ("not_required", 17)
            ],
            "{v}"
        );
        assert!(said[0].2.contains("put it under `default`"), "{v}");
        assert!(said[1].2.contains("add `requires: [A]`"), "{v}");
        // E waits for A, through requires: nothing to say of it. Nor of a read
        // of a required task's fallback, or a nested workflow's own task.
        let quiet = "output: C
tasks:
  T:
    run: charge
    onFailure: FB
  FB:
    run: noop
  C:
    run: noop
    inputs: \"{ output('FB') }\"
    requires: [T]
  A:
    run: noop
  F:
    run: foreach
    inputs:
      foreach: [1]
      do:
        output: Z
        tasks:
          A: {run: noop}
          Z:
            run: noop
            inputs: \"{ output('A') }\"
            requires: [A]
";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=quiet", quiet)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert!(v.get("warnings").is_none(), "{v}");
        // A task nested in a built-in's inputs is looked at too.
        let nested = "output: I
tasks:
  I:
    run: if
    inputs:
      if: true
      then:
        run: charge
        inputs:
          default: 1
          extra: 2
";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=nested", nested)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["warnings"][0]["code"], "unsent_input", "{v}");
        assert_eq!(v["warnings"][0]["line"], 11, "{v}");
        assert!(
            v["warnings"][0]["message"]
                .as_str()
                .unwrap()
                .contains("\"extra\""),
            "{v}"
        );
    }

    /// A start repeated with the same `Idempotency-Key` finds the run the
    /// first made: one run, one call of its function, the same answer.
    #[tokio::test(start_paused = true)]
    async fn an_idempotency_key_starts_a_run_once() {
        let (db, fake) = setup();
        fake.add("charge", None, |_, n| text(200, &format!("charged {n}")));
        let e = engine_with(&fake, &db).await;
        let app = crate::router(e.clone());
        let yaml = "output: C\ntasks:\n  C:\n    run: charge\n";
        for name in ["pay", "refund"] {
            let (s, _, v) = call(
                &app,
                req("POST", &format!("/v1/workflows?name={name}"), yaml),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
        }
        let start = |name: &str, key: &str, asynchronous: bool| {
            let mut r = Request::builder()
                .method("POST")
                .uri(format!("/v1/workflows/{name}/invoke"))
                .header("idempotency-key", key);
            if asynchronous {
                r = r.header("x-async", "true");
            }
            r.body(Body::from("order-7")).unwrap()
        };
        let (s, h, first) = call(&app, start("pay", "order-7", true)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{first}");
        assert!(h.get("idempotent-replayed").is_none());
        let (s, h, again) = call(&app, start("pay", "order-7", true)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{again}");
        assert_eq!(again["id"], first["id"], "the same run");
        assert_eq!(h.get("idempotent-replayed").unwrap(), "true");
        let id = first["id"].as_str().unwrap().to_string();
        e.wait(&id).await.unwrap();
        // A replay after its end says so.
        let (_, _, ended) = call(&app, start("pay", "order-7", true)).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
        // Waited for, it answers the run's output, said to be a replay; the
        // function ran once.
        let (s, h, v) = call(&app, start("pay", "order-7", false)).await;
        assert_eq!((s, v), (StatusCode::OK, json!("charged 1")));
        assert_eq!(h.get("idempotent-replayed").unwrap(), "true");
        // Fission's X-Fission-Dedup-Key (RFC-0024) is the same key.
        let dedup = Request::builder()
            .method("POST")
            .uri("/v1/workflows/pay/invoke")
            .header("x-fission-dedup-key", "order-7")
            .header("x-async", "true")
            .body(Body::from("order-7"))
            .unwrap();
        let (s, _, v) = call(&app, dedup).await;
        assert_eq!((s, &v["id"]), (StatusCode::ACCEPTED, &first["id"]), "{v}");
        assert_eq!(fake.count("charge"), 1);
        // The history finds the run by its key (a key is a workflow's); a
        // filter it does not know is refused, not ignored.
        let get = |uri: &str| req("GET", uri, "");
        let (s, _, v) = call(&app, get("/v1/runs?workflow=pay&idempotency_key=order-7")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["runs"].as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v["runs"][0]["id"], first["id"], "{v}");
        let (_, _, v) = call(
            &app,
            get("/v1/runs?workflow=refund&idempotency_key=order-7"),
        )
        .await;
        assert_eq!(v["runs"], json!([]), "not refund's");
        let (s, _, v) = call(&app, get("/v1/runs?idempotency_key=order-7")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let (s, _, v) = call(&app, get("/v1/runs?idempotency=order-7")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("unknown query parameter `idempotency`"),
            "{v}"
        );
        // The same key with another body is a mistake, said as one.
        let mut other_body = start("pay", "order-7", true);
        *other_body.body_mut() = Body::from("order-9");
        let (s, _, v) = call(&app, other_body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("idempotency_key_reused")
            ),
            "{v}"
        );
        // So is another query with the same body.
        let mut other_query = start("pay", "order-7", true);
        *other_query.uri_mut() = "/v1/workflows/pay/invoke?amount=1000".parse().unwrap();
        let (s, _, v) = call(&app, other_query).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("(its query differs)"),
            "{v}"
        );
        // A large body (stored beside the run's summary, once) is compared
        // whole: the same again is the run, one character more is not.
        let large = |body: String| {
            let mut r = start("pay", "order-large", true);
            *r.body_mut() = Body::from(body);
            r
        };
        let body = "a".repeat(3000);
        let (s, _, first_large) = call(&app, large(body.clone())).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{first_large}");
        let (s, _, again) = call(&app, large(body.clone())).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{again}");
        assert_eq!(again["id"], first_large["id"]);
        let (s, _, v) = call(&app, large(format!("{body}b"))).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        // Another key, or another workflow, is another run.
        let (_, _, other) = call(&app, start("pay", "order-8", true)).await;
        let (_, _, refund) = call(&app, start("refund", "order-7", true)).await;
        assert_ne!(other["id"], first["id"]);
        assert_ne!(refund["id"], first["id"]);
        // A run retried since answers a replay as its retry: the key names
        // the operation, which the retry carried on.
        fake.add("flaky", None, |_, n| {
            if n == 1 {
                text(500, "down")
            } else {
                text(200, "paid")
            }
        });
        one_task_workflow(&app, "flakypay", "flaky").await;
        let (failed, retried) = failed_then_retried(&app, &e, "flakypay", "order-1").await;
        let (s, h, v) = call(&app, start("flakypay", "order-1", false)).await;
        assert_eq!((s, v), (StatusCode::OK, json!("paid")));
        assert_eq!(h["x-fusion-run-id"], retried.as_str());
        assert_eq!(h.get("idempotent-replayed").unwrap(), "true");
        // Once that run is deleted, its key starts a new run (of the same
        // id), which the old run's retry is not a retry of.
        let (s, _, v) = call(&app, req("DELETE", &format!("/v1/runs/{failed}"), "")).await;
        assert!(s.is_success(), "{v}");
        // (A moment later: runs of one id are told apart by their start.)
        tokio::time::advance(Duration::from_millis(1)).await;
        let (s, h, v) = call(&app, start("flakypay", "order-1", false)).await;
        assert_eq!((s, v), (StatusCode::OK, json!("paid")));
        assert!(h.get("idempotent-replayed").is_none());
        assert_eq!(h["x-fusion-run-id"], failed.as_str());
        let (_, h, _) = call(&app, start("flakypay", "order-1", false)).await;
        assert_eq!(
            h["x-fusion-run-id"],
            failed.as_str(),
            "not the old run's retry"
        );
        // A keyed run started again after its deletion that fails is retried
        // afresh, not refused as retried already by the old run's retry.
        fake.add("odd", None, |_, n| {
            if n % 2 == 1 {
                text(500, "down")
            } else {
                text(200, "paid")
            }
        });
        one_task_workflow(&app, "oddpay", "odd").await;
        let mut retries = Vec::new();
        for _ in 0..2 {
            let (run, retried) = failed_then_retried(&app, &e, "oddpay", "order-2").await;
            let (s, h, v) = call(&app, start("oddpay", "order-2", false)).await;
            assert_eq!((s, v), (StatusCode::OK, json!("paid")));
            assert_eq!(h["x-fusion-run-id"], retried.as_str());
            retries.push(retried);
            let (s, _, v) = call(&app, req("DELETE", &format!("/v1/runs/{run}"), "")).await;
            assert!(s.is_success(), "{v}");
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_ne!(retries[0], retries[1]);
        let too_long = "k".repeat(256);
        for bad in ["", too_long.as_str()] {
            let (s, _, v) = call(&app, start("pay", bad, true)).await;
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some("invalid_header")),
                "{v}"
            );
        }
    }

    /// A synchronous invocation whose run failed for taking too long answers
    /// 504 `run_timed_out`, not a 500 a client cannot tell from a crash.
    #[tokio::test(start_paused = true)]
    async fn a_run_that_timed_out_answers_504() {
        let (db, fake) = setup();
        fake.add("slow", Some(Duration::from_secs(60)), |_, _| {
            text(200, "late")
        });
        fake.add("bad", None, |_, _| text(500, "boom"));
        let e = engine_with(&fake, &db).await;
        let app = crate::router(e.clone());
        for (name, yaml, status, code) in [
            (
                "late",
                "output: S\ntasks:\n  S:\n    run: slow\n    timeout: 1s\n",
                504,
                "run_timed_out",
            ),
            (
                "long",
                "output: S\ntimeout: 2s\ntasks:\n  S:\n    run: slow\n",
                504,
                "run_timed_out",
            ),
            (
                "boom",
                "output: S\ntasks:\n  S:\n    run: bad\n",
                500,
                "run_failed",
            ),
        ] {
            let (s, _, v) = call(
                &app,
                req("POST", &format!("/v1/workflows?name={name}"), yaml),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            let (s, _, v) = call(
                &app,
                req("POST", &format!("/v1/workflows/{name}/invoke"), ""),
            )
            .await;
            assert_eq!(
                (s.as_u16(), v["error"]["code"].as_str()),
                (status, Some(code)),
                "{v}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn workflow_and_run_endpoints() {
        let (db, fake) = setup();
        let e = engine_with(&fake, &db).await;
        let app = crate::router(e.clone());
        let yaml = "output: A\ntasks:\n  A:\n    run: echo\n    inputs: \"{ param() }\"\n";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=hello", yaml)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["version"], 1);
        let (s, _, _) = call(&app, req("POST", "/v1/workflows?name=hello", yaml)).await;
        assert_eq!(s, StatusCode::CONFLICT);
        let (s, _, v) = call(
            &app,
            req(
                "POST",
                "/v1/workflows",
                "name: byfield\noutput: A\ntasks:\n  A:\n    run: nosuch\n",
            ),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["code"], "unknown_function");
        assert_eq!(v["error"]["details"][0]["line"], 5);
        // The same document again stores nothing; another is version 2.
        let (s, _, v) = call(&app, req("PUT", "/v1/workflows/hello", yaml)).await;
        assert_eq!(
            (s, v["version"].clone(), v["unchanged"].clone()),
            (StatusCode::OK, json!(1), json!(true))
        );
        let changed = format!("description: two\n{yaml}");
        let (s, _, v) = call(&app, req("PUT", "/v1/workflows/hello", &changed)).await;
        assert_eq!((s, v["version"].clone()), (StatusCode::OK, json!(2)));
        assert_eq!(v["unchanged"], Value::Null);
        let (_, _, v) = call(&app, req("GET", "/v1/workflows/hello/versions", "")).await;
        assert_eq!(v.as_array().unwrap().len(), 2);
        let (s, _, v) = call(&app, req("GET", "/v1/workflows/hello?version=1", "")).await;
        assert_eq!((s, v["version"].clone()), (StatusCode::OK, json!(1)));
        let (_, _, v) = call(&app, req("GET", "/v1/workflows", "")).await;
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert_eq!(v[0]["format"], "fission-workflows");
        // A Fission `Workflow` reads back as its own spec, not the engine's
        // task graph around it.
        let machine = "apiVersion: fission.io/v1\nkind: Workflow\nmetadata:\n  name: machine\nspec:\n  startAt: Call\n  states:\n    Call:\n      type: Task\n      function: {name: echo}\n      end: true\n";
        let (s, _, v) = call(&app, req("POST", "/v1/workflows", machine)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (_, _, v) = call(&app, req("GET", "/v1/workflows/machine", "")).await;
        assert_eq!(v["format"], "rfc-0022", "{v}");
        assert_eq!(v["spec"]["startAt"], "Call", "{v}");
        assert_eq!(
            v["spec"]["states"]["Call"]["function"]["name"], "echo",
            "{v}"
        );
        assert!(v["spec"].get("tasks").is_none(), "{v}");
        assert!(v["spec"].get("state_machine").is_none(), "{v}");
        let (s, _, _) = call(&app, req("DELETE", "/v1/workflows/machine", "")).await;
        assert_eq!(s, StatusCode::NO_CONTENT);

        // Synchronous invoke: text body in, text out.
        let (s, h, v) = call(&app, req("POST", "/v1/workflows/hello/invoke", "ping")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v, json!("ping"));
        let run_id = h["x-fusion-run-id"].to_str().unwrap().to_string();
        // Asynchronous invoke.
        let r = Request::builder()
            .method("POST")
            .uri("/v1/workflows/hello/invoke")
            .header("X-Async", "true")
            .body(Body::from("x"))
            .unwrap();
        let (s, h, v) = call(&app, r).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        assert_eq!(
            h["location"].to_str().unwrap(),
            format!("/v1/runs/{}", v["id"].as_str().unwrap())
        );
        e.wait(v["id"].as_str().unwrap()).await.unwrap();

        let (s, _, v) = call(&app, req("GET", &format!("/v1/runs/{run_id}"), "")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["status"], "succeeded");
        assert_eq!(v["tasks"][0]["attempts"], 1);
        let (_, _, v) = call(&app, req("GET", &format!("/v1/runs/{run_id}/events"), "")).await;
        assert_eq!(v["events"][0]["type"], "RunStarted");
        let (_, _, v) = call(&app, req("GET", "/v1/runs?workflow=hello&limit=1", "")).await;
        assert_eq!(v["runs"].as_array().unwrap().len(), 1);
        assert!(v["next_cursor"].is_string());
        let (s, _, _) = call(&app, req("GET", "/v1/runs?status=bogus", "")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _, _) = call(&app, req("GET", "/v1/runs/nope", "")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _, _) = call(&app, req("POST", &format!("/v1/runs/{run_id}/cancel"), "")).await;
        assert_eq!(s, StatusCode::CONFLICT);
        // A misspelt key is said (the reason would be lost), before the run
        // is looked at.
        let uri = format!("/v1/runs/{run_id}/cancel");
        let (s, _, v) = call(&app, req("POST", &uri, r#"{"reasn": "x"}"#)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("\"reasn\""),
            "{v}"
        );
        let (s, _, _) = call(&app, req("DELETE", "/v1/workflows/hello", "")).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _, v) = call(&app, req("POST", "/v1/workflows/hello/invoke", "")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_query_parameters_are_json_errors() {
        let (db, fake) = setup();
        let e = engine_with(&fake, &db).await;
        let app = crate::router(e.clone());
        for uri in [
            "/v1/runs?since=yesterday",
            "/v1/runs?limit=-1",
            "/v1/runs?until=1.5",
            "/v1/workflows/x?version=latest",
        ] {
            let (s, _, v) = call(&app, req("GET", uri, "")).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
            assert_eq!(v["error"]["code"], "invalid_query", "{uri}: {v}");
            // Which parameter, and what it takes.
            let m = v["error"]["message"].as_str().unwrap();
            assert!(m.starts_with("a query parameter is malformed: "), "{m}");
            assert!(m.ends_with(')'), "{m}");
        }
        let (s, _, v) = call(&app, req("GET", "/v1/runs/%FF", "")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"]["code"], "invalid_path", "{v}");
        // A workflow document over the body limit: 413 with a JSON error.
        let big = format!("output: A\ntasks:\n  A: {{}}\n#{}\n", "x".repeat(17 << 20));
        let (s, _, v) = call(&app, req("POST", "/v1/workflows?name=big", &big)).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
        assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_invocation_whose_body_never_arrives_gets_408() {
        let (db, fake) = setup();
        let e = engine_with(&fake, &db).await;
        e.create_workflow("w", "output: A\ntasks:\n  A:\n    run: noop\n")
            .unwrap();
        let app = crate::router(e.clone());
        // A body that sends a little, then nothing, for ever.
        let first: Result<Bytes, std::io::Error> = Ok(Bytes::from_static(b"0123"));
        let stalled = futures_util::StreamExt::chain(
            futures_util::stream::iter([first]),
            futures_util::stream::pending(),
        );
        let request = Request::builder()
            .method("POST")
            .uri("/v1/workflows/w/invoke")
            .body(Body::from_stream(stalled))
            .unwrap();
        let (s, _, v) = call(&app, request).await;
        assert_eq!(s, StatusCode::REQUEST_TIMEOUT, "{v}");
        assert_eq!(v["error"]["code"], "request_timeout", "{v}");
        // No run was started for it.
        assert!(e.list_runs(&Default::default()).unwrap().runs.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_run_passes_4xx_and_json_output() {
        let (db, fake) = setup();
        fake.add("notfound", None, |_, _| text(404, "missing"));
        let e = engine_with(&fake, &db).await;
        e.create_workflow("f", "output: A\ntasks:\n  A:\n    run: notfound\n")
            .unwrap();
        let r = Request::builder()
            .method("POST")
            .uri("/x")
            .body(Body::empty())
            .unwrap();
        let resp = crate::invoke_http(e.clone(), "f", r).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["task"], "A");
        assert_eq!(v["error"]["status"], 404);

        e.create_workflow("j", "output: A\ntasks:\n  A:\n    run: compose\n    inputs:\n      got: \"{ param().n }\"\n      q: \"{ $.Invocation.Inputs.query.k }\"\n      h: \"{ $.Invocation.Inputs.headers['X-Thing'] }\"\n").unwrap();
        let r = Request::builder()
            .method("POST")
            .uri("/x?k=v")
            .header("content-type", "application/json")
            .header("x-thing", "t")
            .body(Body::from("{\"n\": 5}"))
            .unwrap();
        let resp = crate::invoke_http(e.clone(), "j", r).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v, json!({"got": 5, "q": "v", "h": "t"}));
    }
}

/// A crash after a run's terminal event reached disk but before its summary and
/// status index were updated must not leave the run listed as running forever.
#[tokio::test(start_paused = true)]
async fn recovery_repairs_the_summary_of_a_run_that_ended_before_the_crash() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let s = run(
        &e,
        "w",
        "output: A\ntasks:\n  A:\n    run: noop\n    inputs: x\n",
        json!(null),
    )
    .await;
    assert_eq!(s.status, RunStatus::Succeeded);
    e.shutdown().await;
    drop(e);
    // Put the summary and index back as they were before the terminal event.
    let runs = db.db.open_tree("runs").unwrap();
    let mut stale = s.clone();
    stale.status = RunStatus::Running;
    stale.output = None;
    stale.finished_at = None;
    runs.insert(s.id.as_bytes(), serde_json::to_vec(&stale).unwrap())
        .unwrap();
    let by_status = db.db.open_tree("runs_by_status").unwrap();
    let key = |st: &str| {
        let mut k = st.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(&s.created_at.to_be_bytes());
        k.extend_from_slice(s.id.as_bytes());
        k
    };
    by_status.remove(key("succeeded")).unwrap();
    by_status.insert(key("running"), &[]).unwrap();

    let e2 = engine_with(&fake, &db).await;
    let now = e2.run_summary(&s.id).unwrap();
    assert_eq!(now.status, RunStatus::Succeeded, "{now:?}");
    assert_eq!(now.output, Some(json!("x")));
    assert!(crate::store::RunStore::unfinished_runs(e2.store().as_ref())
        .unwrap()
        .is_empty());
    let page = e2
        .list_runs(&crate::store::RunFilter {
            statuses: vec![RunStatus::Succeeded],
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.runs.len(), 1);
}

/// A sleep beyond any clock (a user's typo) is refused; the longest one taken
/// must not kill the run's actor: the run still answers a cancel.
#[tokio::test(start_paused = true)]
async fn huge_sleep_does_not_break_the_run() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let err = e
        .create_workflow(
            "zz",
            "output: S\ntasks:\n  S:\n    run: sleep\n    inputs: 18446744073709551615\n",
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("is longer than the longest duration"),
        "{err}"
    );
    e.create_workflow(
        "zz",
        "output: S\ntasks:\n  S:\n    run: sleep\n    inputs: 1000000000000\n",
    )
    .unwrap();
    let started = e
        .start_run("zz", json!(null), Default::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let s = e.cancel(&started.id, "test").await.unwrap();
    assert_eq!(s.status, RunStatus::Cancelled);
}

/// A finished run leaves no timer behind: with a one-hour run timeout, the
/// timer task (holding the engine) must not outlive the run by an hour.
/// (Real time: paused time would jump to the timers while flushes run.)
#[tokio::test]
async fn finished_runs_leave_no_timers_behind() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let before = Arc::strong_count(&e);
    for i in 0..3 {
        let s = run(
            &e,
            &format!("t{i}"),
            "output: A\ntimeout: 1h\ntasks:\n  A:\n    run: echo\n    inputs: x\n",
            json!(null),
        )
        .await;
        assert_eq!(s.status, RunStatus::Succeeded);
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        Arc::strong_count(&e),
        before,
        "timer tasks still hold the engine"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_call_fails_its_task_instead_of_stalling_the_run() {
    let (db, fake) = setup();
    fake.add("explodes", None, |_, _| panic!("a bug in an invoker"));
    let engine = engine_with(&fake, &db).await;
    let summary = run(
        &engine,
        "boom",
        "apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: explodes\n",
        json!({}),
    )
    .await;
    assert_eq!(summary.status, RunStatus::Failed);
    let error = summary.error.expect("the run names its error");
    assert!(error.message.contains("inside Fusion"), "{error:?}");
}

struct NeverAnswers;

impl crate::driver::HttpTransport for NeverAnswers {
    fn send(
        &self,
        _request: crate::builtins::HttpRequest,
    ) -> crate::store::BoxFuture<Result<FunctionResponse, String>> {
        Box::pin(std::future::pending())
    }
}

/// Answers every request 200, keeping what was asked.
#[derive(Default)]
struct Records(std::sync::Mutex<Vec<crate::builtins::HttpRequest>>);

impl crate::driver::HttpTransport for Records {
    fn send(
        &self,
        request: crate::builtins::HttpRequest,
    ) -> crate::store::BoxFuture<Result<FunctionResponse, String>> {
        self.0.lock().unwrap().push(request);
        Box::pin(async { text(200, "ok").map_err(|e| format!("{e:?}")) })
    }
}

/// A task's HTTP call carries its idempotency key, as a function call does,
/// so that one made again after a restart can be told; a key the task sets
/// itself is left alone.
#[tokio::test(start_paused = true)]
async fn http_calls_carry_the_tasks_idempotency_key() {
    let (db, fake) = setup();
    let records = Arc::new(Records::default());
    let engine = db
        .open(
            &fake,
            EngineConfig {
                http: Some(records.clone()),
                ..EngineConfig::default()
            },
        )
        .await;
    let yaml = "apiVersion: 1\noutput: C\ntasks:\n  A:\n    run: http\n    inputs:\n      url: http://127.0.0.1:9/a\n  B:\n    run: http://127.0.0.1:9/b\n    requires: [A]\n  C:\n    run: http\n    requires: [B]\n    inputs:\n      url: http://127.0.0.1:9/c\n      headers:\n        x-fusion-idempotency-key: mine\n";
    let summary = run(&engine, "keyed", yaml, json!({})).await;
    assert_eq!(summary.status, RunStatus::Succeeded, "{summary:?}");
    let keys: Vec<Vec<String>> = records
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("x-fusion-idempotency-key"))
                .map(|(_, v)| v.clone())
                .collect()
        })
        .collect();
    let id = &summary.id;
    assert_eq!(
        keys,
        vec![
            vec![format!("{id}/A")],
            vec![format!("{id}/B")],
            vec!["mine".to_string()],
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_task_timeout_bounds_the_http_builtin() {
    let (db, fake) = setup();
    let engine = db
        .open(
            &fake,
            EngineConfig {
                http: Some(Arc::new(NeverAnswers)),
                ..EngineConfig::default()
            },
        )
        .await;
    let summary = run(
        &engine,
        "slowhttp",
        "apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: http\n    timeout: 2s\n    inputs:\n      url: http://127.0.0.1:9/never\n",
        json!({}),
    )
    .await;
    assert_eq!(summary.status, RunStatus::Failed);
    let error = summary.error.expect("the run names its error");
    assert!(error.message.contains("timed out"), "{error:?}");
    assert_eq!(error.code(summary.status), "run_timed_out", "{error:?}");
    // Without one, its own limit: said as such, a timeout (504), not a
    // request that failed.
    let summary = run(
        &engine,
        "slowhttp2",
        "apiVersion: 1\noutput: A\ntasks:\n  A:\n    run: http\n    inputs:\n      url: http://127.0.0.1:9/never\n",
        json!({}),
    )
    .await;
    assert_eq!(summary.status, RunStatus::Failed);
    let error = summary.error.expect("the run names its error");
    assert!(
        error
            .message
            .contains("no answer within 60s (the `http` built-in's limit"),
        "{error:?}"
    );
    assert_eq!(error.code(summary.status), "run_timed_out", "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn a_workflow_that_calls_itself_fails_at_the_depth_limit() {
    let (db, fake) = setup();
    let engine = engine_with(&fake, &db).await;
    let summary = run(
        &engine,
        "forever",
        "apiVersion: 1\noutput: Again\ntasks:\n  Again:\n    run: forever\n",
        json!({}),
    )
    .await;
    assert_eq!(summary.status, RunStatus::Failed);
    let error = summary.error.expect("the run names its error");
    assert!(error.message.contains("call itself"), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn computed_references_still_see_every_task() {
    let (db, fake) = setup();
    let engine = engine_with(&fake, &db).await;
    let summary = run(
        &engine,
        "reflect",
        "apiVersion: 1\noutput: C\ntasks:\n  A:\n    run: noop\n    inputs: a\n  B:\n    run: noop\n    inputs: b\n  C:\n    run: noop\n    inputs: \"{ Object.keys($.Tasks).sort().join(',') + ' ' + output('A') + param() }\"\n    requires: [A, B]\n",
        json!({"default": "!"}),
    )
    .await;
    assert_eq!(summary.status, RunStatus::Succeeded, "{summary:?}");
    assert_eq!(summary.output, Some(json!("A,B,C a!")));
}

/// The token of the `callback` task `task` of run `id`, once it waits.
async fn callback_token_of(e: &Arc<Engine>, id: &str, task: &str) -> String {
    let token = || {
        e.run_state(id)
            .ok()
            .and_then(|s| s.tasks.get(task).and_then(|t| t.callback.clone()))
    };
    until(
        &format!("task {task} of run {id} to wait on a callback"),
        || token().is_some(),
    )
    .await;
    token().unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_callback_task_completes_once_from_outside() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let yaml = "output: B\ntasks:\n  A:\n    run: callback\n  B:\n    run: echo\n    inputs: \"{ output('A').approved + '!' }\"\n    requires: [A]\n";
    e.create_workflow("approve", yaml).unwrap();
    let started = e
        .start_run("approve", json!(null), Default::default())
        .await
        .unwrap();
    let token = callback_token_of(&e, &started.id, "A").await;
    assert!(matches!(
        e.complete_callback(&format!("{}.0", started.id), json!(1), None)
            .await,
        Err(crate::EngineError::NotFound(_))
    ));
    let task = e
        .complete_callback(&token, json!({"approved": "yes"}), None)
        .await
        .unwrap();
    assert_eq!(task, "A");
    let s = e.wait(&started.id).await.unwrap();
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!("yes!")));
    let again = e
        .complete_callback(&token, json!({"approved": "no"}), None)
        .await;
    assert!(
        matches!(again, Err(crate::EngineError::Conflict(_))),
        "{again:?}"
    );
    assert!(matches!(
        e.complete_callback("nonsense", json!(1), None).await,
        Err(crate::EngineError::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_callback_error_fails_the_run_and_an_unanswered_one_times_out() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    e.create_workflow(
        "wait",
        "output: A\ntasks:\n  A:\n    run: callback\n    timeout: 1h\n",
    )
    .unwrap();
    let started = e
        .start_run("wait", json!(null), Default::default())
        .await
        .unwrap();
    let token = callback_token_of(&e, &started.id, "A").await;
    e.complete_callback(&token, Value::Null, Some("rejected".into()))
        .await
        .unwrap();
    let s = e.wait(&started.id).await.unwrap();
    assert_eq!(s.status, RunStatus::Failed);
    assert_eq!(s.error.unwrap().message, "rejected");

    let started = e
        .start_run("wait", json!(null), Default::default())
        .await
        .unwrap();
    let token = callback_token_of(&e, &started.id, "A").await;
    let s = e.wait(&started.id).await.unwrap();
    assert_eq!(s.status, RunStatus::Failed);
    assert!(s
        .error
        .unwrap()
        .message
        .contains("within its timeout of 1h"));
    // The run has ended without it: a completion says so.
    match e.complete_callback(&token, json!(1), None).await {
        Err(crate::EngineError::Conflict(m)) => assert!(m.contains("has ended (failed)"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// The value of header `name` in the `n`th call of `function`.
fn header_of(fake: &FakeInvoker, function: &str, n: usize, name: &str) -> String {
    let calls = fake.calls.lock().unwrap();
    let call = calls
        .iter()
        .filter(|c| c.function == function)
        .nth(n)
        .expect("called");
    call.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Waits until `function` has had `n` calls (see `until`).
async fn until_called(fake: &FakeInvoker, function: &str, n: usize) {
    until(&format!("{function} to be called {n} times"), || {
        fake.count(function) >= n
    })
    .await;
}

/// Waits until `done()` holds, for at most 30 s of real time. Tokio's time is
/// paused in these tests while the store's flushes are real I/O on sled's
/// threads: sleeping would let the paused clock jump ahead (past timeouts the
/// test relies on) while a flush is still under way, so this yields instead,
/// which keeps the clock where it is.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_callback_hands_its_url_to_the_notify_function() {
    let (db, fake) = setup();
    fake.add("tell", None, |_, _| text(202, "noted"));
    let e = db
        .open(
            &fake,
            EngineConfig {
                callback_base: Some("http://api.test:1".into()),
                ..EngineConfig::default()
            },
        )
        .await;
    let yaml = "output: A\ntasks:\n  A:\n    run: callback\n    inputs:\n      notify: tell\n      body: \"{ param() }\"\n";
    e.create_workflow("told", yaml).unwrap();
    let started = e
        .start_run("told", json!({"default": "order-7"}), Default::default())
        .await
        .unwrap();
    until_called(&fake, "tell", 1).await;
    let token = header_of(&fake, "tell", 0, "x-fusion-callback-token");
    assert_eq!(
        header_of(&fake, "tell", 0, "x-fusion-callback-url"),
        format!("http://api.test:1/v1/callbacks/{token}")
    );
    assert_eq!(fake.calls.lock().unwrap()[0].body, "order-7");
    // The notify function's answer is not the task's output: it still waits.
    assert_eq!(
        e.run_summary(&started.id).unwrap().status,
        RunStatus::Running
    );
    e.complete_callback(&token, json!("shipped"), None)
        .await
        .unwrap();
    let s = e.wait(&started.id).await.unwrap();
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!("shipped")));
}

#[tokio::test(start_paused = true)]
async fn a_failing_notify_function_fails_the_callback_task() {
    let (db, fake) = setup();
    fake.add("tell", None, |_, _| text(400, "no such order"));
    let e = engine_with(&fake, &db).await;
    let yaml = "output: A\ntasks:\n  A:\n    run: callback\n    inputs:\n      notify: tell\n";
    let s = run(&e, "told", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Failed, "{s:?}");
    assert!(s.error.unwrap().message.contains("no such order"));
}

/// A callback whose `notify` names a stored workflow fails at once saying
/// so, in either format (it said the function did not exist).
#[tokio::test(start_paused = true)]
async fn a_callback_notifying_a_workflow_fails_saying_so() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    e.create_workflow(
        "inner",
        "output: T\ntasks:\n  T:\n    run: echo\n    inputs: inner\n",
    )
    .unwrap();
    let yaml = "output: A\ntasks:\n  A:\n    run: callback\n    inputs:\n      notify: inner\n";
    let s = run(&e, "tells-a-workflow", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Failed, "{s:?}");
    let error = s.error.unwrap().message;
    assert!(error.contains("notify \"inner\" is a workflow"), "{error}");
    let doc = "startAt: call\nstates:\n  call: {type: Task, function: {name: inner}, waitForCallback: true, end: true}\n";
    let s = run(&e, "sm-tells-a-workflow", doc, json!({})).await;
    assert_eq!(s.status, RunStatus::Failed, "{s:?}");
    let error = s.error.unwrap().message;
    assert!(error.contains("\"inner\" is a workflow"), "{error}");
    assert!(error.starts_with("Fission.PermanentError"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn recovery_notifies_again_only_when_the_url_was_not_taken() {
    let (db, fake) = setup();
    // `slowtell` never answers before the crash: its URL was not taken.
    fake.add("slowtell", Some(Duration::from_secs(3600)), |_, _| {
        text(200, "")
    });
    fake.add("tell", None, |_, _| text(200, ""));
    let e = engine_with(&fake, &db).await;
    let yaml = "output: B\ntasks:\n  A:\n    run: callback\n    inputs:\n      notify: tell\n  B:\n    run: callback\n    inputs:\n      notify: slowtell\n";
    e.create_workflow("told", yaml).unwrap();
    let started = e
        .start_run("told", json!(null), Default::default())
        .await
        .unwrap();
    until_called(&fake, "slowtell", 1).await;
    until_called(&fake, "tell", 1).await;
    let token_a = callback_token_of(&e, &started.id, "A").await;
    until("A's URL to be taken", || {
        e.run_state(&started.id).unwrap().tasks["A"].callback_notified
    })
    .await;
    e.shutdown().await;
    drop(e);
    let e2 = engine_with(&fake, &db).await;
    until_called(&fake, "slowtell", 2).await;
    assert_eq!(fake.count("tell"), 1, "a taken URL is not handed out again");
    let keys = fake.keys("slowtell");
    assert_eq!(keys[0], keys[1], "same idempotency key");
    let token_b = header_of(&fake, "slowtell", 1, "x-fusion-callback-token");
    assert_eq!(
        token_b,
        header_of(&fake, "slowtell", 0, "x-fusion-callback-token")
    );
    e2.complete_callback(&token_a, json!("a"), None)
        .await
        .unwrap();
    e2.complete_callback(&token_b, json!("b"), None)
        .await
        .unwrap();
    let s = e2.wait(&started.id).await.unwrap();
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!("b")));
}

/// A function that takes `delay` and records the most calls of it in flight at once.
fn gauge(fake: &Arc<FakeInvoker>, name: &str, delay: Duration) -> Arc<Mutex<(usize, usize)>> {
    let seen = Arc::new(Mutex::new((0usize, 0usize))); // (finished, most in flight)
    let (f, s, n) = (fake.clone(), seen.clone(), name.to_string());
    fake.add(name, Some(delay), move |c, _| {
        let started = f.count(&n);
        let mut g = s.lock().unwrap();
        g.1 = g.1.max(started - g.0);
        g.0 += 1;
        text(200, &format!("<{}>", String::from_utf8_lossy(&c.body)))
    });
    seen
}

#[tokio::test(start_paused = true)]
async fn a_fallback_runs_after_the_retries_and_stands_for_the_failed_task() {
    let (db, fake) = setup();
    fake.add("down", None, |_, _| text(503, "down for maintenance"));
    let e = engine_with(&fake, &db).await;
    let yaml = "output: B\ntasks:\n  A:\n    run: down\n    retry: {maxAttempts: 2, backoff: {initial: 1s}}\n    onFailure: F\n  F:\n    run: echo\n  B:\n    run: echo\n    inputs: \"{ output('A') + ' / ' + task('A').Error }\"\n    requires: [A]\n";
    let s = run(&e, "w", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(fake.count("down"), 2, "its retries come first");
    let failure = json!({"task": "A", "message": "the function answered 503: down for maintenance", "status": 503});
    assert_eq!(
        s.output,
        Some(json!(format!(
            "{failure} / the function answered 503: down for maintenance"
        )))
    );
    let state = e.run_state(&s.id).unwrap();
    assert_eq!(state.tasks["A"].status, crate::state::TaskStatus::Failed);
    assert_eq!(state.tasks["F"].status, crate::state::TaskStatus::Succeeded);
    // Without the fallback, the same failure fails the run.
    let s = run(
        &e,
        "w2",
        &yaml.replace("    onFailure: F\n", ""),
        json!(null),
    )
    .await;
    assert_eq!(s.status, RunStatus::Failed, "{s:?}");
}

/// A retry keeps a failed task whose fallback stood in for it: it is not run
/// again (its side effects are not repeated), and what came after keeps the
/// fallback's output.
#[tokio::test(start_paused = true)]
async fn a_retry_does_not_run_again_a_task_its_fallback_stood_in_for() {
    let (db, fake) = setup();
    fake.add("charge", None, |_, _| text(500, "declined"));
    fake.add("later", None, |_, n| {
        if n == 1 {
            text(500, "not yet")
        } else {
            text(200, "done")
        }
    });
    let e = engine_with(&fake, &db).await;
    let yaml = "output: C\ntasks:\n  A:\n    run: charge\n    onFailure: F\n  F:\n    run: echo\n    inputs: refunded\n  C:\n    run: later\n    requires: [A]\n";
    let s = run(&e, "w", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Failed, "{s:?}");
    assert_eq!(fake.count("charge"), 1);
    let again = e.retry(&s.id).await.unwrap();
    let s = e.wait(&again.id).await.unwrap();
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(fake.count("charge"), 1, "the charge is not made again");
    assert_eq!(fake.count("later"), 2);
}

#[tokio::test(start_paused = true)]
async fn foreach_runs_a_workflow_per_item_at_most_concurrency_at_once() {
    let (db, fake) = setup();
    let seen = gauge(&fake, "slow", Duration::from_millis(100));
    let e = engine_with(&fake, &db).await;
    let yaml = "output: F\ntasks:\n  F:\n    run: foreach\n    concurrency: 2\n    inputs:\n      foreach: \"{ param() }\"\n      do:\n        output: B\n        tasks:\n          A:\n            run: slow\n            inputs: \"{ param() }\"\n          B:\n            run: echo\n            inputs: \"{ output('A') + param('_index') }\"\n            requires: [A]\n";
    let items: Vec<String> = (0..7).map(|i| format!("i{i}")).collect();
    let s = run(&e, "w", yaml, json!({ "default": items })).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    let want: Vec<String> = (0..7).map(|i| format!("<i{i}>{i}")).collect();
    assert_eq!(s.output, Some(json!(want)));
    let (finished, most) = *seen.lock().unwrap();
    assert_eq!((finished, most), (7, 2), "at most two items at once");

    // A failing item fails the foreach, which its fallback stands in for; no
    // further item starts.
    fake.add("picky", None, |c, _| match c.body.as_ref() {
        b"bad" => text(400, "bad item"),
        _ => text(200, "ok"),
    });
    let yaml = "output: F\ntasks:\n  F:\n    run: foreach\n    onFailure: Rescue\n    inputs:\n      foreach: [a, bad, c, d]\n      sequential: true\n      do:\n        output: A\n        tasks:\n          A:\n            run: picky\n            inputs: \"{ param() }\"\n  Rescue:\n    run: noop\n    inputs: \"{ 'rescued: ' + task('F').Error }\"\n";
    let s = run(&e, "w2", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    let out = s.output.clone().unwrap();
    assert!(
        out.as_str()
            .unwrap_or_default()
            .starts_with("rescued: task \"F/do_1/A\" failed"),
        "{out}"
    );
    assert_eq!(fake.count("picky"), 2, "c and d never ran");
}

#[tokio::test(start_paused = true)]
async fn a_workflow_and_an_inline_sub_workflow_bound_their_tasks_in_flight() {
    let (db, fake) = setup();
    let seen = gauge(&fake, "slow", Duration::from_millis(100));
    let e = engine_with(&fake, &db).await;
    let mut yaml = String::from("output: J\nconcurrency: 3\ntasks:\n");
    for i in 0..8 {
        yaml.push_str(&format!("  T{i}:\n    run: slow\n    inputs: {i}\n"));
    }
    yaml.push_str("  J:\n    run: noop\n    requires: [T0, T1, T2, T3, T4, T5, T6, T7]\n");
    let s = run(&e, "w", &yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(*seen.lock().unwrap(), (8, 3));

    // An `if` whose branch is a workflow of five parallel tasks, limited to 2.
    let seen2 = gauge(&fake, "slow2", Duration::from_millis(100));
    let mut yaml = String::from("output: I\ntasks:\n  I:\n    run: if\n    concurrency: 2\n    inputs:\n      if: true\n      then:\n        output: J\n        tasks:\n");
    for i in 0..5 {
        yaml.push_str(&format!("          T{i}: {{run: slow2, inputs: {i}}}\n"));
    }
    yaml.push_str(
        "          J: {run: noop, inputs: \"{ output('T4') }\", requires: [T0, T1, T2, T3, T4]}\n",
    );
    let s = run(&e, "w2", &yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(s.output, Some(json!("<4>")));
    assert_eq!(*seen2.lock().unwrap(), (5, 2));
}

#[tokio::test(start_paused = true)]
async fn a_fallback_in_flight_at_a_restart_runs_again_with_its_input_and_key() {
    let (db, fake) = setup();
    fake.add("down", None, |_, _| text(500, "broken"));
    fake.add("slow-rescue", Some(Duration::from_secs(10)), |c, _| {
        text(
            200,
            &format!("rescued {}", String::from_utf8_lossy(&c.body)),
        )
    });
    let e = engine_with(&fake, &db).await;
    let yaml =
        "output: A\ntasks:\n  A:\n    run: down\n    onFailure: F\n  F:\n    run: slow-rescue\n";
    e.create_workflow("rec", yaml).unwrap();
    let started = e
        .start_run("rec", json!(null), Default::default())
        .await
        .unwrap();
    until_called(&fake, "slow-rescue", 1).await;
    assert_eq!(fake.count("slow-rescue"), 1);
    e.shutdown().await;
    drop(e);
    let e2 = engine_with(&fake, &db).await;
    let s = e2.wait(&started.id).await.unwrap();
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    let failure =
        json!({"task": "A", "message": "the function answered 500: broken", "status": 500});
    assert_eq!(s.output, Some(json!(format!("rescued {failure}"))));
    assert_eq!(fake.count("down"), 1, "the failed task is not run again");
    let keys = fake.keys("slow-rescue");
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "same idempotency key");
}

#[tokio::test(start_paused = true)]
async fn a_workflow_run_by_name_keeps_its_own_concurrency() {
    let (db, fake) = setup();
    let seen = gauge(&fake, "slow", Duration::from_millis(100));
    let e = engine_with(&fake, &db).await;
    let mut inner = String::from("output: J\nconcurrency: 2\ntasks:\n");
    for i in 0..5 {
        inner.push_str(&format!("  T{i}:\n    run: slow\n    inputs: {i}\n"));
    }
    inner.push_str("  J:\n    run: noop\n    requires: [T0, T1, T2, T3, T4]\n");
    e.create_workflow("inner", &inner).unwrap();
    let s = run(
        &e,
        "outer",
        "output: C\ntasks:\n  C:\n    run: inner\n",
        json!(null),
    )
    .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(*seen.lock().unwrap(), (5, 2));
}

/// A run of `workflow` for a caller that waits for its end: its summary, and
/// how many flushes it took.
async fn waited_run(e: &Arc<Engine>, workflow: &str) -> (crate::store::RunSummary, u64) {
    let before = e.store().flush_count();
    let started = e
        .start_run_waited(workflow, json!(null), Default::default())
        .unwrap();
    let s = e.wait(&started.id).await.unwrap();
    (s, e.store().flush_count() - before)
}

#[tokio::test(start_paused = true)]
async fn a_short_synchronous_run_takes_one_flush_and_an_acknowledged_start_one_more() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    e.create_workflow(
        "one",
        "output: A\ntasks:\n  A:\n    run: echo\n    inputs: hi\n",
    )
    .unwrap();
    e.flush().await.unwrap();
    let flushes = || e.store().flush_count();

    // A caller that waits: start, call and end are written and flushed once.
    let (s, took) = waited_run(&e, "one").await;
    assert_eq!(s.output, Some(json!("hi")), "{s:?}");
    assert_eq!(took, 1);
    assert_eq!(e.run_events(&s.id).unwrap().len(), 4);

    // A start that is acknowledged (202) is durable before the call.
    let before = flushes();
    let started = e
        .start_run("one", json!(null), Default::default())
        .await
        .unwrap();
    assert_eq!(flushes() - before, 1, "flushed before start_run returns");
    let s = e.wait(&started.id).await.unwrap();
    assert_eq!(s.output, Some(json!("hi")), "{s:?}");
    assert_eq!(flushes() - before, 2);
}

#[tokio::test(start_paused = true)]
async fn a_short_run_whose_parallel_steps_end_apart_takes_one_flush() {
    let (db, fake) = setup();
    for (name, ms) in [("d1", 1), ("d2", 2), ("d3", 3)] {
        fake.add(name, Some(Duration::from_millis(ms)), move |_, _| {
            text(200, name)
        });
    }
    let e = engine_with(&fake, &db).await;
    e.create_workflow(
        "fan",
        "output: J\ntasks:\n  A:\n    run: d1\n  B:\n    run: d2\n  C:\n    run: d3\n  J:\n    run: noop\n    inputs: \"{ [output('A'), output('B'), output('C')] }\"\n    requires: [A, B, C]\n",
    )
    .unwrap();
    e.flush().await.unwrap();

    // The three outcomes come back one by one while no call follows them:
    // they are held and written with the run's end, in one flush.
    let (s, took) = waited_run(&e, "fan").await;
    assert_eq!(s.output, Some(json!(["d1", "d2", "d3"])), "{s:?}");
    assert_eq!(took, 1);
    let events = e.run_events(&s.id).unwrap();
    let succeeded = events
        .iter()
        .filter(|e| matches!(e, Event::TaskSucceeded { .. }))
        .count();
    assert_eq!(succeeded, 4, "{events:?}");
}

/// A function task's body goes with its type as Fission Workflows sends it:
/// text for a string, JSON otherwise, or the `content-type` input's.
#[tokio::test(start_paused = true)]
async fn a_task_body_carries_its_content_type() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let yaml = "output: C\ntasks:\n  A:\n    run: echo\n    inputs: plain\n  B:\n    run: echo\n    inputs: {body: {x: 1}}\n  C:\n    run: echo\n    inputs: {body: plain, content-type: application/x-custom, headers: {Content-Type: a/b}}\n    requires: [A, B]\n";
    let s = run(&e, "typed", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    let calls = fake.calls.lock().unwrap().clone();
    let content_type = |body: &str| {
        let call = calls
            .iter()
            .find(|c| c.body == body.as_bytes())
            .unwrap_or_else(|| panic!("no call with {body}"));
        let types: Vec<&str> = call
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.as_str())
            .collect();
        types.join(",")
    };
    assert_eq!(content_type("{\"x\":1}"), "application/json");
    let plain: Vec<String> = calls
        .iter()
        .filter(|c| c.body == "plain".as_bytes())
        .map(|c| {
            c.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    assert_eq!(plain.len(), 2, "{plain:?}");
    assert!(
        plain.contains(&"text/plain; charset=utf-8".to_string()),
        "{plain:?}"
    );
    assert!(
        plain.contains(&"application/x-custom".to_string()),
        "{plain:?}"
    );
}

/// A `while` past its limit says so once, not once per nested iteration, and
/// as the loop's failure (the run's error names the task `W`).
#[tokio::test(start_paused = true)]
async fn a_loop_past_its_limit_names_its_failure_once() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let yaml = "output: W\ntasks:\n  W:\n    run: while\n    inputs:\n      expr: true\n      limit: 3\n      do: {run: noop}\n";
    let s = run(&e, "spin", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Failed);
    let message = s.error.unwrap().message;
    assert!(
        message.contains("limit of 3 iterations exceeded"),
        "{message}"
    );
    // Said as the loop's own: no task the user never named (`condition`).
    assert_eq!(message, "while: limit of 3 iterations exceeded");
}

#[test]
fn header_names_are_capitalized_part_by_part() {
    use crate::driver::canonical_header;
    assert_eq!(canonical_header("content-type"), "Content-Type");
    assert_eq!(
        canonical_header("X-FISSION-function-name"),
        "X-Fission-Function-Name"
    );
    assert_eq!(canonical_header("etag"), "Etag");
    assert_eq!(canonical_header("a--b-"), "A--B-");
    assert_eq!(canonical_header(""), "");
}

#[test]
fn a_typed_error_is_kept_whole_and_other_answers_are_cut() {
    let failed = |body: String| {
        let resp = FunctionResponse {
            status: 500,
            headers: Default::default(),
            body: Bytes::from(body),
        };
        match crate::driver::outcome_events("t", 1, Ok(resp), 0, true).as_slice() {
            [Event::TaskFailed { error, .. }] => error.clone(),
            other => panic!("{other:?}"),
        }
    };
    let typed = json!({"errorType": "Card.Declined", "cause": "x".repeat(3000)}).to_string();
    assert!(failed(typed.clone()).ends_with(&typed));
    let plain = "y".repeat(3000);
    let error = failed(plain);
    assert!(error.len() < 1100, "{}", error.len());
    // The cut is said: no one reads it as the function's whole answer.
    assert!(error.ends_with("y… (cut: 3000 bytes in all)"), "{error}");
    let short = failed("z".repeat(10));
    assert_eq!(
        short,
        format!("the function answered 500: {}", "z".repeat(10))
    );
}

/// A run whose events cannot be made durable (the disk filled while it ran)
/// is never answered as ended: its caller gets the store's error, not what
/// only memory holds; once the store makes writes durable again, a caller
/// asking again (an idempotency key's replay) gets how the run ended.
#[tokio::test(start_paused = true)]
async fn a_run_that_could_not_be_stored_is_not_answered_as_ended() {
    let (db, fake) = setup();
    fake.add("slow", Some(Duration::from_secs(1)), |_, _| {
        text(200, "done")
    });
    let e = engine_with(&fake, &db).await;
    e.create_workflow("w", "output: A\ntasks:\n  A:\n    run: slow\n")
        .unwrap();
    // As a synchronous invocation starts it: nothing flushed before it runs.
    let started = e
        .start_run_waited("w", json!({}), Default::default())
        .unwrap();
    until_called(&fake, "slow", 1).await;
    e.store().break_journal_for_test();
    match e.wait(&started.id).await {
        Err(crate::driver::EngineError::Store(err)) => {
            assert!(err.to_string().contains("could not be stored"), "{err}");
        }
        other => panic!("answered as {other:?}"),
    }
    e.store().mend_journal_for_test();
    let _ = e.store().settle().await;
    until("the store durable again", || e.store().trouble().is_none()).await;
    let s = e.wait(&started.id).await.unwrap();
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(fake.count("slow"), 1);
}

/// While the store cannot make writes durable (a full disk), no run starts,
/// waited for or not: none makes a call its caller is then told failed.
#[tokio::test(start_paused = true)]
async fn no_run_starts_while_the_store_cannot_make_it_durable() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    e.create_workflow(
        "w",
        "output: A\ntasks:\n  A:\n    run: echo\n    inputs: hi\n",
    )
    .unwrap();
    e.store().break_journal_for_test();
    let refused = e.start_run_waited("w", json!({}), Default::default());
    match refused {
        Err(crate::driver::EngineError::Store(err)) => {
            assert!(
                err.to_string().contains("no run starts until it can"),
                "{err}"
            );
        }
        other => panic!("started: {:?}", other.map(|s| s.id)),
    }
    let refused = e
        .start_run_keyed("w", json!({}), "k", true, Default::default())
        .await;
    assert!(
        matches!(refused, Err(crate::driver::EngineError::Store(_))),
        "{refused:?}"
    );
    assert_eq!(fake.count("echo"), 0);
    assert!(e.list_runs(&Default::default()).unwrap().runs.is_empty());
}

/// An asynchronous start that cannot be made durable (a full disk) is refused
/// with the store's error and taken back: it is not listed and does not run,
/// then or after a restart once the disk has room again, so a caller that
/// starts it again (with the same idempotency key or not) gets one run.
#[tokio::test(start_paused = true)]
async fn an_async_start_that_could_not_be_stored_never_runs() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    e.create_workflow(
        "w",
        "output: A\ntasks:\n  A:\n    run: echo\n    inputs: hi\n",
    )
    .unwrap();
    e.store().break_journal_for_test();
    assert!(e.store().trouble().is_some());
    let refused = e.start_run("w", json!({}), Default::default()).await;
    assert!(
        matches!(refused, Err(crate::driver::EngineError::Store(_))),
        "{:?}",
        refused.map(|s| s.id)
    );
    let refused = e
        .start_run_keyed("w", json!({}), "k", false, Default::default())
        .await;
    assert!(
        matches!(refused, Err(crate::driver::EngineError::Store(_))),
        "{refused:?}"
    );
    assert!(e.list_runs(&Default::default()).unwrap().runs.is_empty());
    e.store().mend_journal_for_test();
    e.shutdown().await;
    drop(e);
    let e = engine_with(&fake, &db).await;
    assert!(e.store().trouble().is_none());
    assert!(e.list_runs(&Default::default()).unwrap().runs.is_empty());
    let (id, new) = e
        .start_run_keyed("w", json!({}), "k", false, Default::default())
        .await
        .unwrap();
    assert!(new, "the key names no run");
    let s = e.wait(&id).await.unwrap();
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    assert_eq!(fake.count("echo"), 1);
}

/// The tasks of a run as `GET /v1/runs/{id}` shows them, by id.
fn shown_tasks(e: &Arc<Engine>, id: &str) -> HashMap<String, Value> {
    let run = crate::api::run_json(&e.run_state(id).unwrap());
    run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap().to_string(), t.clone()))
        .collect()
}

/// A task that fails inside another (an `if`'s branch, a `switch` case, a
/// loop's iteration, an item's workflow) is named in the errors that say
/// so by its full id, as the run's task list shows it: the user finds it
/// there. A bare `then` or `action` names no task of the run.
#[tokio::test(start_paused = true)]
async fn a_nested_failure_names_the_task_by_its_full_id() {
    let (db, fake) = setup();
    fake.add("picky", None, |c, _| match c.body.as_ref() {
        b"bad" => text(400, "bad item"),
        _ => text(200, "ok"),
    });
    let e = engine_with(&fake, &db).await;
    let cases = [
        (
            "checks",
            "output: Check\ntasks:\n  Check:\n    run: if\n    inputs:\n      if: true\n      then:\n        run: fail\n        inputs: missing user\n",
            "Check",
            "Check/then",
            "missing user",
        ),
        (
            "switches",
            "output: S\ntasks:\n  S:\n    run: switch\n    inputs:\n      switch: a\n      cases:\n      - case: a\n        action: {run: fail, inputs: no a}\n",
            "S",
            "S/action",
            "no a",
        ),
        (
            "loops",
            "output: W\ntasks:\n  W:\n    run: while\n    inputs:\n      expr: true\n      limit: 3\n      do: {run: fail, inputs: stuck}\n",
            "W",
            "W/1/action",
            "stuck",
        ),
        (
            "items",
            "output: F\ntasks:\n  F:\n    run: foreach\n    inputs:\n      foreach: [a, bad]\n      sequential: true\n      do:\n        output: A\n        tasks:\n          A:\n            run: picky\n            inputs: \"{ param() }\"\n",
            "F",
            "F/do_1/A",
            "the function answered 400: bad item",
        ),
    ];
    for (name, yaml, top, inner, cause) in cases {
        let s = run(&e, name, yaml, json!(null)).await;
        assert_eq!(s.status, RunStatus::Failed, "{name}: {s:?}");
        let err = s.error.clone().unwrap();
        assert_eq!(err.task.as_deref(), Some(top), "{name}");
        assert_eq!(
            err.message,
            format!("task {inner:?} failed: {cause}"),
            "{name}"
        );
        let tasks = shown_tasks(&e, &s.id);
        assert_eq!(
            tasks[inner]["status"], "failed",
            "{name}: {inner} is listed"
        );
        assert_eq!(tasks[top]["error"], json!(err.message), "{name}");
    }
    // A fallback inside a sub-workflow is told the full id of the task it
    // stands in for.
    let yaml = "output: F\ntasks:\n  F:\n    run: foreach\n    inputs:\n      foreach: [bad]\n      do:\n        output: A\n        tasks:\n          A:\n            run: picky\n            inputs: \"{ param() }\"\n            onFailure: R\n          R:\n            run: noop\n";
    let s = run(&e, "rescued", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    let output = s.output.unwrap();
    assert_eq!(output[0]["task"], "F/do_0/A", "{output}");
}

/// An item of a `foreach` (or an iteration of a `while`) whose `do` is a
/// workflow shows that it ran a workflow, not the `noop` the engine passes
/// the workflow through.
#[tokio::test(start_paused = true)]
async fn an_item_that_ran_a_workflow_shows_so() {
    let (db, fake) = setup();
    let e = engine_with(&fake, &db).await;
    let yaml = "output: F\ntasks:\n  F:\n    run: foreach\n    inputs:\n      foreach: [a, b]\n      do:\n        output: A\n        tasks:\n          A:\n            run: echo\n            inputs: \"{ param() }\"\n  W:\n    run: while\n    inputs:\n      expr: \"{ !task().Inputs._prev }\"\n      limit: 3\n      delay: 10ms\n      do:\n        output: B\n        tasks:\n          B: {run: echo, inputs: again}\n  N:\n    run: noop\n    inputs:\n      output: C\n      tasks:\n        C: {run: echo, inputs: c}\n";
    let s = run(&e, "items", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    let tasks = shown_tasks(&e, &s.id);
    for item in ["F/do_0", "F/do_1", "W/1/action"] {
        assert_eq!(tasks[item]["run"], "workflow", "{item}: {}", tasks[item]);
    }
    assert_eq!(tasks["F/do_0/A"]["run"], "echo");
    // What the workflow itself says stays as written.
    assert_eq!(tasks["F"]["run"], "foreach");
    assert_eq!(tasks["N"]["run"], "noop");
    assert_eq!(tasks["F/collector"]["run"], "compose");
}

/// A retry's history marks each task whose outcome it kept from the run it
/// retries (not run again), inside a `foreach` too, naming the run where
/// that outcome was made.
#[tokio::test(start_paused = true)]
async fn a_retry_marks_the_tasks_it_kept() {
    let (db, fake) = setup();
    let fail = Arc::new(Mutex::new(true));
    let f = fail.clone();
    fake.add("gate", None, move |c, _| {
        if *f.lock().unwrap() && c.body.as_ref() == b"y" {
            text(500, "down")
        } else {
            text(200, "up")
        }
    });
    let e = engine_with(&fake, &db).await;
    let yaml = "output: B\ntasks:\n  A:\n    run: echo\n    inputs: a\n  F:\n    run: foreach\n    inputs:\n      foreach: [x, y]\n      do: {run: gate, inputs: \"{ task().Inputs._item }\"}\n  B:\n    run: echo\n    inputs: b\n    requires: [A, F]\n";
    let first = run(&e, "kept", yaml, json!(null)).await;
    assert_eq!(first.status, RunStatus::Failed);
    let again = e.retry(&first.id).await.unwrap();
    let second = e.wait(&again.id).await.unwrap();
    assert_eq!(second.status, RunStatus::Failed);
    let tasks = shown_tasks(&e, &second.id);
    for kept in ["A", "F/do_0"] {
        assert_eq!(tasks[kept]["status"], "succeeded", "{kept}");
        assert_eq!(tasks[kept]["kept_from"], json!(first.id), "{kept}");
    }
    for ran in ["F", "F/do_1"] {
        assert_eq!(tasks[ran]["kept_from"], Value::Null, "{ran} ran again");
    }
    // A retry of the retry: what it keeps was made in the first run.
    *fail.lock().unwrap() = false;
    let third = e.retry(&second.id).await.unwrap();
    let third = e.wait(&third.id).await.unwrap();
    assert_eq!(third.status, RunStatus::Succeeded, "{third:?}");
    let tasks = shown_tasks(&e, &third.id);
    assert_eq!(tasks["A"]["kept_from"], json!(first.id));
    assert_eq!(tasks["F/do_0"]["kept_from"], json!(first.id));
    for ran in ["F", "F/do_1", "B"] {
        assert_eq!(tasks[ran]["kept_from"], Value::Null, "{ran} ran");
    }
    assert_eq!(fake.count("gate"), 4, "x once, y in each run");
}

/// A task's calls carry one idempotency key, the same on every attempt of
/// the task: one logical call, which its function can deduplicate. Which
/// attempt it is, is said apart (`X-Fusion-Attempt`).
#[tokio::test(start_paused = true)]
async fn every_attempt_of_a_task_carries_the_same_key() {
    let (db, fake) = setup();
    fake.add("flaky", None, |_, n| {
        if n < 3 {
            text(503, "busy")
        } else {
            text(200, "ok")
        }
    });
    let e = engine_with(&fake, &db).await;
    let yaml = "output: G\ntasks:\n  F:\n    run: flaky\n    retry: {maxAttempts: 3, backoff: {initial: 1s}}\n  G:\n    run: echo\n    inputs: \"{ output('F') }\"\n    requires: [F]\n";
    let s = run(&e, "w", yaml, json!(null)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    let key = format!("{}/F", s.id);
    assert_eq!(fake.keys("flaky"), vec![key.clone(), key.clone(), key]);
    let attempts: Vec<String> = (0..3)
        .map(|n| header_of(&fake, "flaky", n, "X-Fusion-Attempt"))
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert_eq!(fake.keys("echo"), vec![format!("{}/G", s.id)]);
}

/// A large run input is in `GET /v1/runs/{id}` once: not again as the
/// request's `body` beside its `default`, nor in each task that takes it,
/// which refers to it instead.
#[tokio::test(start_paused = true)]
async fn a_large_input_is_answered_once() {
    let (db, fake) = setup();
    fake.add("size", None, |c, _| text(200, &c.body.len().to_string()));
    let e = engine_with(&fake, &db).await;
    let yaml = "output: C\ntasks:\n  A:\n    run: size\n    inputs: \"{ param() }\"\n  B:\n    run: size\n    inputs:\n      body: \"{ param() }\"\n      headers: {X-Kind: big}\n  C:\n    run: noop\n    inputs: \"{ output('A') + '/' + output('B') }\"\n    requires: [A, B]\n";
    e.create_workflow("big", yaml).unwrap();
    let body: Vec<String> = (0..1000).map(|i| format!("{i:0>1000}")).collect();
    let body = json!(body);
    let input =
        json!({"body": body, "default": body, "headers": {}, "query": {}, "method": "POST"});
    let started = e.start_run("big", input, Default::default()).await.unwrap();
    let s = e.wait(&started.id).await.unwrap();
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    let size = body.to_string().len();
    assert_eq!(
        s.output,
        Some(json!(format!("{size}/{size}"))),
        "each call got it whole"
    );
    let shown = crate::api::run_json(&e.run_state(&s.id).unwrap());
    let answered = shown.to_string().len();
    assert!(
        answered < size + size / 10,
        "{answered} bytes answered for an input of {size}"
    );
    assert_eq!(shown["input"]["default"], body);
    assert_eq!(shown["input"]["method"], "POST");
    let tasks = shown_tasks(&e, &s.id);
    assert_eq!(
        tasks["A"]["inputs_from"],
        json!({"default": "/input/default"})
    );
    assert_eq!(tasks["A"]["inputs"], json!({}));
    assert_eq!(tasks["B"]["inputs_from"], json!({"body": "/input/default"}));
    assert_eq!(tasks["B"]["inputs"], json!({"headers": {"X-Kind": "big"}}));
    // Listed, its size is its own, not twice it (`body` and `default`).
    let listed = crate::api::summary_json(&e.run_summary(&s.id).unwrap());
    let bytes = listed["input"]["bytes"].as_u64().unwrap() as usize;
    assert!(bytes > size && bytes < size + 1000, "{bytes} for {size}");
    // So are its events: the start holds it, each dispatch refers to it.
    let events = crate::api::events_json(&s.id, &e.run_events(&s.id).unwrap());
    let answered = events.to_string().len();
    assert!(
        answered < size + size / 10,
        "{answered} bytes of events for an input of {size}"
    );
    assert_eq!(events.pointer("/events/0/input/default"), Some(&body));
    let dispatched: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|ev| ev["type"] == "TaskDispatched" && ev["task"] == "B")
        .collect();
    assert_eq!(
        dispatched[0]["inputs_from"],
        json!({"body": "/events/0/input/default"})
    );
    assert_eq!(
        dispatched[0]["inputs"],
        json!({"headers": {"X-Kind": "big"}})
    );
    // A loop over it refers to it too (its items are their own values).
    let yaml = "output: E\ntasks:\n  E:\n    run: foreach\n    inputs:\n      foreach: \"{ param() }\"\n      do: {run: noop}\n";
    let s = run(&e, "loop", yaml, json!({"default": body})).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{s:?}");
    let tasks = shown_tasks(&e, &s.id);
    assert_eq!(
        tasks["E"]["inputs_from"],
        json!({"foreach": "/input/default"})
    );
    // A small input is shown as it is.
    let small =
        json!({"body": "hi", "default": "hi", "headers": {}, "query": {}, "method": "POST"});
    let started = e.start_run("big", small, Default::default()).await.unwrap();
    let s = e.wait(&started.id).await.unwrap();
    let tasks = shown_tasks(&e, &s.id);
    assert_eq!(tasks["A"]["inputs"], json!({"default": "hi"}));
    assert_eq!(tasks["A"]["inputs_from"], Value::Null);
}
