//! Property tests of RFC-0022 runs under crashes. Random valid state machines
//! (Task chains with Choice, Parallel, Map, Wait, Succeed and Fail; retries,
//! catch routes and paths on some) run against a deterministic fake world and
//! a simulated clock, the way the driver runs them: `decide`, record events,
//! persist a batch, perform the calls, wait for the next answer or timer.
//! Cutting the stored history at a crash point, folding it into a fresh state
//! and recovering as the driver does on restart (calls in flight dispatched
//! again with their idempotency key, timers re-armed by `decide`) must end the
//! run as the uninterrupted run ended, without running again what had finished.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::run::{engine_spec, FUNCTION_ERROR, PERMANENT_ERROR, TIMEOUT};
use crate::builtins;
use crate::spec::{TaskSpec, FISSION_SCHEME};
use crate::state::{apply, decide, finish_event, Action, Event, Millis, RunState, TaskStatus};

/// What the fake world answers one call of a function.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reply {
    /// 200 with `{"v": value, "h": a hash of the request body}`.
    Ok(u8),
    /// That status, with an empty body.
    Status(u16),
    /// The executor gave up waiting.
    Timeout,
    /// 500 with a typed error body (`Custom.Err`), as RFC-0022 functions raise.
    Typed,
}

/// A Task state: its options and how its function answers, attempt by attempt.
#[derive(Debug, Clone)]
struct TaskPlan {
    /// maxAttempts, backoffBase in ms, jitter.
    retry: Option<(u8, u16, bool)>,
    /// Which error type, how far forward it jumps, whether it merges at `$.err`.
    catch: Option<(u8, u8, bool)>,
    /// 0: none, 1: `$`, 2: `$.x`.
    input_path: u8,
    /// 0: replace, 1: discard (null), 2-4: `$.r`, 5-7: `$.r<step>`.
    result_path: u8,
    output_path: bool,
    /// The answers to attempts 1, 2, ... (round and round), with their latency in ms.
    replies: Vec<(Reply, u16)>,
}

#[derive(Debug, Clone)]
enum Step {
    Task(TaskPlan),
    /// Which variable, which comparison, its operand, the jump of the rule,
    /// the jump of `default` (none: no default).
    Choice {
        var: u8,
        op: u8,
        operand: u8,
        jump: u8,
        default: Option<u8>,
    },
    Wait {
        ms: u16,
    },
    /// Its branches; 0: replace, 1: `$.par`, 2: discard.
    Parallel {
        branches: Vec<Vec<Step>>,
        result: u8,
    },
    Map {
        iterator: Vec<Step>,
        max_concurrency: u8,
        result: u8,
    },
    Succeed,
    Fail,
}

const CATCH_TYPES: [&str; 5] = [
    PERMANENT_ERROR,
    FUNCTION_ERROR,
    TIMEOUT,
    super::run::ALL,
    "Custom.Err",
];
const CHOICE_VARIABLES: [&str; 4] = ["$.r.v", "$.x", "$.r.h", "$.v"];

fn reply() -> impl Strategy<Value = (Reply, u16)> {
    (
        prop_oneof![
            24 => (0u8..10).prop_map(Reply::Ok),
            2 => proptest::sample::select(vec![400u16, 422, 429, 500, 503]).prop_map(Reply::Status),
            1 => Just(Reply::Timeout),
            1 => Just(Reply::Typed),
        ],
        1u16..800,
    )
}

fn task() -> impl Strategy<Value = Step> {
    (
        proptest::option::weighted(0.5, (1u8..=4, 10u16..500, any::<bool>())),
        proptest::option::weighted(0.4, (0u8..5, 1u8..4, any::<bool>())),
        0u8..3,
        0u8..8,
        proptest::bool::weighted(0.2),
        proptest::collection::vec(reply(), 1..4),
    )
        .prop_map(
            |(retry, catch, input_path, result_path, output_path, replies)| {
                Step::Task(TaskPlan {
                    retry,
                    catch,
                    input_path,
                    result_path,
                    output_path,
                    replies,
                })
            },
        )
}

/// A state that does no fan-out; `ends` says whether Succeed and Fail may be
/// drawn (they cut a chain short, so the top level keeps them for its jumps).
fn leaf(ends: u32) -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => task(),
        3 => (0u8..4, 0u8..4, 0u8..10, 1u8..4, proptest::option::weighted(0.85, 1u8..4)).prop_map(
            |(var, op, operand, jump, default)| Step::Choice { var, op, operand, jump, default }
        ),
        3 => (100u16..3000).prop_map(|ms| Step::Wait { ms }),
        ends => Just(Step::Succeed),
        ends => Just(Step::Fail),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let chain = || proptest::collection::vec(leaf(1), 1..4);
    prop_oneof![
        10 => leaf(0),
        3 => (proptest::collection::vec(chain(), 2..4), 0u8..3)
            .prop_map(|(branches, result)| Step::Parallel { branches, result }),
        3 => (chain(), 1u8..=3, 0u8..3).prop_map(|(iterator, max_concurrency, result)| Step::Map {
            iterator,
            max_concurrency,
            result,
        }),
    ]
}

/// A generated case: the machine, its run timeout, the run's input document.
#[derive(Debug, Clone)]
struct Case {
    steps: Vec<Step>,
    timeout_ms: Option<u16>,
    x: u8,
    items: Vec<u8>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(step(), 1..9),
        proptest::option::weighted(0.3, 2000u16..10000),
        0u8..10,
        proptest::collection::vec(0u8..10, 0..5),
    )
        .prop_map(|(steps, timeout_ms, x, items)| Case {
            steps,
            timeout_ms,
            x,
            items,
        })
}

/// Turns steps into a document; collects each function's replies.
#[derive(Default)]
struct Builder {
    functions: BTreeMap<String, Vec<(Reply, u16)>>,
}

impl Builder {
    /// One state machine (the top level or a branch): states `s0`, `s1`, ...
    /// in order, plus `ok` (Succeed) and `no` (Fail) for the jumps past the
    /// end; every jump goes forward, so every run ends. States nothing leads
    /// to are left out (validation refuses them).
    fn machine(&mut self, steps: &[Step]) -> Value {
        let n = steps.len();
        let name = |i: usize| format!("s{i}");
        let target = |i: usize, jump: u8| {
            let t = i + usize::from(jump);
            match t.checked_sub(n) {
                None => name(t),
                Some(past) if past % 3 != 2 => "ok".to_string(),
                Some(_) => "no".to_string(),
            }
        };
        let mut states = Map::new();
        for (i, st) in steps.iter().enumerate() {
            let mut s = match st {
                Step::Task(t) => self.task(i, t, &target),
                Step::Choice {
                    var,
                    op,
                    operand,
                    jump,
                    default,
                } => {
                    let mut rule = json!({
                        "variable": CHOICE_VARIABLES[usize::from(*var) % CHOICE_VARIABLES.len()],
                        "next": target(i, *jump),
                    });
                    let (key, value) = match op % 4 {
                        0 => ("numericGreaterThan", json!(operand)),
                        1 => ("numericLessThan", json!(operand)),
                        2 => ("numericEquals", json!(operand)),
                        _ => ("isPresent", json!(operand % 2 == 0)),
                    };
                    rule[key] = value;
                    let mut s = json!({"type": "Choice", "choices": [rule]});
                    if let Some(d) = default {
                        s["default"] = json!(target(i, *d));
                    }
                    s
                }
                Step::Wait { ms } => json!({"type": "Wait", "duration": format!("{ms}ms")}),
                Step::Parallel { branches, result } => {
                    let branches: Vec<Value> = branches.iter().map(|b| self.machine(b)).collect();
                    let mut s = json!({"type": "Parallel", "branches": branches});
                    fan_result(&mut s, *result);
                    s
                }
                Step::Map {
                    iterator,
                    max_concurrency,
                    result,
                } => {
                    let mut s = json!({
                        "type": "Map",
                        "itemsPath": "$.items",
                        "maxConcurrency": max_concurrency,
                        "branches": [self.machine(iterator)],
                    });
                    fan_result(&mut s, *result);
                    s
                }
                Step::Succeed => json!({"type": "Succeed"}),
                Step::Fail => json!({"type": "Fail"}),
            };
            if matches!(
                st,
                Step::Task(_) | Step::Wait { .. } | Step::Parallel { .. } | Step::Map { .. }
            ) {
                if i + 1 < n {
                    s["next"] = json!(name(i + 1));
                } else {
                    s["end"] = json!(true);
                }
            }
            states.insert(name(i), s);
        }
        states.insert("ok".into(), json!({"type": "Succeed"}));
        states.insert("no".into(), json!({"type": "Fail"}));
        prune(&mut states, "s0");
        json!({"startAt": "s0", "states": states})
    }

    fn task(&mut self, i: usize, t: &TaskPlan, target: &dyn Fn(usize, u8) -> String) -> Value {
        let function = format!("f{}", self.functions.len());
        self.functions.insert(function.clone(), t.replies.clone());
        let mut s = json!({"type": "Task", "function": {"name": function}});
        if let Some((attempts, base, jitter)) = t.retry {
            s["retry"] = json!({
                "maxAttempts": attempts,
                "backoffBase": format!("{base}ms"),
                "backoffCap": format!("{}ms", u32::from(base) * 4),
                "jitter": jitter,
            });
        }
        if let Some((kind, jump, merge)) = t.catch {
            let mut route = json!({
                "errorType": CATCH_TYPES[usize::from(kind) % CATCH_TYPES.len()],
                "next": target(i, jump),
            });
            if merge {
                route["resultPath"] = json!("$.err");
            }
            s["catch"] = json!([route]);
        }
        match t.input_path {
            1 => s["inputPath"] = json!("$"),
            2 => s["inputPath"] = json!("$.x"),
            _ => {}
        }
        match t.result_path {
            1 => s["resultPath"] = Value::Null,
            2..=4 => s["resultPath"] = json!("$.r"),
            5.. => s["resultPath"] = json!(format!("$.r{i}")),
            _ => {}
        }
        if t.output_path {
            s["outputPath"] = json!("$");
        }
        s
    }
}

fn fan_result(s: &mut Value, result: u8) {
    match result {
        1 => s["resultPath"] = json!("$.par"),
        2 => s["resultPath"] = Value::Null,
        _ => {}
    }
}

/// Removes the states `start` does not lead to.
fn prune(states: &mut Map<String, Value>, start: &str) {
    let mut reached = BTreeSet::from([start.to_string()]);
    let mut queue = vec![start.to_string()];
    while let Some(name) = queue.pop() {
        let s = &states[&name];
        let mut targets: Vec<&Value> = vec![&s["next"], &s["default"]];
        for list in ["choices", "catch"] {
            if let Some(routes) = s[list].as_array() {
                targets.extend(routes.iter().map(|r| &r["next"]));
            }
        }
        for t in targets.into_iter().filter_map(Value::as_str) {
            if reached.insert(t.to_string()) {
                queue.push(t.to_string());
            }
        }
    }
    states.retain(|name, _| reached.contains(name));
}

/// The fake world: each function answers per its plan, deterministically in
/// the call (its step, attempt and body), so a call made again after a crash
/// gets the answer the first one got.
struct World {
    functions: BTreeMap<String, Vec<(Reply, u16)>>,
}

/// FNV-1a: a stable hash of a request body, so outputs depend on inputs.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl World {
    /// The answer to attempt `attempt` of step `task` and its latency. A Map or
    /// Parallel branch shifts the plan by its index, so items differ.
    fn answer(&self, function: &str, task: &str, attempt: u32) -> (Reply, u64) {
        let Some(replies) = self.functions.get(function) else {
            return (Reply::Status(404), 1);
        };
        let branch: usize = task
            .split('/')
            .filter_map(|seg| seg.parse::<usize>().ok())
            .sum();
        let i = (attempt.saturating_sub(1) as usize + branch) % replies.len();
        let (reply, latency) = replies[i];
        (reply, u64::from(latency))
    }

    /// The event the driver records for an answer (as `outcome_events` does).
    fn event(reply: Reply, task: &str, attempt: u32, body: &Value, at: Millis) -> Event {
        let failed = |error: String, status: Option<u16>, retryable: bool| Event::TaskFailed {
            task: task.into(),
            attempt,
            error,
            status,
            retryable,
            at,
        };
        match reply {
            Reply::Ok(v) => Event::TaskSucceeded {
                task: task.into(),
                attempt,
                output: json!({"v": v, "h": fnv(&body.to_string()) % 1000}),
                headers: Default::default(),
                at,
            },
            Reply::Status(s) => failed(
                format!("the function answered {s}"),
                Some(s),
                executor::status_is_retryable(s),
            ),
            Reply::Timeout => {
                let e = executor::CallError::after(Duration::from_secs(1));
                failed(e.to_string(), None, e.is_retryable())
            }
            Reply::Typed => failed(
                r#"the function answered 500: {"errorType": "Custom.Err", "cause": "no"}"#.into(),
                Some(500),
                true,
            ),
        }
    }
}

/// A call the world is working on for this process.
struct Call {
    task: String,
    attempt: u32,
    reply: Reply,
    body: Value,
}

/// One process running the run: what the driver's run actor keeps in memory.
struct Sim<'w> {
    world: &'w World,
    /// Every stored event (appended in batches).
    events: Vec<Event>,
    /// How many events were stored after each batch.
    batches: Vec<usize>,
    state: RunState,
    now: Millis,
    /// Calls in flight, by when the answer arrives and their key.
    calls: BTreeMap<(Millis, String), Call>,
    /// Every time a timer was armed for (the driver never arms one twice).
    armed: BTreeSet<Millis>,
    /// Armed timers that have not fired.
    timers: BTreeSet<Millis>,
    /// The world's memory: when each idempotency key was first called.
    first_call: BTreeMap<String, Millis>,
    /// The function calls this process made: (step, attempt, key).
    made: Vec<(String, u32, String)>,
}

/// Most rounds (answers or timers waited for) a run may take.
const MAX_ROUNDS: usize = 2_000;

impl<'w> Sim<'w> {
    fn start(world: &'w World, source: &str, input: Value) -> Result<Sim<'w>, String> {
        let spec = engine_spec(source).map_err(|e| format!("invalid machine: {e:?}"))?;
        let started = Event::RunStarted {
            run_id: "r".into(),
            workflow: "w".into(),
            version: 1,
            spec,
            input,
            at: 0,
            retry_of: None,
            preserved: BTreeMap::new(),
            keys: None,
            rules: 0,
        };
        Ok(Sim::resume(world, vec![started]))
    }

    /// A fresh process over stored events (no calls, no timers yet), started
    /// at the time of the last one: the world's answers keep their times, so
    /// a restart costs no time and the run meets the same races as before.
    fn resume(world: &'w World, events: Vec<Event>) -> Sim<'w> {
        let mut first_call = BTreeMap::new();
        for e in &events {
            if let Event::TaskDispatched {
                key,
                at,
                wake_at: None,
                ..
            } = e
            {
                first_call.entry(key.clone()).or_insert(*at);
            }
        }
        Sim {
            world,
            state: RunState::fold(&events),
            now: events.last().map(Event::at).unwrap_or(0),
            batches: vec![events.len()],
            events,
            calls: BTreeMap::new(),
            armed: BTreeSet::new(),
            timers: BTreeSet::new(),
            first_call,
            made: Vec::new(),
        }
    }

    /// Restarts `downtime` after a crash that kept `stored` (read back as the
    /// store reads them): calls in flight are dispatched again with the same
    /// key, as `Actor::run` does when recovering.
    fn recover(world: &'w World, stored: &[Event], downtime: Millis) -> Result<Sim<'w>, String> {
        let json = serde_json::to_string(stored).map_err(|e| e.to_string())?;
        let events: Vec<Event> = serde_json::from_str(&json).map_err(|e| e.to_string())?;
        let mut sim = Sim::resume(world, events);
        sim.now += downtime;
        if sim.state.is_finished() {
            return Ok(sim);
        }
        let again: Vec<(String, u32, String, TaskSpec, Value)> = sim
            .state
            .in_flight()
            .iter()
            .filter_map(|t| {
                Some((
                    t.id.clone(),
                    t.attempts,
                    t.key.clone()?,
                    t.spec.clone(),
                    t.inputs.clone().unwrap_or(Value::Null),
                ))
            })
            .collect();
        for (task, attempt, key, spec, inputs) in again {
            sim.call(&task, attempt, &key, &spec, &inputs)?;
        }
        Ok(sim)
    }

    fn record(&mut self, e: Event) {
        apply(&mut self.state, &e);
        self.events.push(e);
    }

    /// Hands a call to the world; the answer arrives after its latency,
    /// counted from the key's first call.
    fn call(
        &mut self,
        task: &str,
        attempt: u32,
        key: &str,
        spec: &TaskSpec,
        inputs: &Value,
    ) -> Result<(), String> {
        let prefix = format!("{FISSION_SCHEME}default/");
        let function = spec
            .run
            .strip_prefix(&prefix)
            .ok_or_else(|| format!("step {task} calls {:?}, not a function", spec.run))?;
        let body = inputs.get("body").cloned().unwrap_or(Value::Null);
        let (reply, latency) = self.world.answer(function, task, attempt);
        let first = *self.first_call.entry(key.to_string()).or_insert(self.now);
        let ready = self.now.max(first + latency);
        if self.calls.keys().any(|(_, k)| k == key) {
            return Err(format!("{key} called twice at once"));
        }
        self.calls.insert(
            (ready, key.to_string()),
            Call {
                task: task.into(),
                attempt,
                reply,
                body,
            },
        );
        self.made.push((task.into(), attempt, key.into()));
        Ok(())
    }

    /// Records a dispatch as `Actor::dispatch` does for a state machine step:
    /// a function is called; `sleep` (Wait, and the start of a Parallel or
    /// Map) records its wake-up time.
    fn dispatch(
        &mut self,
        task: &str,
        attempt: u32,
        key: &str,
        spec: &TaskSpec,
    ) -> Result<(), String> {
        let raw = spec.named_inputs();
        let inputs = Value::Object(raw.clone().into_iter().collect());
        let dispatched =
            |inputs: Value, wake_at: Option<Millis>, at: Millis| Event::TaskDispatched {
                task: task.into(),
                attempt,
                key: key.into(),
                inputs,
                at,
                wake_at,
            };
        let target = spec.target().into_owned();
        if spec.run.starts_with(FISSION_SCHEME) {
            self.record(dispatched(inputs.clone(), None, self.now));
            return self.call(task, attempt, key, spec, &inputs);
        }
        if !builtins::is_builtin(&target) {
            return Err(format!("step {task} runs {target:?}"));
        }
        match builtins::run(&target, &raw, &raw) {
            builtins::Outcome::Sleep(d) => {
                let wake = self
                    .now
                    .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                self.record(dispatched(inputs, Some(wake), self.now));
            }
            builtins::Outcome::Output(output) => {
                // A Choice, Succeed or Fail step: ends where it starts.
                self.record(dispatched(inputs, None, self.now));
                self.record(Event::TaskSucceeded {
                    task: task.into(),
                    attempt,
                    output,
                    headers: Default::default(),
                    at: self.now,
                });
            }
            builtins::Outcome::Fail(error) | builtins::Outcome::Invalid(error) => {
                self.record(dispatched(inputs, None, self.now));
                self.record(Event::TaskFailed {
                    task: task.into(),
                    attempt,
                    error,
                    status: None,
                    retryable: false,
                    at: self.now,
                });
            }
            other => {
                return Err(format!(
                    "step {task}: unexpected built-in outcome {other:?}"
                ))
            }
        }
        Ok(())
    }

    /// The driver's inner loop: act on `decide` until nothing progresses, then
    /// store the batch.
    fn settle(&mut self) -> Result<(), String> {
        for _ in 0..100_000 {
            let mut progressed = false;
            let mut finished = false;
            for action in decide(&self.state, self.now) {
                match action {
                    Action::Dispatch {
                        task,
                        attempt,
                        key,
                        spec,
                    } => {
                        progressed = true;
                        self.dispatch(&task, attempt, &key, &spec)?;
                    }
                    Action::ScheduleRetry { task, attempt, due } => {
                        progressed = true;
                        self.record(Event::RetryScheduled {
                            task,
                            attempt,
                            due,
                            at: self.now,
                        });
                    }
                    Action::StartTimer { at } => {
                        if self.armed.insert(at) {
                            self.timers.insert(at);
                        }
                    }
                    Action::FireTimer { task } => {
                        progressed = true;
                        self.record(Event::TimerFired { task, at: self.now });
                    }
                    Action::CancelTask { task, reason } => {
                        // As the driver: recorded, and its call (if any) abandoned.
                        progressed = true;
                        self.record(Event::TaskCancelled {
                            task: task.clone(),
                            reason,
                            at: self.now,
                        });
                        self.calls.retain(|_, c| c.task != task);
                    }
                    Action::ExpireCallback { task, .. } => {
                        return Err(format!(
                            "callback expiry for {task}, which no step waits on"
                        ))
                    }
                    Action::TimeOut { task, .. } => {
                        return Err(format!(
                            "a task timeout for {task}: a state machine's steps time out in their calls"
                        ))
                    }
                    Action::Finish(f) => {
                        progressed = true;
                        finished = true;
                        self.record(finish_event(&f, self.now));
                    }
                }
            }
            if !progressed || finished || self.state.is_finished() {
                if self.batches.last() != Some(&self.events.len()) {
                    self.batches.push(self.events.len());
                }
                return Ok(());
            }
        }
        Err("decide keeps asking for work at one instant".into())
    }

    /// Runs until the run ends: settle, then wait for the next answer or
    /// timer and record what arrived.
    fn run(&mut self) -> Result<(), String> {
        for _ in 0..MAX_ROUNDS {
            self.settle()?;
            if self.state.is_finished() {
                return Ok(());
            }
            let waiting = self.state.tasks.values().any(|t| {
                t.status == TaskStatus::Retrying
                    || (t.status == TaskStatus::Running && t.wake_at.is_some())
            });
            if self.calls.is_empty() && !waiting {
                return Err(format!(
                    "stuck at {}: no call in flight and no step waits for a timer",
                    self.now
                ));
            }
            let next_call = self.calls.keys().next().map(|(t, _)| *t);
            let next_timer = self.timers.first().copied();
            let Some(next) = next_call.into_iter().chain(next_timer).min() else {
                return Err(format!("stuck at {}: nothing will wake the run", self.now));
            };
            self.now = self.now.max(next);
            let now = self.now;
            self.timers.retain(|&t| t > now);
            while let Some(entry) = self.calls.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let c = entry.remove();
                self.record(World::event(c.reply, &c.task, c.attempt, &c.body, now));
            }
        }
        Err(format!("the run did not end within {MAX_ROUNDS} rounds"))
    }
}

/// The (step, attempt) pairs of the events that `pick` selects.
fn attempts(
    events: &[Event],
    pick: fn(&Event) -> Option<(&String, u32)>,
) -> BTreeSet<(String, u32)> {
    events
        .iter()
        .filter_map(pick)
        .map(|(t, a)| (t.clone(), a))
        .collect()
}

fn dispatched(e: &Event) -> Option<(&String, u32)> {
    match e {
        Event::TaskDispatched { task, attempt, .. } => Some((task, *attempt)),
        _ => None,
    }
}

fn ended(e: &Event) -> Option<(&String, u32)> {
    match e {
        Event::TaskSucceeded { task, attempt, .. } | Event::TaskFailed { task, attempt, .. } => {
            Some((task, *attempt))
        }
        _ => None,
    }
}

/// Checks one crash after the first `k` stored events of `original`.
/// When the process restarts.
#[derive(Debug, Clone, Copy)]
enum Restart {
    /// At once. After a batch's end (`boundary`), recovery adds no events of
    /// its own and the world answers as before, so the rest of the history is
    /// the same.
    AtOnce { boundary: bool },
    /// This long after the crash: answers and timers bunch up, so races (which
    /// branch fails first, the run's timeout) may end the run otherwise; it
    /// must still end, without running again what had finished.
    Late(Millis),
}

fn crash_and_recover(
    world: &World,
    original: &Sim,
    k: usize,
    restart: Restart,
) -> Result<(), String> {
    let prefix = &original.events[..k];
    let before = RunState::fold(prefix);
    let now = prefix.last().map(Event::at).unwrap_or(0);
    // decide never panics, whenever it is asked.
    for t in [0, now, now + 1, before.deadline.unwrap_or(0), u64::MAX] {
        decide(&before, t);
    }
    // The driver stores a built-in step's dispatch with its outcome in one
    // batch (one transaction): no crash falls between them.
    if before
        .in_flight()
        .iter()
        .any(|t| !t.spec.run.starts_with(FISSION_SCHEME) && t.wake_at.is_none())
    {
        return Ok(());
    }
    let (downtime, boundary) = match restart {
        Restart::AtOnce { boundary } => (0, boundary),
        Restart::Late(ms) => (ms, false),
    };
    let mut rec = Sim::recover(world, prefix, downtime)?;
    rec.run().map_err(|e| format!("after recovery: {e}"))?;
    let end = |s: &RunState| (s.status, s.output.clone(), s.error.clone());
    if downtime == 0 && end(&rec.state) != end(&original.state) {
        return Err(format!(
            "recovered run ended {:?}, the uninterrupted one {:?}",
            end(&rec.state),
            end(&original.state)
        ));
    }
    if boundary && rec.events[k..] != original.events[k..] {
        return Err(format!(
            "the history after recovery differs:\n{:#?}\nwhere the uninterrupted run has\n{:#?}",
            &rec.events[k..],
            &original.events[k..]
        ));
    }
    // Nothing that had finished runs again: no call of an attempt that ended,
    // no call of a step that ended, no second dispatch of an attempt.
    let ended_before = attempts(prefix, ended);
    let dispatched_before = attempts(prefix, dispatched);
    for (task, attempt, key) in &rec.made {
        let status = before.tasks.get(task).map(|t| t.status);
        if ended_before.contains(&(task.clone(), *attempt))
            || matches!(status, Some(TaskStatus::Succeeded | TaskStatus::Failed))
        {
            return Err(format!(
                "{task} attempt {attempt} ({key}) had ended and ran again"
            ));
        }
    }
    for (task, attempt) in attempts(&rec.events[k..], dispatched) {
        if dispatched_before.contains(&(task.clone(), attempt)) {
            return Err(format!("{task} attempt {attempt} was dispatched twice"));
        }
        let status = before.tasks.get(&task).map(|t| t.status);
        if matches!(status, Some(TaskStatus::Succeeded | TaskStatus::Failed)) {
            return Err(format!("{task} had ended and was dispatched again"));
        }
    }
    Ok(())
}

fn build(case: &Case) -> (String, World, Value) {
    let mut b = Builder::default();
    let mut doc = b.machine(&case.steps);
    if let Some(ms) = case.timeout_ms {
        doc["timeout"] = json!(format!("{ms}ms"));
    }
    let items: Vec<Value> = case.items.iter().map(|x| json!({"x": x})).collect();
    let input = json!({"x": case.x, "items": items});
    (
        doc.to_string(),
        World {
            functions: b.functions,
        },
        input,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The property of the issue: fold(events) after any stored prefix plus
    /// recovery gives the result of the uninterrupted run.
    #[test]
    fn a_run_recovers_to_the_same_end_after_any_crash(case in case(), downtime in 1u64..5000) {
        let (source, world, input) = build(&case);
        let mut original = Sim::start(&world, &source, input).map_err(TestCaseError::fail)?;
        original.run().map_err(TestCaseError::fail)?;
        prop_assert!(original.state.is_finished());
        prop_assert_eq!(original.events.iter().filter(|e| e.is_terminal()).count(), 1);
        prop_assert!(original.events.last().is_some_and(Event::is_terminal));
        // The driver stores a batch in one transaction, so only a batch's end
        // is a crash point it can meet; every prefix is tried all the same.
        for k in 1..original.events.len() {
            let boundary = original.batches.contains(&k);
            let mut restarts = vec![Restart::AtOnce { boundary }];
            if boundary {
                restarts.push(Restart::Late(downtime));
            }
            for restart in restarts {
                if let Err(e) = crash_and_recover(&world, &original, k, restart) {
                    return Err(TestCaseError::fail(format!(
                        "crash after {k} events, restart {restart:?}: {e}\n{source}"
                    )));
                }
            }
        }
    }
}

/// One machine with a state of every kind, through the whole path: the
/// validator accepts what the generator builds, the run ends as the plan
/// says, and so it does after a crash at any point.
#[test]
fn a_machine_of_every_kind_of_state_recovers_after_any_crash() {
    let plan = |result_path, replies: Vec<(Reply, u16)>| TaskPlan {
        retry: Some((3, 100, false)),
        catch: Some((3, 1, true)),
        input_path: 1,
        result_path,
        output_path: true,
        replies,
    };
    let case = Case {
        steps: vec![
            // 503 once, then 200 after a backoff of 100ms.
            Step::Task(plan(2, vec![(Reply::Status(503), 5), (Reply::Ok(3), 5)])),
            // $.r.v is 3: on to the Parallel.
            Step::Choice {
                var: 0,
                op: 0,
                operand: 1,
                jump: 1,
                default: Some(2),
            },
            Step::Parallel {
                branches: vec![
                    vec![Step::Wait { ms: 1000 }],
                    vec![Step::Task(plan(0, vec![(Reply::Ok(1), 50)]))],
                ],
                result: 1,
            },
            Step::Map {
                iterator: vec![Step::Task(plan(2, vec![(Reply::Ok(2), 10)]))],
                max_concurrency: 2,
                result: 0,
            },
        ],
        timeout_ms: None,
        x: 1,
        items: vec![1, 2, 3],
    };
    let (source, world, input) = build(&case);
    let mut sim = Sim::start(&world, &source, input).unwrap();
    sim.run().unwrap();
    let output = sim
        .state
        .output
        .clone()
        .unwrap_or_else(|| panic!("{:?}\n{source}", sim.state.error));
    let items: Vec<(Value, Value)> = output
        .as_array()
        .unwrap_or_else(|| panic!("not the Map's results: {output}"))
        .iter()
        .map(|item| (item["x"].clone(), item["r"]["v"].clone()))
        .collect();
    assert_eq!(
        items,
        [
            (json!(1), json!(2)),
            (json!(2), json!(2)),
            (json!(3), json!(2))
        ]
    );
    // The first step's second attempt answered after its backoff; the Wait
    // took a second of simulated time.
    assert!(sim.now >= 1110, "{}", sim.now);
    assert_eq!(sim.state.tasks["000001-s0"].attempts, 2);
    for k in 1..sim.events.len() {
        let restart = Restart::AtOnce {
            boundary: sim.batches.contains(&k),
        };
        if let Err(e) = crash_and_recover(&world, &sim, k, restart) {
            panic!("crash after {k} events: {e}");
        }
    }
}
