//! Message-queue triggers end to end, with a real `nats-server` (JetStream) on
//! loopback: every message reaches the function once and its answer the
//! response topic; failures reach the error topic after every attempt; a
//! server killed mid-stream loses nothing, and one stopped calls nothing
//! twice; an unreachable NATS server or a missing stream is the trigger's
//! status until it is fixed.

mod common;
#[path = "common/nats.rs"]
mod nats;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use base64::Engine;
use common::probe::Probe;
use common::{eventually, Server};
use nats::Nats;
use serde_json::{json, Value};

/// A binary function that logs `<key> <delivery>` to the probe's
/// `deliveries`, `<key>` to its `calls` (and the headers Fission's KEDA
/// connectors send to `keda`), waits for the
/// probe's gate `go` if `gated`, then answers `<X-Order header>:<body>`.
fn echo(probe: &Probe, gated: bool) -> String {
    let wait = if gated {
        format!("{}\n", probe.curl("/gate/go"))
    } else {
        String::new()
    };
    format!(
        "#!/bin/sh\n{}\n{}\n{}\n{wait}printf '%s:%s' \"$HTTP_X_ORDER\" \"$(cat)\"\n",
        // Before `calls`: a call seen there has said its delivery.
        probe.curl("/log/deliveries?$HTTP_X_FUSION_IDEMPOTENCY_KEY+$HTTP_X_FUSION_DELIVERY"),
        probe.curl("/log/calls?$HTTP_X_FUSION_IDEMPOTENCY_KEY"),
        probe.curl("/log/keda?$HTTP_TOPIC,$HTTP_RESPTOPIC,$HTTP_SOURCE_NAME"),
    )
}

fn server(nats: &Nats) -> Server {
    let s = Server::start_with(&[("FUSION_NATS_URL", &nats.url)]);
    s.env("binary", "binary", 1);
    s
}

fn state(s: &Server, name: &str) -> Value {
    s.ok("GET", &format!("/v1/mqtriggers/{name}"), None)["status"].clone()
}

fn wait_state(s: &Server, name: &str, want: &str, limit: Duration) -> Value {
    let mut last = Value::Null;
    eventually(limit, &format!("trigger {name} is {want}"), || {
        last = state(s, name);
        last["state"] == want
    });
    last
}

fn counts(lines: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for l in lines {
        *m.entry(l.clone()).or_default() += 1;
    }
    m
}

#[test]
fn every_message_reaches_the_function_once_and_its_answer_the_response_topic() {
    let nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    nats.create_stream("RESULTS", &["results.>"]);
    let s = server(&nats);
    let probe = Probe::start();
    s.function(
        "hello",
        "binary",
        "hello.sh",
        &echo(&probe, false),
        json!({}),
    );
    let (rc, out, err) = s.cli(&[
        "mqt",
        "create",
        "--name",
        "orders",
        "--mqtype",
        "nats-jetstream",
        "--topic",
        "orders.new",
        "--function",
        "hello",
        "--resptopic",
        "results.ok",
        "--concurrency",
        "4",
    ]);
    assert_eq!(rc, 0, "{out}{err}");
    wait_state(&s, "orders", "running", Duration::from_secs(20));

    const N: usize = 30;
    let mut seqs = BTreeSet::new();
    for i in 0..N {
        let seq = nats.publish(
            "orders.new",
            &format!("m{i}"),
            &[("X-Order", &i.to_string())],
        );
        seqs.insert(format!("ORDERS-{seq}"));
    }
    eventually(Duration::from_secs(60), "every answer is published", || {
        nats.messages("RESULTS", "results.ok").len() >= N
    });
    // Each message was called once, as the function's own record of
    // idempotency keys says, and nothing else was.
    let calls = counts(&probe.lines("calls"));
    assert_eq!(calls.keys().cloned().collect::<BTreeSet<_>>(), seqs);
    assert!(calls.values().all(|n| *n == 1), "{calls:?}");
    // With the headers Fission's KEDA connector sends, as a function
    // written for it reads them.
    let keda = probe.lines("keda");
    assert_eq!(keda.len(), N);
    assert!(
        keda.iter()
            .all(|l| l == "orders.new,results.ok,KEDAConnector"),
        "{keda:?}"
    );
    // Each answer carries the message's key; the NATS header reached the function.
    let answers = nats.messages("RESULTS", "results.ok");
    assert_eq!(answers.len(), N);
    let got: BTreeSet<String> = answers.iter().map(|m| m.payload.clone()).collect();
    let want: BTreeSet<String> = (0..N).map(|i| format!("{i}:m{i}")).collect();
    assert_eq!(got, want);
    let keys: BTreeSet<String> = answers
        .iter()
        .map(|m| m.headers["X-Fusion-Idempotency-Key"].clone())
        .collect();
    assert_eq!(keys, seqs);

    // `mqt get` shows it running, with what it settled.
    let (rc, out, err) = s.cli(&["mqt", "get", "orders"]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.contains("running") && out.contains("orders.new"),
        "{out}"
    );
    let st = state(&s, "orders");
    assert_eq!(st["succeeded"], N as u64, "{st}");
    assert_eq!(st["failed"], 0, "{st}");
    // And on /metrics, for a scraper.
    let text = s.api("GET", "/metrics").send().unwrap().text().unwrap();
    for line in [
        format!(r#"fusion_mqtrigger_messages_total{{trigger="orders",outcome="succeeded"}} {N}"#),
        r#"fusion_mqtrigger_messages_total{trigger="orders",outcome="failed"} 0"#.to_string(),
        r#"fusion_mqtrigger_consuming{trigger="orders"} 1"#.to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }

    // A new concurrency takes effect on the same durable consumer, which
    // resumes after what it acked.
    let (rc, out, err) = s.cli(&["mqt", "update", "orders", "--concurrency", "2"]);
    assert_eq!(rc, 0, "{out}{err}");
    assert_eq!(s.ok("GET", "/v1/mqtriggers/orders", None)["concurrency"], 2);
    wait_state(&s, "orders", "running", Duration::from_secs(20));
    let seq = nats.publish("orders.new", "late", &[("X-Order", "late")]);
    eventually(
        Duration::from_secs(30),
        "the message after the update is answered",
        || nats.messages("RESULTS", "results.ok").len() > N,
    );
    let answers = nats.messages("RESULTS", "results.ok");
    assert_eq!(answers.len(), N + 1);
    assert_eq!(answers[N].payload, "late:late");
    assert_eq!(probe.lines("calls").last(), Some(&format!("ORDERS-{seq}")));
    // `--resptopic ''` publishes answers nowhere any more.
    let (rc, out, err) = s.cli(&["mqt", "update", "orders", "--resptopic", ""]);
    assert_eq!(rc, 0, "{out}{err}");
    let t = s.ok("GET", "/v1/mqtriggers/orders", None);
    assert!(t.get("respTopic").is_none(), "{t}");

    // The function cannot go while the trigger targets it; deleting the
    // trigger removes its durable consumer from NATS.
    let (code, body) = s.call("DELETE", "/v1/functions/hello", None);
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("orders"),
        "{body}"
    );
    assert_eq!(nats.consumers("ORDERS"), vec!["fusion-mqt-default-orders"]);
    let (rc, out, err) = s.cli(&["mqt", "delete", "orders"]);
    assert_eq!(rc, 0, "{out}{err}");
    eventually(Duration::from_secs(10), "the consumer is deleted", || {
        nats.consumers("ORDERS").is_empty()
    });
    let (code, _) = s.call("DELETE", "/v1/functions/hello", None);
    assert_eq!(code, 204);
}

/// A message whose headers ask for an asynchronous call (`X-Async`) still
/// gets its answer published: the trigger waits for the workflow's output, as
/// for a function's, rather than publishing that the run is running.
#[test]
fn a_message_asking_for_an_asynchronous_call_gets_its_workflows_answer() {
    let nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    nats.create_stream("RESULTS", &["results.>"]);
    let s = server(&nats);
    s.workflow(
        "shout",
        "apiVersion: 1\noutput: X\ntasks:\n  X:\n    run: noop\n    inputs: \"{ param() + '!' }\"\n",
    );
    let (rc, out, err) = s.cli(&[
        "mqt",
        "create",
        "--name",
        "shouts",
        "--mqtype",
        "nats-jetstream",
        "--topic",
        "orders.shout",
        "--workflow",
        "shout",
        "--resptopic",
        "results.shout",
    ]);
    assert_eq!(rc, 0, "{out}{err}");
    wait_state(&s, "shouts", "running", Duration::from_secs(20));
    nats.publish(
        "orders.shout",
        "hey",
        &[("X-Async", "true"), ("Content-Type", "text/plain")],
    );
    eventually(Duration::from_secs(60), "the answer is published", || {
        !nats.messages("RESULTS", "results.shout").is_empty()
    });
    let answers = nats.messages("RESULTS", "results.shout");
    assert_eq!(answers[0].payload, "hey!", "{:?}", answers[0].headers);
}

#[test]
fn a_failing_message_goes_to_the_error_topic_after_every_attempt() {
    let nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    nats.create_stream("ERRORS", &["errors.>"]);
    let s = server(&nats);
    let probe = Probe::start();
    let broken = format!(
        "#!/bin/sh\n{}\necho 'out of stock' >&2\nexit 1\n",
        probe.curl("/log/calls?$HTTP_X_FUSION_IDEMPOTENCY_KEY+$HTTP_X_FUSION_ATTEMPT")
    );
    s.function("broken", "binary", "broken.sh", &broken, json!({}));
    s.ok(
        "POST",
        "/v1/mqtriggers",
        Some(json!({
            "name": "orders", "function": "broken", "topic": "orders.new",
            "errorTopic": "errors.orders", "maxRetries": 2,
        })),
    );
    wait_state(&s, "orders", "running", Duration::from_secs(20));
    let seq = nats.publish("orders.new", "{\"sku\": 7}", &[]);
    eventually(Duration::from_secs(30), "the failure is published", || {
        !nats.messages("ERRORS", "errors.orders").is_empty()
    });
    let key = format!("ORDERS-{seq}");
    // maxRetries 2: three attempts, with the same key.
    assert_eq!(
        probe.lines("calls"),
        vec![format!("{key} 1"), format!("{key} 2"), format!("{key} 3")]
    );
    let failures = nats.messages("ERRORS", "errors.orders");
    assert_eq!(failures.len(), 1);
    let doc: Value = serde_json::from_str(&failures[0].payload).unwrap();
    assert_eq!(doc["error"]["status"], 500, "{doc}");
    // The function's answer, as the binary runtime gives it (its stderr goes
    // to its log, not to whoever reads the error topic).
    assert_eq!(
        doc["error"]["body"], "failed to wait for subprocess: exit status 1",
        "{doc}"
    );
    assert!(
        doc["error"]["message"].as_str().unwrap().contains("500"),
        "{doc}"
    );
    assert_eq!(doc["attempts"], 3, "{doc}");
    assert_eq!(doc["idempotencyKey"], key.as_str(), "{doc}");
    assert_eq!(doc["payload"], "{\"sku\": 7}", "{doc}");
    assert!(doc.get("payloadBase64").is_none(), "{doc}");
    eventually(Duration::from_secs(10), "the failure is counted", || {
        state(&s, "orders")["failed"] == 1
    });

    // A payload that is not UTF-8 is reported in base64, byte for byte, so
    // that it can be replayed.
    let binary = b"\xff\xfe\x00binary";
    nats.publish_bytes("orders.new", binary);
    eventually(
        Duration::from_secs(30),
        "the second failure is published",
        || nats.messages("ERRORS", "errors.orders").len() == 2,
    );
    let doc: Value =
        serde_json::from_str(&nats.messages("ERRORS", "errors.orders")[1].payload).unwrap();
    assert!(doc.get("payload").is_none(), "{doc}");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(doc["payloadBase64"].as_str().unwrap_or_default())
        .unwrap();
    assert_eq!(decoded, binary, "{doc}");
}

/// An answer larger than NATS takes in one message cannot go to the response
/// topic: it is a failure on the error topic, settled once (not a message
/// redelivered forever), and the consumer goes on with the next message.
#[test]
fn an_answer_too_large_for_nats_is_a_failure_not_a_loop() {
    let nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    nats.create_stream("DONE", &["done.>"]);
    nats.create_stream("ERRORS", &["errors.>"]);
    let s = server(&nats);
    // 2 MiB when asked for "big", else a word (nats-server takes 1 MiB).
    let answer = "#!/bin/sh
if [ \"$(cat)\" = big ]; then head -c 2097152 /dev/zero | tr '\\0' x; else printf small; fi\n";
    s.function("answer", "binary", "answer.sh", answer, json!({}));
    s.ok(
        "POST",
        "/v1/mqtriggers",
        Some(json!({
            "name": "sizes", "function": "answer", "topic": "orders.new",
            "respTopic": "done.orders", "errorTopic": "errors.orders",
        })),
    );
    wait_state(&s, "sizes", "running", Duration::from_secs(20));
    nats.publish("orders.new", "big", &[]);
    nats.publish("orders.new", "small", &[]);
    eventually(Duration::from_secs(30), "both are settled", || {
        !nats.messages("ERRORS", "errors.orders").is_empty()
            && !nats.messages("DONE", "done.orders").is_empty()
    });
    let failures = nats.messages("ERRORS", "errors.orders");
    assert_eq!(failures.len(), 1, "{failures:?}");
    let doc: Value = serde_json::from_str(&failures[0].payload).unwrap();
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("larger than the NATS server takes"),
        "{doc}"
    );
    // The function did answer, 200: said as it was.
    assert_eq!(doc["error"]["status"], 200, "{doc}");
    let done = nats.messages("DONE", "done.orders");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].payload, "small");
    eventually(Duration::from_secs(10), "both are counted", || {
        let st = state(&s, "sizes");
        st["failed"] == 1 && st["succeeded"] == 1
    });
}

/// A function that logs `<key> <attempt>` to the probe's `calls`, then fails.
fn failing(probe: &Probe) -> String {
    format!(
        "#!/bin/sh\ncat >/dev/null\n{}\necho 'out of stock' >&2\nexit 1\n",
        probe.curl("/log/calls?$HTTP_X_FUSION_IDEMPOTENCY_KEY+$HTTP_X_FUSION_ATTEMPT")
    )
}

/// Every message the trigger's consumer was given is acked or terminated,
/// as NATS says: none waits to be redelivered.
fn wait_settled(nats: &Nats, stream: &str, trigger: &str, messages: u64) {
    let consumer = format!("fusion-mqt-default-{trigger}");
    let mut last = None;
    eventually(
        Duration::from_secs(60),
        &format!("NATS has every message of {trigger} settled"),
        || {
            let st = nats.consumer_state(stream, &consumer);
            let done = st.delivered >= messages && st.ack_pending == 0 && st.pending == 0;
            last = Some(st);
            done
        },
    );
    let st = last.unwrap();
    assert_eq!(st.redelivered, 0, "{st:?}");
}

/// The review's case: 600,000 `"` take twice as much once escaped in the
/// error report, more than NATS takes (1 MiB). The report is cut to fit and
/// says so; the message is settled once (the function called `maxRetries + 1`
/// times, never again at each ack wait); the same for an answer too large for
/// the response topic whose report would be too large as well; and the
/// status counts what happened.
#[test]
fn a_report_larger_than_nats_takes_is_cut_and_the_message_settled_once() {
    let nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    nats.create_stream("RESULTS", &["results.>"]);
    nats.create_stream("ERRS", &["errs.>"]);
    let s = server(&nats);
    let probe = Probe::start();
    s.function("fail", "binary", "fail.sh", &failing(&probe), json!({}));
    // Its body twice: 1.2 MB for 600 KB.
    let double = "#!/bin/sh\nb=$(cat)\nprintf '%s%s' \"$b\" \"$b\"\n";
    s.function("double", "binary", "double.sh", double, json!({}));
    // A short ack wait: a message left unsettled would come back in a second.
    for (name, function, topic) in [("ferr", "fail", "fail"), ("fbig", "double", "big")] {
        s.ok(
            "POST",
            "/v1/mqtriggers",
            Some(json!({
                "name": name, "function": function, "topic": format!("orders.{topic}"),
                "respTopic": format!("results.{topic}"), "errorTopic": format!("errs.{topic}"),
                "maxRetries": 2, "metadata": {"ackWait": "1s"},
            })),
        );
        wait_state(&s, name, "running", Duration::from_secs(20));
    }
    let quotes = "\"".repeat(600_000);
    let seq = nats.publish("orders.fail", &quotes, &[]);
    nats.publish("orders.big", &quotes, &[]);
    wait_settled(&nats, "ORDERS", "ferr", 1);
    wait_settled(&nats, "ORDERS", "fbig", 1);

    let key = format!("ORDERS-{seq}");
    assert_eq!(
        probe.lines("calls"),
        vec![format!("{key} 1"), format!("{key} 2"), format!("{key} 3")]
    );
    for (topic, said) in [
        ("fail", "answered 500"),
        ("big", "larger than the NATS server takes"),
    ] {
        let reports = nats.messages("ERRS", &format!("errs.{topic}"));
        assert_eq!(reports.len(), 1, "errs.{topic}: {} reports", reports.len());
        assert!(reports[0].payload.len() <= 1 << 20);
        let doc: Value = serde_json::from_str(&reports[0].payload).unwrap();
        let message = doc["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(said), "errs.{topic}: {message}");
        assert_eq!(doc["payloadTruncated"], true, "errs.{topic}");
        assert_eq!(doc["payloadSize"], 600_000, "errs.{topic}");
        let kept = doc["payload"].as_str().unwrap();
        assert!(
            kept.len() > 400_000 && quotes.starts_with(kept),
            "errs.{topic}: {} bytes of payload",
            kept.len()
        );
        assert!(nats
            .messages("RESULTS", &format!("results.{topic}"))
            .is_empty());
    }
    for name in ["ferr", "fbig"] {
        let st = state(&s, name);
        assert_eq!(
            (
                &st["succeeded"],
                &st["failed"],
                &st["redelivered"],
                &st["unpublished"]
            ),
            (&json!(0), &json!(1), &json!(0), &json!(0)),
            "{name}: {st}"
        );
    }
}

/// An error topic that refuses the report (here a stream that takes no
/// message over 64 bytes) cannot keep a message coming back: it is
/// terminated after its last attempt, and the status says its outcome was
/// not published. An answer the response topic refuses is reported on the
/// error topic.
#[test]
fn a_report_the_error_topic_refuses_is_logged_and_the_message_terminated() {
    let nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    nats.create_stream_limited("ERRS", &["errs.>"], 64);
    nats.create_stream_limited("RESULTS", &["results.>"], 64);
    nats.create_stream("REPORTS", &["reports.>"]);
    let s = server(&nats);
    let probe = Probe::start();
    s.function("fail", "binary", "fail.sh", &failing(&probe), json!({}));
    let long = "#!/bin/sh\ncat >/dev/null\nhead -c 100 /dev/zero | tr '\\0' x\n";
    s.function("long", "binary", "long.sh", long, json!({}));
    s.ok(
        "POST",
        "/v1/mqtriggers",
        Some(json!({
            "name": "fresp", "function": "long", "topic": "orders.long",
            "respTopic": "results.long", "errorTopic": "reports.long",
            "metadata": {"ackWait": "1s"},
        })),
    );
    wait_state(&s, "fresp", "running", Duration::from_secs(20));
    nats.publish("orders.long", "y", &[]);
    wait_settled(&nats, "ORDERS", "fresp", 1);
    let reports = nats.messages("REPORTS", "reports.long");
    assert_eq!(reports.len(), 1, "{reports:?}");
    let doc: Value = serde_json::from_str(&reports[0].payload).unwrap();
    let message = doc["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("answer could not be published") && message.contains("results.long"),
        "{doc}"
    );
    assert_eq!(doc["payload"], "y", "{doc}");
    assert!(nats.messages("RESULTS", "results.long").is_empty());
    let st = state(&s, "fresp");
    assert_eq!(
        (&st["failed"], &st["unpublished"]),
        (&json!(1), &json!(0)),
        "{st}"
    );

    s.ok(
        "POST",
        "/v1/mqtriggers",
        Some(json!({
            "name": "ferr", "function": "fail", "topic": "orders.fail",
            "errorTopic": "errs.fail", "maxRetries": 1, "metadata": {"ackWait": "1s"},
        })),
    );
    wait_state(&s, "ferr", "running", Duration::from_secs(20));
    let seq = nats.publish("orders.fail", "x", &[]);
    wait_settled(&nats, "ORDERS", "ferr", 1);
    let key = format!("ORDERS-{seq}");
    assert_eq!(
        probe.lines("calls"),
        vec![format!("{key} 1"), format!("{key} 2")]
    );
    assert!(nats.messages("ERRS", "errs.fail").is_empty());
    let st = state(&s, "ferr");
    assert_eq!(
        (
            &st["succeeded"],
            &st["failed"],
            &st["redelivered"],
            &st["unpublished"]
        ),
        (&json!(0), &json!(1), &json!(0), &json!(1)),
        "{st}"
    );
}

/// `deliverPolicy: new` starts a trigger after the stream's history; the
/// default (`all`) replays it, and a changed policy starts the consumer
/// afresh (NATS changes no consumer's policy in place). A value NATS does not
/// know is refused, naming those it does.
#[test]
fn a_new_trigger_on_an_old_stream_starts_where_its_deliver_policy_says() {
    let nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    let s = server(&nats);
    let probe = Probe::start();
    s.function(
        "hello",
        "binary",
        "hello.sh",
        &echo(&probe, false),
        json!({}),
    );
    let key = |seq: u64| format!("ORDERS-{seq}");
    let old: Vec<String> = ["a", "b"]
        .iter()
        .map(|m| key(nats.publish("orders.new", m, &[])))
        .collect();

    let (code, body) = s.call(
        "POST",
        "/v1/mqtriggers",
        Some(
            json!({"name": "late", "function": "hello", "topic": "orders.new",
                    "metadata": {"deliverPolicy": "latest"}}),
        ),
    );
    assert_eq!(code, 400, "{body}");
    let m = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("deliverPolicy \"latest\"") && m.contains("all, new, last"),
        "{m}"
    );

    let (rc, out, err) = s.cli(&[
        "mqt",
        "create",
        "late",
        "--topic",
        "orders.new",
        "--function",
        "hello",
        "--metadata",
        "deliverPolicy=new",
    ]);
    assert_eq!(rc, 0, "{out}{err}");
    wait_state(&s, "late", "running", Duration::from_secs(20));
    let fresh = key(nats.publish("orders.new", "c", &[]));
    wait_settled(&nats, "ORDERS", "late", 1);
    // In stream order: had the history been delivered, it would have come first.
    assert_eq!(probe.lines("calls"), vec![fresh.clone()]);
    assert_eq!(state(&s, "late")["succeeded"], 1);

    let (rc, out, err) = s.cli(&["mqt", "update", "late", "--metadata", "deliverPolicy=all"]);
    assert_eq!(rc, 0, "{out}{err}");
    wait_state(&s, "late", "running", Duration::from_secs(20));
    wait_settled(&nats, "ORDERS", "late", 3);
    let mut want = vec![fresh.clone()];
    want.extend(old);
    want.push(fresh);
    assert_eq!(probe.lines("calls"), want);
}

/// A server whose trigger `orders` (concurrency 2, `ack_wait`) delivers
/// `n` messages, published here, to the gated function `slow`: once it
/// returns, two are in the function. Answers their idempotency keys.
fn two_in_flight(nats: &Nats, ack_wait: &str, n: usize) -> (Server, Probe, BTreeSet<String>) {
    nats.create_stream("ORDERS", &["orders.>"]);
    nats.create_stream("RESULTS", &["results.>"]);
    let s = server(nats);
    let probe = Probe::start();
    s.function("slow", "binary", "slow.sh", &echo(&probe, true), json!({}));
    s.ok(
        "POST",
        "/v1/mqtriggers",
        Some(json!({
            "name": "orders", "function": "slow", "topic": "orders.new",
            "respTopic": "results.ok", "concurrency": 2,
            "metadata": {"ackWait": ack_wait},
        })),
    );
    wait_state(&s, "orders", "running", Duration::from_secs(20));
    let seqs: BTreeSet<String> = (0..n)
        .map(|i| {
            format!(
                "ORDERS-{}",
                nats.publish("orders.new", &format!("m{i}"), &[])
            )
        })
        .collect();
    eventually(
        Duration::from_secs(30),
        "two messages are in flight",
        || probe.lines("calls").len() >= 2,
    );
    (s, probe, seqs)
}

/// Waits until every message of `seqs` is answered on `results.ok`, then
/// checks that each was called once and answered once.
fn each_answered_once(nats: &Nats, probe: &Probe, seqs: &BTreeSet<String>) {
    let n = seqs.len();
    eventually(Duration::from_secs(60), "every answer is published", || {
        nats.messages("RESULTS", "results.ok").len() >= n
    });
    let calls = counts(&probe.lines("calls"));
    assert_eq!(&calls.keys().cloned().collect::<BTreeSet<_>>(), seqs);
    assert!(
        calls.values().all(|n| *n == 1),
        "each called once: {calls:?}"
    );
    assert_eq!(nats.messages("RESULTS", "results.ok").len(), n);
}

#[test]
fn a_server_killed_mid_stream_loses_no_message() {
    let nats = Nats::start();
    const N: usize = 6;
    let (mut s, probe, seqs) = two_in_flight(&nats, "2s", N);
    let in_flight = probe.lines("calls");
    s.kill();
    probe.open("go");
    s.launch();
    eventually(Duration::from_secs(60), "every answer is published", || {
        nats.messages("RESULTS", "results.ok").len() >= N
    });
    let answers = nats.messages("RESULTS", "results.ok");
    let keys: BTreeSet<String> = answers
        .iter()
        .map(|m| m.headers["X-Fusion-Idempotency-Key"].clone())
        .collect();
    assert_eq!(keys, seqs, "every message answered once");
    assert_eq!(answers.len(), N, "no message answered twice");
    // The messages in flight at the kill were not acked: NATS redelivered them.
    let calls = counts(&probe.lines("calls"));
    let deliveries = probe.lines("deliveries");
    for key in &in_flight {
        assert!(calls[key] >= 2, "{key} was not delivered again: {calls:?}");
        // Each call says which delivery it is.
        assert!(deliveries.contains(&format!("{key} 1")), "{deliveries:?}");
        assert!(deliveries.contains(&format!("{key} 2")), "{deliveries:?}");
    }
    assert_eq!(calls.keys().cloned().collect::<BTreeSet<_>>(), seqs);
    assert!(state(&s, "orders")["redelivered"].as_u64().unwrap() >= in_flight.len() as u64);
}

/// Messages waiting behind slow calls (the trigger's concurrency taken) are
/// told in progress while they wait, as the calls are: none is delivered
/// again when its ack wait passes, and each runs once.
#[test]
fn messages_waiting_behind_slow_calls_are_not_delivered_twice() {
    let nats = Nats::start();
    const N: usize = 4;
    let (s, probe, seqs) = two_in_flight(&nats, "1s", N);
    eventually(
        Duration::from_secs(20),
        "every message is handed over",
        || {
            let c = nats.consumer_state("ORDERS", "fusion-mqt-default-orders");
            c.pending == 0 && c.ack_pending == N
        },
    );
    // What is asserted is that nothing happens: the waiting messages' ack
    // wait (1 s) must pass, several times, with the calls still held.
    std::thread::sleep(Duration::from_secs(4));
    let consumer = nats.consumer_state("ORDERS", "fusion-mqt-default-orders");
    assert_eq!(consumer.redelivered, 0, "{consumer:?}");
    assert_eq!(consumer.delivered, N as u64, "{consumer:?}");
    probe.open("go");
    each_answered_once(&nats, &probe, &seqs);
    assert_eq!(state(&s, "orders")["redelivered"], 0);
}

/// A server stopped cleanly (SIGTERM) mid-stream finishes the calls in flight
/// and hands back the rest: after a restart every message is answered once,
/// and none waits out its ack wait.
#[test]
fn a_server_stopped_mid_stream_calls_each_message_once_and_holds_none_back() {
    let nats = Nats::start();
    const N: usize = 8;
    // An ack wait longer than the test waits for the answers.
    let (mut s, probe, seqs) = two_in_flight(&nats, "5m", N);
    common::signal(s.pid(), libc::SIGTERM);
    // The calls in flight go on while the stopping consumer hands back what
    // it holds.
    // What it fetched but had not started is another consumer's at once,
    // while its calls go on.
    let mut handed_back = Vec::new();
    eventually(Duration::from_secs(20), "messages are handed back", || {
        handed_back = nats.pull_and_hand_back(
            "ORDERS",
            "fusion-mqt-default-orders",
            Duration::from_millis(200),
        );
        !handed_back.is_empty()
    });
    assert!(
        handed_back.iter().all(|(_, delivered)| *delivered >= 2),
        "{handed_back:?}"
    );
    probe.open("go");
    s.wait_stopped();
    s.launch();
    each_answered_once(&nats, &probe, &seqs);
    let consumer = nats.consumer_state("ORDERS", "fusion-mqt-default-orders");
    assert_eq!(consumer.ack_pending, 0, "{consumer:?}");
}

/// A stop while calls finish and more messages wait (concurrency 4, twelve
/// one-second calls): what was fetched but not started goes back at once,
/// nothing is fetched and handed back again and again, and after a restart
/// each message runs once, none waiting out its ack wait.
#[test]
fn a_stop_while_calls_end_runs_each_message_once_after_the_restart() {
    let nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    nats.create_stream("RESULTS", &["results.>"]);
    let mut s = server(&nats);
    let probe = Probe::start();
    let script = format!(
        "#!/bin/sh\n{}\nsleep 1\nprintf '%s' \"$(cat)\"\n",
        probe.curl("/log/calls?$HTTP_X_FUSION_IDEMPOTENCY_KEY+$HTTP_X_FUSION_DELIVERY")
    );
    s.function(
        "second",
        "binary",
        "second.sh",
        &script,
        json!({"max_scale": 4}),
    );
    s.ok(
        "POST",
        "/v1/mqtriggers",
        Some(json!({
            "name": "orders", "function": "second", "topic": "orders.new",
            "respTopic": "results.ok", "concurrency": 4,
            "metadata": {"ackWait": "5m"},
        })),
    );
    wait_state(&s, "orders", "running", Duration::from_secs(20));
    const N: usize = 12;
    for i in 0..N {
        nats.publish("orders.new", &format!("m{i}"), &[]);
    }
    eventually(Duration::from_secs(30), "four calls under way", || {
        probe.lines("calls").len() >= 4
    });
    common::signal(s.pid(), libc::SIGTERM);
    s.wait_stopped();
    let stopped = nats.consumer_state("ORDERS", "fusion-mqt-default-orders");
    s.launch();
    eventually(Duration::from_secs(60), "every answer is published", || {
        nats.messages("RESULTS", "results.ok").len() >= N
    });
    let calls = probe.lines("calls");
    let keys: Vec<String> = calls
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let once = counts(&keys);
    assert_eq!(once.len(), N, "{calls:?}");
    assert!(
        once.values().all(|n| *n == 1),
        "each called once: {calls:?}"
    );
    assert_eq!(nats.messages("RESULTS", "results.ok").len(), N);
    // Handed back once each at most, not fetched and refused again and again.
    assert!(
        stopped.delivered <= 2 * N as u64,
        "delivered {} times for {N} messages before the restart: {stopped:?}",
        stopped.delivered
    );
}

/// A call still under way when the stop's grace ends is cut off, and its
/// message handed back: after the restart it is delivered again at once
/// (with the same key), not after its ack wait (five minutes here).
#[test]
fn a_call_cut_off_at_the_end_of_the_grace_is_delivered_again_at_the_restart() {
    let nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    nats.create_stream("RESULTS", &["results.>"]);
    let mut s = Server::start_with(&[
        ("FUSION_NATS_URL", &nats.url),
        ("FUSION_SHUTDOWN_GRACE_MS", "300"),
    ]);
    s.env("binary", "binary", 1);
    let probe = Probe::start();
    s.function("slow", "binary", "slow.sh", &echo(&probe, true), json!({}));
    s.ok(
        "POST",
        "/v1/mqtriggers",
        Some(json!({
            "name": "orders", "function": "slow", "topic": "orders.new",
            "respTopic": "results.ok", "metadata": {"ackWait": "5m"},
        })),
    );
    wait_state(&s, "orders", "running", Duration::from_secs(20));
    nats.publish("orders.new", "m", &[("X-Order", "1")]);
    eventually(Duration::from_secs(30), "the call is under way", || {
        probe.lines("calls").len() == 1
    });
    common::signal(s.pid(), libc::SIGTERM);
    s.wait_stopped();
    probe.open("go");
    s.launch();
    eventually(Duration::from_secs(60), "the answer is published", || {
        !nats.messages("RESULTS", "results.ok").is_empty()
    });
    // Called again with the same key, as a redelivery (NATS may have
    // offered it once more to the stopping consumer, which handed it back).
    let deliveries = probe.lines("deliveries");
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    let key = probe.lines("calls")[0].clone();
    let again = deliveries[1].strip_prefix(&format!("{key} "));
    assert!(
        again
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 1),
        "{deliveries:?}"
    );
}

#[test]
fn an_unreachable_server_or_a_missing_stream_is_a_status_until_fixed() {
    let mut nats = Nats::stopped();
    let s = server(&nats);
    let probe = Probe::start();
    s.function(
        "hello",
        "binary",
        "hello.sh",
        &echo(&probe, false),
        json!({}),
    );
    s.ok(
        "POST",
        "/v1/mqtriggers",
        Some(json!({"name": "orders", "function": "hello", "topic": "orders.new"})),
    );
    let st = wait_state(&s, "orders", "error", Duration::from_secs(20));
    let message = st["message"].as_str().unwrap();
    assert!(
        message.contains("cannot connect to NATS") && message.contains(&nats.url),
        "{st}"
    );
    assert!(st["since"].as_str().is_some(), "{st}");
    // The API answers all the while, and `mqt get` says what is wrong.
    let (rc, out, err) = s.cli(&["mqt", "get", "orders"]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.contains("error") && out.contains("cannot connect"),
        "{out}"
    );

    // NATS comes up, without a stream for the topic: said so.
    nats.launch();
    eventually(
        Duration::from_secs(30),
        "the missing stream is the status",
        || {
            state(&s, "orders")["message"]
                .as_str()
                .is_some_and(|m| m.contains("no JetStream stream"))
        },
    );
    // A stream named in the metadata that does not exist: said so.
    s.ok(
        "POST",
        "/v1/mqtriggers",
        Some(
            json!({"name": "named", "function": "hello", "topic": "orders.new",
                    "metadata": {"stream": "NOPE"}}),
        ),
    );
    eventually(
        Duration::from_secs(30),
        "the named stream is missing",
        || {
            let st = state(&s, "named");
            st["state"] == "error" && st["message"].as_str().is_some_and(|m| m.contains("NOPE"))
        },
    );
    let (code, _) = s.call("DELETE", "/v1/mqtriggers/named", None);
    assert_eq!(code, 204);

    // The stream appears: the trigger recovers and consumes.
    nats.create_stream("ORDERS", &["orders.>"]);
    wait_state(&s, "orders", "running", Duration::from_secs(30));
    let seq = nats.publish("orders.new", "hi", &[]);
    eventually(Duration::from_secs(30), "the message is handled", || {
        probe.lines("calls") == vec![format!("ORDERS-{seq}")]
    });
}

/// Each trigger's answer is its own message in JetStream's duplicate window:
/// two triggers that answer the same message on one response topic both
/// publish (one was dropped as a copy of the other), and so do the answers to
/// a stream made again, whose sequence, and so its keys, starts over.
#[test]
fn answers_are_not_taken_for_copies_of_another_triggers_or_streams() {
    let nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    nats.create_stream("RESULTS", &["results.>"]);
    let s = server(&nats);
    let probe = Probe::start();
    s.function(
        "hello",
        "binary",
        "hello.sh",
        &echo(&probe, false),
        json!({}),
    );
    for name in ["orders", "audit"] {
        s.ok(
            "POST",
            "/v1/mqtriggers",
            Some(
                json!({"name": name, "function": "hello", "topic": "orders.new",
                        "respTopic": "results.ok"}),
            ),
        );
        wait_state(&s, name, "running", Duration::from_secs(20));
    }
    let settled = |name: &str, n: u64| {
        eventually(
            Duration::from_secs(30),
            &format!("{name} settled {n}"),
            || state(&s, name)["succeeded"].as_u64() == Some(n),
        );
    };
    nats.publish("orders.new", "a", &[("X-Order", "1")]);
    nats.publish("orders.new", "b", &[("X-Order", "2")]);
    settled("orders", 2);
    settled("audit", 2);
    assert_eq!(nats.messages("RESULTS", "results.ok").len(), 4);

    // The stream made again: its first message has the key the first had.
    s.call("DELETE", "/v1/mqtriggers/audit", None);
    nats.delete_stream("ORDERS");
    nats.create_stream("ORDERS", &["orders.>"]);
    wait_state(&s, "orders", "running", Duration::from_secs(30));
    nats.publish("orders.new", "c", &[("X-Order", "3")]);
    settled("orders", 3);
    let answers: Vec<String> = nats
        .messages("RESULTS", "results.ok")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(answers.len(), 5, "{answers:?}");
    assert!(answers.contains(&"3:c".to_string()), "{answers:?}");
}

/// A NATS address that takes connections and never answers: each try
/// times out. The status says the error, and since when, all the while the
/// next try runs, not `connecting` with the reason only between tries.
#[test]
fn a_server_that_never_answers_is_an_error_while_it_is_tried_again() {
    let nats = Nats::stopped();
    let s = server(&nats);
    s.function(
        "hello",
        "binary",
        "hello.sh",
        "#!/bin/sh\necho hi\n",
        json!({}),
    );
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", silent.local_addr().unwrap());
    let (tries, tried) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            held.push(conn);
            if tries.send(()).is_err() {
                return;
            }
        }
    });
    let limit = Duration::from_secs(30);
    s.ok(
        "POST",
        "/v1/mqtriggers",
        Some(
            json!({"name": "orders", "function": "hello", "topic": "orders.new",
                    "metadata": {"natsUrl": url}}),
        ),
    );
    tried.recv_timeout(limit).expect("a first try");
    let first = wait_state(&s, "orders", "error", limit);
    assert!(
        first["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot connect to NATS")),
        "{first}"
    );
    // The second try is under way (its connection taken, not yet timed out).
    tried.recv_timeout(limit).expect("a second try");
    let during = state(&s, "orders");
    assert_eq!(during["state"], "error", "{during}");
    assert_eq!(during["since"], first["since"], "{during}");
    assert!(
        during["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot connect to NATS") && m.contains("again")),
        "{during}"
    );
}

#[test]
fn bad_triggers_are_refused_with_what_to_do() {
    let nats = Nats::stopped();
    let s = server(&nats);
    s.function(
        "hello",
        "binary",
        "hello.sh",
        "#!/bin/sh\necho hi\n",
        json!({}),
    );
    let create = |body: Value| s.call("POST", "/v1/mqtriggers", Some(body));
    let (code, body) = create(json!({"name": "k", "function": "hello", "topic": "t",
                                     "messageQueueType": "kafka"}));
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid");
    let m = body["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("\"kafka\" is not supported") && m.contains("nats-jetstream"),
        "{m}"
    );
    let (code, body) = create(json!({"name": "k", "function": "nope", "topic": "t"}));
    assert_eq!(code, 409, "{body}");
    let (code, body) = create(json!({"name": "k", "function": "hello", "topic": "t",
                                     "maxRetries": -1}));
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maxRetries"),
        "{body}"
    );
    let (code, body) = create(json!({"name": "k", "function": "hello", "topic": "t",
                                     "respTopic": "t"}));
    assert_eq!(code, 400, "{body}");
    // A response subject the topic's wildcard takes in would loop too.
    let (code, body) = create(
        json!({"name": "k", "function": "hello", "topic": "orders.>",
                                     "respTopic": "orders.done"}),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = create(json!({"name": "k", "function": "hello", "topic": "t",
                                     "metadata": {"natsurl": "nats://x:1"}}));
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("natsUrl"),
        "{body}"
    );
    let (code, _) = s.call("GET", "/v1/mqtriggers/k", None);
    assert_eq!(code, 404);
    // The CLI: one line and a non-zero exit.
    let (rc, out, err) = s.cli(&[
        "mqt",
        "create",
        "k",
        "--topic",
        "t",
        "--function",
        "hello",
        "--mqtype",
        "kafka",
    ]);
    assert_ne!(rc, 0, "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("nats-jetstream"), "{err}");
    // In a namespace, with `update` changing only the flags given.
    let (rc, out, err) = s.cli(&[
        "mqt",
        "create",
        "k",
        "--topic",
        "t",
        "--function",
        "hello",
        "--metadata",
        "natsUrl=nats://127.0.0.1:1",
    ]);
    assert_eq!(rc, 0, "{out}{err}");
    let (rc, out, err) = s.cli(&[
        "mqt",
        "update",
        "k",
        "--maxretries",
        "3",
        "--metadata",
        "stream=S",
    ]);
    assert_eq!(rc, 0, "{out}{err}");
    let t = s.ok("GET", "/v1/mqtriggers/k", None);
    assert_eq!(t["maxRetries"], 3, "{t}");
    assert_eq!(t["topic"], "t", "{t}");
    assert_eq!(
        t["metadata"],
        json!({"natsUrl": "nats://127.0.0.1:1", "stream": "S"}),
        "{t}"
    );
    let (rc, out, _) = s.cli(&["mqt", "list", "-o", "json"]);
    assert_eq!(rc, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn a_fission_spec_applies_a_real_trigger() {
    let nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    let s = server(&nats);
    let probe = Probe::start();
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(s.cli_in(tmp.path(), &["spec", "init"]).0, 0);
    let specs = tmp.path().join("specs");
    std::fs::write(specs.join("hello.sh"), echo(&probe, false)).unwrap();
    std::fs::write(
        specs.join("fn.yaml"),
        "kind: Function\nname: hello\nenv: binary\ncode: hello.sh\n",
    )
    .unwrap();
    let doc = |retries: u32| {
        format!(
            "apiVersion: fission.io/v1\nkind: MessageQueueTrigger\nmetadata:\n  name: orders\nspec:\n  functionref:\n    type: name\n    name: hello\n  messageQueueType: nats-jetstream\n  topic: orders.new\n  respTopic: \"\"\n  maxRetries: {retries}\n  mqtkind: keda\n  metadata:\n    stream: ORDERS\n"
        )
    };
    std::fs::write(specs.join("mqt.yaml"), doc(1)).unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("created   MessageQueueTrigger orders"),
        "{out}"
    );
    let t = s.ok("GET", "/v1/mqtriggers/orders", None);
    assert_eq!(t["function"], "hello", "{t}");
    assert_eq!(t["maxRetries"], 1, "{t}");
    wait_state(&s, "orders", "running", Duration::from_secs(20));
    let seq = nats.publish("orders.new", "x", &[]);
    eventually(
        Duration::from_secs(30),
        "the applied trigger consumes",
        || probe.lines("calls") == vec![format!("ORDERS-{seq}")],
    );
    // Applied again unchanged, then changed, then destroyed.
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("everything up to date"), "{out}");
    std::fs::write(specs.join("mqt.yaml"), doc(4)).unwrap();
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("updated   MessageQueueTrigger orders"),
        "{out}"
    );
    assert_eq!(s.ok("GET", "/v1/mqtriggers/orders", None)["maxRetries"], 4);
    let (code, out, err) = s.cli_in(tmp.path(), &["spec", "destroy"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("deleted   MessageQueueTrigger orders"),
        "{out}"
    );
    let (code, _) = s.call("GET", "/v1/mqtriggers/orders", None);
    assert_eq!(code, 404);
    let (code, _) = s.call("GET", "/v1/functions/hello", None);
    assert_eq!(code, 404);
}

/// With `--dead-letter-subject`, an asynchronous invocation that ends dead is
/// also published there (its JSON record, through JetStream since a stream
/// holds the subject), besides staying in the dead-letter list.
#[test]
fn a_dead_letter_is_also_published_to_the_configured_subject() {
    let nats = Nats::start();
    nats.create_stream("DEAD", &["fusion.dead"]);
    let s = Server::start_with(&[
        ("FUSION_NATS_URL", &nats.url),
        ("FUSION_DEAD_LETTER_SUBJECT", "fusion.dead"),
    ]);
    s.env("binary", "binary", 1);
    s.function(
        "broken",
        "binary",
        "broken.sh",
        "#!/bin/sh\necho down >&2\nexit 1\n",
        json!({"invocation": {"retry": {"maxAttempts": 2, "backoffBase": "10ms", "backoffCap": "50ms"}}}),
    );
    let r = s
        .http
        .post(s.router_url("/fission-function/broken"))
        .header("X-Async", "true")
        .body("payload")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut published = Vec::new();
    eventually(
        Duration::from_secs(60),
        "the dead letter is published",
        || {
            published = nats.messages("DEAD", "fusion.dead");
            !published.is_empty()
        },
    );
    assert_eq!(published.len(), 1, "{published:?}");
    let letter: Value = serde_json::from_str(&published[0].payload).unwrap();
    assert_eq!(letter["id"], id.as_str(), "{letter}");
    assert_eq!(letter["status"], "dead", "{letter}");
    assert_eq!(
        letter["attempts"].as_array().map(Vec::len),
        Some(2),
        "{letter}"
    );
    assert_eq!(
        published[0].headers.get("X-Fusion-Invocation-Id"),
        Some(&id)
    );
    let listed = s.ok("GET", "/v1/deadletters", None);
    assert_eq!(listed["invocations"][0]["id"], id.as_str(), "{listed}");
}

/// An update while a message is in flight settles it (its answer published,
/// acked) before the new consumer starts, and hands back the messages held
/// but not started: none runs twice, none waits out its ack wait.
#[test]
fn an_update_settles_the_message_in_flight_and_hands_back_the_rest() {
    let nats = Nats::start();
    nats.create_stream("FLOW", &["flow.>"]);
    let s = server(&nats);
    let probe = Probe::start();
    s.function("slow", "binary", "slow.sh", &echo(&probe, true), json!({}));
    let (rc, out, err) = s.cli(&[
        "mqt",
        "create",
        "flow",
        "--mqtype",
        "nats-jetstream",
        "--topic",
        "flow.in",
        "--function",
        "slow",
        "--resptopic",
        "flow.out",
        "--concurrency",
        "1",
    ]);
    assert_eq!(rc, 0, "{out}{err}");
    wait_state(&s, "flow", "running", Duration::from_secs(20));
    const N: usize = 5;
    for i in 0..N {
        nats.publish("flow.in", &format!("m{i}"), &[("X-Order", &i.to_string())]);
    }
    eventually(
        Duration::from_secs(20),
        "the first message is in flight",
        || probe.lines("calls").len() == 1,
    );
    std::thread::scope(|scope| {
        let update = scope.spawn(|| s.cli(&["mqt", "update", "flow", "--maxretries", "3"]));
        // The old consumer is being stopped (the trigger shows no consumer
        // of its own meanwhile): let its call finish.
        eventually(
            Duration::from_secs(20),
            "the update stops the consumer",
            || state(&s, "flow")["message"] == "starting",
        );
        probe.open("go");
        let (rc, out, err) = update.join().unwrap();
        assert_eq!(rc, 0, "{out}{err}");
    });
    eventually(Duration::from_secs(60), "every message is answered", || {
        nats.messages("FLOW", "flow.out").len() >= N
    });
    let calls = counts(&probe.lines("calls"));
    assert_eq!(calls.len(), N, "{calls:?}");
    assert!(
        calls.values().all(|n| *n == 1),
        "each called once: {calls:?}"
    );
    let mut answers: Vec<String> = nats
        .messages("FLOW", "flow.out")
        .iter()
        .map(|m| m.payload.clone())
        .collect();
    // Each answered once. Not necessarily in order: a message handed back
    // during the stop comes again after a later one when NATS held it back
    // (it kept coming back to the stopping consumer), and order across a
    // consumer's restart is not promised.
    answers.sort();
    let want: Vec<String> = (0..N).map(|i| format!("{i}:m{i}")).collect();
    assert_eq!(answers, want, "each message answered once");
    let consumer = nats.consumer_state("FLOW", "fusion-mqt-default-flow");
    assert_eq!(consumer.ack_pending, 0, "{consumer:?}");
    // The status counts across the update: since the server started.
    eventually(Duration::from_secs(20), "every message counted", || {
        state(&s, "flow")["succeeded"] == N as u64
    });
}

/// A durable consumer is one trigger's: a second trigger naming it is
/// refused, and a delete leaves a consumer Fusion did not make.
#[test]
fn a_consumer_is_one_triggers_and_a_delete_leaves_the_users_own() {
    let nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    let s = server(&nats);
    let probe = Probe::start();
    s.function(
        "hello",
        "binary",
        "hello.sh",
        &echo(&probe, false),
        json!({}),
    );
    let create = |name: &str, consumer: &str| {
        s.cli(&[
            "mqt",
            "create",
            name,
            "--mqtype",
            "nats-jetstream",
            "--topic",
            "orders.new",
            "--function",
            "hello",
            "--metadata",
            &format!("consumer={consumer}"),
        ])
    };
    let (rc, out, err) = create("first", "shared");
    assert_eq!(rc, 0, "{out}{err}");
    // The function gets Fission's header for the topic.
    let topics = format!(
        "#!/bin/sh\n{}\n",
        probe.curl("/log/topics?$HTTP_X_FISSION_MQTRIGGER_TOPIC")
    );
    s.function("topics", "binary", "topics.sh", &topics, json!({}));
    let (rc, out, err) = s.cli(&[
        "mqt",
        "create",
        "headers",
        "--mqtype",
        "nats-jetstream",
        "--topic",
        "orders.seen",
        "--function",
        "topics",
    ]);
    assert_eq!(rc, 0, "{out}{err}");
    wait_state(&s, "headers", "running", Duration::from_secs(20));
    nats.publish("orders.seen", "x", &[]);
    eventually(Duration::from_secs(20), "the topic header arrives", || {
        probe.lines("topics") == ["orders.seen"]
    });
    let (rc, _, err) = create("second", "shared");
    assert_ne!(rc, 0);
    assert!(
        err.contains("consumer \"shared\" is trigger \"first\"'s"),
        "{err}"
    );
    // A consumer of the user's, named by a trigger that then goes.
    nats.create_consumer("ORDERS", "theirs");
    let (rc, out, err) = create("borrowing", "theirs");
    assert_eq!(rc, 0, "{out}{err}");
    let (rc, out, err) = s.cli(&["mqt", "delete", "borrowing"]);
    assert_eq!(rc, 0, "{out}{err}");
    wait_state(&s, "first", "running", Duration::from_secs(20));
    let (rc, out, err) = s.cli(&["mqt", "delete", "first"]);
    assert_eq!(rc, 0, "{out}{err}");
    // Fusion's own consumer went with its trigger; the user's stayed.
    let (rc, out, err) = s.cli(&["mqt", "delete", "headers"]);
    assert_eq!(rc, 0, "{out}{err}");
    assert_eq!(nats.consumers("ORDERS"), vec!["theirs"]);
}

/// Whether `n` requests wait in line for function `one` (its metric).
fn in_line(s: &Server, n: usize) -> bool {
    let (_, metrics) = s.call("GET", "/metrics", None);
    let line = format!("fusion_function_requests_waiting{{function=\"one\"}} {n}");
    metrics
        .as_str()
        .is_some_and(|m| m.lines().any(|l| l == line))
}

/// A server (with `env`) whose trigger `orders` delivers three messages at
/// once to function `one` of max scale 1: once it returns, the first is in
/// the function (held at the probe's gate `go`) and two wait in line.
fn three_for_one(nats: &Nats, env: &[(&str, &str)]) -> (Server, Probe) {
    nats.create_stream("ORDERS", &["orders.>"]);
    nats.create_stream("RESULTS", &["results.>"]);
    let mut vars = vec![("FUSION_NATS_URL", nats.url.as_str())];
    vars.extend_from_slice(env);
    let s = Server::start_with(&vars);
    s.env("binary", "binary", 1);
    let probe = Probe::start();
    s.function(
        "one",
        "binary",
        "one.sh",
        &echo(&probe, true),
        json!({"max_scale": 1}),
    );
    s.ok(
        "POST",
        "/v1/mqtriggers",
        Some(json!({
            "name": "orders", "function": "one", "topic": "orders.new",
            "respTopic": "results.ok", "errorTopic": "results.failed",
            "maxRetries": 0, "concurrency": 3,
        })),
    );
    wait_state(&s, "orders", "running", Duration::from_secs(20));
    for i in 0..3 {
        nats.publish(
            "orders.new",
            &format!("m{i}"),
            &[("X-Order", &i.to_string())],
        );
    }
    eventually(Duration::from_secs(30), "two deliveries in line", || {
        in_line(&s, 2)
    });
    eventually(Duration::from_secs(30), "the first in the function", || {
        probe.lines("calls").len() == 1
    });
    (s, probe)
}

/// A trigger whose concurrency is above its function's max scale: the
/// deliveries past it wait in line for an instance (the function's timeout,
/// not the router's lease wait) instead of spending their attempts on 429s.
#[test]
fn deliveries_past_the_functions_max_scale_wait_their_turn() {
    let nats = Nats::start();
    // A router caller would be turned away after 1 ms.
    let (s, probe) = three_for_one(&nats, &[("FUSION_LEASE_WAIT_MS", "1")]);
    probe.open("go");
    eventually(Duration::from_secs(30), "every answer is published", || {
        nats.messages("RESULTS", "results.ok").len() == 3
    });
    assert!(nats.messages("RESULTS", "results.failed").is_empty());
    assert_eq!(state(&s, "orders")["failed"], 0);
}

/// Deliveries waiting in line for the function when their trigger stops (a
/// delete, an update, the server's stop) are handed back to NATS, not called
/// by the stopping consumer: only the call that had begun is finished.
#[test]
fn deliveries_waiting_for_capacity_are_handed_back_at_a_stop() {
    let nats = Nats::start();
    let (s, probe) = three_for_one(&nats, &[]);
    std::thread::scope(|scope| {
        let delete = scope.spawn(|| s.cli(&["mqt", "delete", "orders"]));
        // The two in line leave it (handed back) while the first still runs.
        eventually(Duration::from_secs(30), "the line is left", || {
            in_line(&s, 0)
        });
        probe.open("go");
        let (rc, out, err) = delete.join().unwrap();
        assert_eq!(rc, 0, "{out}{err}");
    });
    assert_eq!(
        probe.lines("calls").len(),
        1,
        "only the call that had begun"
    );
    eventually(Duration::from_secs(30), "its answer is published", || {
        nats.messages("RESULTS", "results.ok").len() == 1
    });
}

/// A trigger deleted while NATS is away leaves no consumer behind once NATS
/// is back, and one created again under its name starts as its own settings
/// say rather than from what the deleted one left.
#[test]
fn a_trigger_deleted_while_nats_is_away_leaves_nothing_behind() {
    let mut nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    let mut s = server(&nats);
    let probe = Probe::start();
    s.function(
        "hello",
        "binary",
        "hello.sh",
        &echo(&probe, false),
        json!({}),
    );
    let trigger = |policy: &str| {
        json!({"name": "orders", "function": "hello", "topic": "orders.new",
               "metadata": {"deliverPolicy": policy}})
    };
    s.ok("POST", "/v1/mqtriggers", Some(trigger("all")));
    wait_state(&s, "orders", "running", Duration::from_secs(20));
    assert_eq!(nats.consumers("ORDERS"), vec!["fusion-mqt-default-orders"]);

    nats.kill();
    // Said at once, not after the pull's missed heartbeats.
    eventually(Duration::from_secs(10), "the lost connection said", || {
        let st = state(&s, "orders");
        st["state"] == "connecting"
            && st["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("lost the connection to NATS"))
    });
    let (status, _) = s.call("DELETE", "/v1/mqtriggers/orders", None);
    assert_eq!(status, 204);
    // Kept to do across a restart of the server.
    s.kill();
    s.launch();
    nats.launch();
    eventually(Duration::from_secs(30), "the consumer deleted", || {
        nats.consumers("ORDERS").is_empty()
    });

    // Deleted while NATS is away again, then created anew with another
    // deliver policy (which NATS changes on no consumer) before it is back.
    s.ok("POST", "/v1/mqtriggers", Some(trigger("all")));
    wait_state(&s, "orders", "running", Duration::from_secs(20));
    nats.kill();
    assert_eq!(s.call("DELETE", "/v1/mqtriggers/orders", None).0, 204);
    s.ok("POST", "/v1/mqtriggers", Some(trigger("new")));
    nats.launch();
    wait_state(&s, "orders", "running", Duration::from_secs(30));
    assert_eq!(nats.consumers("ORDERS"), vec!["fusion-mqt-default-orders"]);
    // And it consumes.
    nats.publish("orders.new", "after", &[("X-Order", "1")]);
    eventually(Duration::from_secs(30), "the message called", || {
        probe.lines("calls").len() == 1
    });
    assert_eq!(state(&s, "orders")["state"], "running");
}
