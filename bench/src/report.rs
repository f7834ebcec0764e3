//! The results: the JSON document (figures, machine, git commit, targets with
//! pass/fail) and the table printed at the end of a run.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::faas::{BackendResult, Cold, CpuPerRequest, Floor, LangResult};
use crate::stats::{round3, Summary};
use crate::workflows::EngineResults;
use crate::Args;

/// The targets on the 2-core machine (goals reported, never asserted).
pub const MAX_ROUTER_OVERHEAD_P50_MS: f64 = 0.3;
pub const MIN_THROUGHPUT_RATIO: f64 = 0.8;
pub const MAX_COLD_POOL_P50_MS: f64 = 20.0;
/// From an empty pool: 150 ms for plain processes (the first issue), 250 ms for
/// containers (issue 6: runc's start comes on top).
pub fn max_cold_empty_p50_ms(backend: &str) -> f64 {
    if backend == "container" {
        250.0
    } else {
        150.0
    }
}

/// Now in UTC: (`2025-11-27T05:30:00Z`, `2025-11-27T05-30-00Z` for file names).
pub fn utc_now() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let (hh, mm, ss) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    (
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z"),
        format!("{y:04}-{m:02}-{d:02}T{hh:02}-{mm:02}-{ss:02}Z"),
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> Value {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| {
            s.split_whitespace()
                .take(3)
                .filter_map(|x| x.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .map_or(Value::Null, |v| json!(v))
}

fn machine() -> Value {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string());
    let mem_total_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024);
    json!({
        "nproc": nproc,
        "cpu_model": model,
        "kernel": kernel,
        "mem_total_mb": mem_total_mb,
        "python": version("python3", &["--version"]),
        "node": version("node", &["--version"]),
    })
}

fn version(program: &str, args: &[&str]) -> Value {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text).trim().to_string()
        })
        .map_or(Value::Null, Value::String)
}

fn git(args: &Args) -> Value {
    let root = crate::workspace_root();
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(commit) = &args.fusion_commit {
        return json!({
            "commit": commit,
            "given_by": "--fusion-commit",
            "checkout_head": run(&["rev-parse", "--short", "HEAD"]),
        });
    }
    // Uncommitted changes in what the fusion binary is built from.
    let dirty = run(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "pool-manager",
        "engine",
        "executor",
        "environments",
        "Cargo.toml",
    ])
    .map(|s| s.lines().map(|l| l.trim().to_string()).collect::<Vec<_>>());
    json!({
        "commit": run(&["rev-parse", "--short", "HEAD"]),
        "uncommitted_in_fusion_sources": dirty,
    })
}

fn cold_json(c: &Option<Cold>) -> Value {
    match c {
        None => Value::Null,
        Some(c) => {
            let mut v = c.total.json();
            v["runtime_load"] = c.runtime_load.map_or(Value::Null, |s| s.json());
            v["samples_ms"] = json!(c.samples_ms);
            v
        }
    }
}

fn floor_json(f: &Option<Floor>) -> Value {
    f.as_ref().map_or(Value::Null, |f| {
        let mut v = f.summary.json();
        v["command"] = json!(f.command);
        v["path"] = json!(f.path);
        v
    })
}

pub fn target(name: &str, lang: &str, limit: f64, value: Option<f64>, at_most: bool) -> Value {
    let pass = value.map(|v| if at_most { v <= limit } else { v >= limit });
    json!({
        "target": name,
        "language": lang,
        "limit": limit,
        "comparison": if at_most { "at most" } else { "at least" },
        "value": value.map(round3),
        "pass": pass,
    })
}

/// The figures of one backend's languages, and their targets (each marked with
/// the backend).
fn backend_json(b: &BackendResult, args: &Args, targets: &mut Vec<Value>) -> Value {
    let mut langs = serde_json::Map::new();
    for r in &b.langs {
        let warm = r.warm.as_ref().map(|w| {
            json!({
                "instance": w.instance,
                "backend": w.backend,
                "instance_cpu_source": w.instance_cpu_source,
                "instances_after": w.instances_after,
                "levels": w.levels.iter().map(|l| {
                    let mut routed = l.routed.json();
                    routed["rps"] = json!(l.routed_rps.round());
                    let mut direct = l.direct.json();
                    direct["rps"] = json!(l.direct_rps.round());
                    let cpu = |c: &CpuPerRequest| json!({
                        "client": round3(c.client),
                        "server": round3(c.server),
                        "instance": round3(c.instance),
                        "total": round3(c.client + c.server + c.instance),
                    });
                    routed["cpu_us_per_request"] = cpu(&l.routed_cpu);
                    direct["cpu_us_per_request"] = cpu(&l.direct_cpu);
                    json!({
                        "clients": l.clients,
                        "routed": routed,
                        "direct": direct,
                        "overhead_p50_ms": round3(l.routed.p50 - l.direct.p50),
                        "overhead_mean_ms": round3(l.routed.mean - l.direct.mean),
                        "throughput_ratio": round3(l.routed_rps / l.direct_rps),
                    })
                }).collect::<Vec<_>>(),
            })
        });
        langs.insert(
            r.lang.to_string(),
            json!({
                "warm": warm,
                "cold_from_pool": cold_json(&r.cold_pool),
                "cold_from_empty_pool": cold_json(&r.cold_empty),
                "runtime_start_floor": floor_json(&r.start_floor),
                "runtime_start_floor_resolved": floor_json(&r.start_floor_resolved),
            }),
        );
        let level = |clients: usize| {
            r.warm
                .as_ref()
                .and_then(|w| w.levels.iter().find(|l| l.clients == clients))
        };
        let mut push = |mut t: Value| {
            t["backend"] = json!(b.backend);
            targets.push(t);
        };
        push(target(
            "router overhead p50 (ms), 1 client",
            r.lang,
            MAX_ROUTER_OVERHEAD_P50_MS,
            level(1).map(|l| l.routed.p50 - l.direct.p50),
            true,
        ));
        push(target(
            &format!("throughput routed/direct, {} clients", args.clients),
            r.lang,
            MIN_THROUGHPUT_RATIO,
            level(args.clients).map(|l| l.routed_rps / l.direct_rps),
            false,
        ));
        push(target(
            "cold start from the warm pool p50 (ms)",
            r.lang,
            MAX_COLD_POOL_P50_MS,
            r.cold_pool.as_ref().map(|c| c.total.p50),
            true,
        ));
        push(target(
            "cold start from an empty pool p50 (ms)",
            r.lang,
            max_cold_empty_p50_ms(&b.backend),
            r.cold_empty.as_ref().map(|c| c.total.p50),
            true,
        ));
    }
    json!({ "languages": langs })
}

pub fn document(
    faas: &[BackendResult],
    engine: &EngineResults,
    args: &Args,
    run: Value,
    errors: &[String],
) -> Value {
    let mut backends = serde_json::Map::new();
    let mut targets = Vec::new();
    for b in faas {
        backends.insert(b.backend.clone(), backend_json(b, args, &mut targets));
    }
    targets.extend(engine.targets());
    json!({
        "schema": 2,
        "run": run,
        "machine": machine(),
        "git": git(args),
        "backends": backends,
        "workflows": if engine.is_empty() { Value::Null } else { engine.json() },
        "targets": targets,
        "errors": errors,
    })
}

fn row(out: &mut String, label: &str, s: &Summary, rps: Option<f64>) {
    let rps = rps.map_or(String::new(), |r| format!("{r:>9.0}"));
    let _ = writeln!(
        out,
        "  {label:<28} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {rps}",
        s.p50, s.p95, s.p99, s.mean
    );
}

pub fn table(faas: &[BackendResult], engine: &EngineResults, doc: &Value) -> String {
    let mut out = String::new();
    let m = &doc["machine"];
    let _ = writeln!(
        out,
        "\nFusion benchmark — {} x {}, kernel {}, commit {}",
        m["nproc"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        doc["git"]["commit"].as_str().unwrap_or("?"),
    );
    for b in faas {
        let _ = writeln!(out, "\n=== FaaS on the {} backend ===", b.backend);
        faas_table(&mut out, &b.langs);
    }
    engine.table(&mut out);
    let _ = writeln!(out, "\nTargets");
    for t in doc["targets"].as_array().into_iter().flatten() {
        let verdict = match t["pass"].as_bool() {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a ",
        };
        let value = t["value"]
            .as_f64()
            .map_or("not measured".to_string(), |v| format!("{v:.3}"));
        let _ = writeln!(
            out,
            "  {verdict} {:<9} {:<7} {:<40} {value:>12} ({} {})",
            t["backend"].as_str().unwrap_or(""),
            t["language"].as_str().unwrap_or(""),
            t["target"].as_str().unwrap_or(""),
            t["comparison"].as_str().unwrap_or(""),
            t["limit"],
        );
    }
    out
}

fn faas_table(out: &mut String, results: &[LangResult]) {
    let _ = writeln!(
        out,
        "\nWarm requests (ms)                 p50      p95      p99     mean     req/s"
    );
    for r in results {
        let Some(w) = &r.warm else {
            let _ = writeln!(out, "  {}: not measured", r.lang);
            continue;
        };
        for l in &w.levels {
            let c = if l.clients == 1 { "client" } else { "clients" };
            row(
                out,
                &format!("{} {} {c} routed", r.lang, l.clients),
                &l.routed,
                Some(l.routed_rps),
            );
            row(
                out,
                &format!("{} {} {c} direct", r.lang, l.clients),
                &l.direct,
                Some(l.direct_rps),
            );
            let _ = writeln!(
                out,
                "  {:<28} overhead p50 {:+.3} ms, mean {:+.3} ms; throughput {:.0}% of direct",
                "",
                l.routed.p50 - l.direct.p50,
                l.routed.mean - l.direct.mean,
                100.0 * l.routed_rps / l.direct_rps
            );
            let (rc, dc) = (&l.routed_cpu, &l.direct_cpu);
            let _ = writeln!(
                out,
                "  {:<28} CPU us/request routed: client {:.0} + server {:.0} + instance {:.0} = {:.0}; direct: {:.0} + {:.0} + {:.0} = {:.0}",
                "",
                rc.client, rc.server, rc.instance, rc.client + rc.server + rc.instance,
                dc.client, dc.server, dc.instance, dc.client + dc.server + dc.instance,
            );
        }
    }
    let _ = writeln!(
        out,
        "\nCold starts, runtime start floor (ms)\n                                   p50      p95      p99     mean   runtime load p50"
    );
    for r in results {
        for (what, c) in [
            ("from pool", &r.cold_pool),
            ("from empty pool", &r.cold_empty),
        ] {
            let label = format!("{} {what}", r.lang);
            match c {
                None => {
                    let _ = writeln!(out, "  {label:<28} not measured");
                }
                Some(c) => {
                    let load = c
                        .runtime_load
                        .map_or("-".to_string(), |s| format!("{:.3}", s.p50));
                    let s = &c.total;
                    let _ = writeln!(
                        out,
                        "  {label:<28} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {load:>18}",
                        s.p50, s.p95, s.p99, s.mean
                    );
                }
            }
        }
        for (what, f) in [
            ("floor, PATH name", &r.start_floor),
            ("floor, real exe", &r.start_floor_resolved),
        ] {
            if let Some(f) = f {
                row(out, &format!("{} {what}", r.lang), &f.summary, None);
            }
        }
    }
    for r in results {
        for f in [&r.start_floor, &r.start_floor_resolved]
            .into_iter()
            .flatten()
        {
            let program = f.command.split(' ').next().unwrap_or("");
            let _ = writeln!(
                out,
                "  ({} floor: `{}`, {program} is {})",
                r.lang,
                f.command,
                f.path.as_deref().unwrap_or("?")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_419), (2025, 11, 27));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
