//! `fusion up`: start the server, apply the example specs and print URLs to try.

/// `println!` that a reader gone (`fusion up | head`) does not turn into a
/// panic: the server goes on.
macro_rules! say {
    () => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` likewise, for stderr.
macro_rules! esay {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

use std::path::PathBuf;

use anyhow::Result;
use serde_json::Value;

use crate::client::Client;
use crate::server::{self, ServerArgs};
use crate::spec;

pub(super) async fn up(server: ServerArgs, examples: PathBuf) -> Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let ca_cert = server.tls_cert.clone();
    let serve = server::run(server, move |r| {
        let _ = tx.send((
            r.router_addr,
            r.api_addr,
            r.scheme,
            r.token.clone(),
            r.token_file.clone(),
            r.isolation.clone(),
        ));
    });
    tokio::pin!(serve);
    let ready = tokio::select! {
        r = &mut serve => return r,
        a = rx => match a {
            Ok(a) => a,
            // Not announced: stopped by a signal while it started.
            Err(_) => return serve.await,
        },
    };
    let (router, api, scheme, token, token_file, isolation) = ready;
    let router = format!("{scheme}://{router}");
    let api = format!("{scheme}://{api}");
    let client = Client::new(&api, Some(token.as_str().to_string()), ca_cert.as_deref())?;
    // What curl needs to trust a self-signed certificate.
    let cacert = ca_cert
        .as_deref()
        .map(|p| format!(" --cacert {}", shell_quote(&p.display().to_string())))
        .unwrap_or_default();
    let applied = async {
        let mut not_applied = None;
        if examples.is_dir() {
            let source = spec::Source {
                path: examples.clone(),
                namespace: "default".into(),
            };
            let opts = spec::ApplyOpts {
                delete: false,
                allow_conflicts: false,
                wait: false,
            };
            match spec::apply(&client, &source, opts).await {
                Ok(()) => say!(),
                // Said with the URLs below, where it is read, not among the
                // server's log lines.
                Err(e) => not_applied = Some(format!("{e:#}")),
            }
        } else {
            esay!("note: {} not found; nothing applied", examples.display());
        }
        let routes: Vec<Value> = client.get("/v1/routes").await.unwrap_or_default();
        say!("Fusion is up.");
        if let Some(why) = &not_applied {
            say!(
                "  NOTE: {} was not applied (the server runs without it): {why}",
                examples.display()
            );
        }
        say!("  router: {router}");
        say!("  API:    {api}   (export FUSION_URL={api})");
        match isolation.backend {
            "process" => say!("  WARNING: no isolation: {}", isolation.summary),
            _ => say!("  instances: {}", isolation.summary),
        }
        say!("The API needs its token (the CLI reads FUSION_TOKEN, else the token file of FUSION_DATA_DIR, default ./.fusion):");
        say!(
            "  export FUSION_TOKEN=$(cat {})",
            shell_quote(&token_file.display().to_string())
        );
        if let Some(cert) = &ca_cert {
            // So that the CLI trusts a self-signed certificate too.
            say!(
                "  export FUSION_CA_CERT={}",
                shell_quote(&cert.display().to_string())
            );
        }
        say!("  curl{cacert} -H \"Authorization: Bearer $FUSION_TOKEN\" {api}/v1/functions");
        if !routes.is_empty() {
            say!("Try:");
            // A few, each as its route takes it (a POST-only route with -d).
            const SHOWN: usize = 8;
            for r in routes.iter().take(SHOWN) {
                let url = r["url"].as_str().or(r["prefix"].as_str()).unwrap_or("/");
                let methods: Vec<&str> = r["methods"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let how = match methods.as_slice() {
                    [] => "",
                    m if m.contains(&"GET") => "",
                    [m, ..] if *m == "POST" => " -d 'hello'",
                    [m, ..] => &format!(" -X {m}"),
                };
                // A template whose parameters no plain value fits gets none.
                if let Some(path) = triggers::table::Template::example(url) {
                    say!(
                        "  curl{cacert}{how} {}",
                        shell_quote(&format!("{router}{path}"))
                    );
                }
            }
            if routes.len() > SHOWN {
                say!(
                    "  ... and {} more routes (fusion route list)",
                    routes.len() - SHOWN
                );
            }
        }
        let workflows: Vec<Value> = client.get("/v1/workflows").await.unwrap_or_default();
        if !workflows.is_empty() {
            let names: Vec<&str> = workflows
                .iter()
                .filter_map(|w| w["name"].as_str())
                .collect();
            say!("Workflows, invoked like functions: {}", names.join(", "));
            // `echo` shows the input coming back; `curl -d` data is read as text.
            let example = names.iter().find(|n| **n == "echo").unwrap_or(&names[0]);
            say!("  curl{cacert} -d 'hello' {router}/fission-function/{example}");
            if examples.is_dir() {
                say!("  (every example with its answer: workflow-examples/README.md)");
            }
            say!("  fusion run list        # what ran, with every task");
        }
        say!("Stop with Ctrl-C.");
    };
    tokio::select! {
        r = &mut serve => return r,
        _ = applied => {}
    }
    serve.await
}

/// `text` as one shell word: as it is when it has only safe characters, else in
/// single quotes.
pub(super) fn shell_quote(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@,".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_words() {
        assert_eq!(super::shell_quote(".fusion/token"), ".fusion/token");
        assert_eq!(super::shell_quote("/a b/it's"), "'/a b/it'\\''s'");
    }
}
