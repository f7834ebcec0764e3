//! `fusion wf graph` and `fusion wf runs graph`: a workflow as a Mermaid
//! flowchart (as Fission's `workflow graph` prints it), for either format;
//! for a run, each task or state coloured by what the run did with it.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

/// What a run did with a task or state, as the chart colours it.
pub(super) type Statuses = BTreeMap<String, String>;

/// The flowchart of a workflow's `spec` as the API gives it (`format` says
/// which), with `statuses` (by task or state name) coloured when given.
pub(super) fn mermaid(format: &str, spec: &Value, statuses: Option<&Statuses>) -> String {
    let mut chart = Chart::default();
    chart.line("flowchart TD");
    if format == "rfc-0022" {
        chart.machine(spec, "", statuses);
    } else {
        chart.tasks(spec, statuses);
    }
    if statuses.is_some() {
        for (class, style) in [
            ("succeeded", "fill:#d4edda,stroke:#28a745"),
            ("failed", "fill:#f8d7da,stroke:#dc3545"),
            ("running", "fill:#cce5ff,stroke:#007bff"),
            (
                "cancelled",
                "fill:#e2e3e5,stroke:#6c757d,stroke-dasharray:4",
            ),
            ("unreached", "fill:#ffffff,stroke:#adb5bd,color:#adb5bd"),
        ] {
            chart.line(&format!("  classDef {class} {style}"));
        }
    }
    chart.out
}

#[derive(Default)]
struct Chart {
    out: String,
    /// Node ids by their full name (`Fan/Check` inside a branch).
    ids: BTreeMap<String, String>,
}

impl Chart {
    fn line(&mut self, l: &str) {
        self.out.push_str(l);
        self.out.push('\n');
    }

    /// The node id of `name`: `n0`, `n1`... (names may hold any character).
    fn id(&mut self, name: &str) -> String {
        let next = format!("n{}", self.ids.len());
        self.ids.entry(name.to_string()).or_insert(next).clone()
    }

    /// A node, shaped and coloured.
    fn node(&mut self, name: &str, label: &str, shape: (&str, &str), class: Option<&str>) {
        let id = self.id(name);
        let mut l = format!("  {id}{}\"{}\"{}", shape.0, escape(label), shape.1);
        if let Some(c) = class {
            let _ = write!(l, ":::{c}");
        }
        self.line(&l);
    }

    fn edge(&mut self, from: &str, to: &str, label: Option<&str>, dotted: bool) {
        let (a, b) = (self.id(from), self.id(to));
        let arrow = if dotted { "-.->" } else { "-->" };
        match label {
            Some(t) => self.line(&format!("  {a} {arrow}|\"{}\"| {b}", escape(t))),
            None => self.line(&format!("  {a} {arrow} {b}")),
        }
    }

    /// Fission Workflows' task graph: each task with what it runs, an edge
    /// from each task it requires; the output task drawn twice as thick.
    fn tasks(&mut self, spec: &Value, statuses: Option<&Statuses>) {
        let output = spec["output"].as_str().unwrap_or_default();
        let tasks = spec["tasks"].as_object().cloned().unwrap_or_default();
        for (name, task) in &tasks {
            let run = match &task["run"] {
                Value::String(r) => r.clone(),
                Value::Null => "noop".to_string(),
                other => other.to_string(),
            };
            let label = if name == output {
                format!("{name}\n{run}\n(output)")
            } else {
                format!("{name}\n{run}")
            };
            let shape = if name == output {
                ("[[", "]]")
            } else {
                ("[", "]")
            };
            let class = statuses.map(|s| class_of(s.get(name)));
            self.node(name, &label, shape, class);
        }
        for (name, task) in &tasks {
            // Each requirement once, however often it is written.
            let mut required: Vec<&str> = task["requires"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            required.sort_unstable();
            required.dedup();
            for r in required {
                self.edge(r, name, None, false);
            }
            // Its fallback, as a catch is drawn: dotted.
            if let Some(f) = task["onFailure"]
                .as_str()
                .filter(|f| tasks.contains_key(*f))
            {
                self.edge(name, f, Some("on failure"), true);
            }
        }
    }

    /// An RFC-0022 state machine (or a branch of one, its names under
    /// `prefix`): a start, each state shaped by its type, its transitions.
    fn machine(&mut self, spec: &Value, prefix: &str, statuses: Option<&Statuses>) {
        let full = |s: &str| format!("{prefix}{s}");
        let start = full("(start)");
        let end = full("(end)");
        self.node(&start, "start", ("((", "))"), None);
        let states = spec["states"].as_object().cloned().unwrap_or_default();
        let mut ends = false;
        for (name, state) in &states {
            let kind = state["type"].as_str().unwrap_or("?");
            let label = match kind {
                "Task" => {
                    let f = state.pointer("/function/name").and_then(Value::as_str);
                    format!("{name}\nTask {}", f.unwrap_or_default())
                }
                other => format!("{name}\n{other}"),
            };
            let shape = match kind {
                "Choice" => ("{", "}"),
                "Parallel" | "Map" => ("[[", "]]"),
                "Wait" => ("([", "])"),
                "Succeed" | "Fail" => ("((", "))"),
                _ => ("[", "]"),
            };
            let class = statuses.map(|s| class_of(s.get(name)));
            self.node(&full(name), &label, shape, class);
            // A Parallel's branches and a Map's iterator, as sub-charts.
            for (i, branch) in state["branches"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let inner = format!("{prefix}{name}/{i}/");
                let id = self.id(&full(name));
                self.line(&format!(
                    "  subgraph {id}_{i} [\"{} branch {i}\"]",
                    escape(name)
                ));
                self.machine(branch, &inner, statuses);
                self.line("  end");
                self.edge(&full(name), &format!("{inner}(start)"), None, true);
            }
        }
        if let Some(first) = spec["startAt"].as_str() {
            self.edge(&start, &full(first), None, false);
        }
        for (name, state) in &states {
            if let Some(n) = state["next"].as_str() {
                self.edge(&full(name), &full(n), None, false);
            }
            for (i, rule) in state["choices"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(n) = rule["next"].as_str() {
                    self.edge(
                        &full(name),
                        &full(n),
                        Some(&format!("choice {}", i + 1)),
                        false,
                    );
                }
            }
            if let Some(n) = state["default"].as_str() {
                self.edge(&full(name), &full(n), Some("default"), false);
            }
            for route in state["catch"].as_array().into_iter().flatten() {
                if let Some(n) = route["next"].as_str() {
                    let on = route["errorType"].as_str().unwrap_or("error");
                    self.edge(&full(name), &full(n), Some(on), true);
                }
            }
            let terminal = state["end"].as_bool() == Some(true)
                || matches!(state["type"].as_str(), Some("Succeed" | "Fail"));
            if terminal {
                if !ends {
                    self.node(&end, "end", ("((", "))"), None);
                    ends = true;
                }
                self.edge(&full(name), &end, None, false);
            }
        }
    }
}

/// The class of what a run did with a node (none: it never got there).
fn class_of(status: Option<&String>) -> &'static str {
    match status.map(String::as_str) {
        Some("succeeded") => "succeeded",
        Some("failed") => "failed",
        Some("cancelled") => "cancelled",
        // Waiting for what it requires: not reached yet.
        Some("pending") | None => "unreached",
        Some(_) => "running",
    }
}

/// A label as Mermaid reads it between quotes: what it would take as markup,
/// an entity or a directive (`"`, `<`, `>`, `&`, `#`, `%`) as entity codes, a
/// newline as a line break.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '&' => out.push_str("#amp;"),
            '#' => out.push_str("#35;"),
            // `%%` starts a directive or a comment anywhere in a chart.
            '%' => out.push_str("#37;"),
            '\n' => out.push_str("<br/>"),
            c => out.push(c),
        }
    }
    out
}

/// What a run did with each task (Fission Workflows: the workflow's own
/// tasks, by name; those inside a `foreach` or a called workflow are not
/// drawn) or state (RFC-0022: its steps are `NNNNNN-<state>`, in branches
/// under their parent's), the latest visit of each.
pub(super) fn run_statuses(format: &str, run: &Value) -> Statuses {
    let machine = format == "rfc-0022";
    let mut tasks: Vec<&Value> = run["tasks"].as_array().into_iter().flatten().collect();
    tasks.sort_by_key(|t| t["started_at"].as_u64().unwrap_or(u64::MAX));
    let mut out = Statuses::new();
    for t in tasks {
        let Some(id) = t["id"].as_str() else { continue };
        let name = if machine {
            // The step's state: the last segment of its id, its number off.
            let last = id.rsplit('/').next().unwrap_or(id);
            match last.split_once('-') {
                Some((n, state)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => state,
                _ => last,
            }
        } else if t["scope"].is_null() {
            id
        } else {
            continue;
        };
        // A task the run's end cancelled before it ever started was never
        // reached.
        let status = match t["status"].as_str() {
            Some("cancelled") if t["started_at"].is_null() => "pending",
            Some(s) => s,
            None => continue,
        };
        out.insert(name.to_string(), status.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_task_graph_has_a_node_per_task_and_an_edge_per_requirement() {
        let spec = json!({"output": "B", "tasks": {
            "A": {"run": "fortune"},
            "B": {"run": "whalesay", "requires": ["A"]},
        }});
        let chart = mermaid("fission-workflows", &spec, None);
        assert_eq!(
            chart,
            "flowchart TD\n  n0[\"A<br/>fortune\"]\n  n1[[\"B<br/>whalesay<br/>(output)\"]]\n  n0 --> n1\n"
        );
        // A fallback's edge; a name Mermaid would read as markup, escaped.
        let spec = json!({"output": "Charge", "tasks": {
            "Charge": {"run": "charge", "onFailure": "A<b>#1"},
            "A<b>#1": {"run": "refund"},
        }});
        let chart = mermaid("fission-workflows", &spec, None);
        assert!(
            chart.contains("n0[\"A#lt;b#gt;#35;1<br/>refund\"]"),
            "{chart}"
        );
        assert!(chart.contains("n1 -.->|\"on failure\"| n0"), "{chart}");
        let spec = json!({"output": "B", "tasks": {
            "%%{init}%%": {"run": "noop"},
            "B": {"run": "noop", "requires": ["%%{init}%%", "%%{init}%%"]},
        }});
        let chart = mermaid("fission-workflows", &spec, None);
        assert!(!chart.contains('%'), "{chart}");
        assert_eq!(chart.matches("-->").count(), 1, "{chart}");
    }

    #[test]
    fn a_state_machine_has_its_transitions_and_a_run_colours_its_states() {
        let spec = json!({"startAt": "Check", "states": {
            "Check": {"type": "Choice", "choices": [{"next": "Charge"}], "default": "Reject"},
            "Charge": {"type": "Task", "function": {"name": "charge"},
                "catch": [{"errorType": "PaymentDeclined", "next": "Reject"}], "end": true},
            "Reject": {"type": "Fail"},
        }});
        let run = json!({"tasks": [
            {"id": "000001-Check", "status": "succeeded", "started_at": 1},
            {"id": "000002-Charge", "status": "failed", "started_at": 2},
        ]});
        let chart = mermaid("rfc-0022", &spec, Some(&run_statuses("rfc-0022", &run)));
        for want in [
            "n1[\"Charge<br/>Task charge\"]:::failed",
            "n2{\"Check<br/>Choice\"}:::succeeded",
            "n3((\"Reject<br/>Fail\")):::unreached",
            "n0 --> n2",
            "n2 -->|\"choice 1\"| n1",
            "n2 -->|\"default\"| n3",
            "n1 -.->|\"PaymentDeclined\"| n3",
            "classDef failed",
        ] {
            assert!(chart.contains(want), "{want}\n{chart}");
        }
    }
}
