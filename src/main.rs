//! `fusion`: the server (`fusion server`, `fusion up`) and its command-line client
//! (`fusion env|fn|route|secret|configmap|spec|wf|run ...`, talking to the API at `FUSION_URL`).

/// mimalloc rather than glibc's malloc: under load a quarter of the engine's
/// CPU went to glibc's allocator (sled clones and frees whole tree nodes as it
/// updates them); see docs/benchmarks.md, "The durable hot path".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod access_log;
mod api;
mod api_pkg;
mod backup;
mod cli;
mod client;
mod declared;
mod fetcher;
mod guard;
mod health;
mod init;
#[cfg(feature = "kubernetes")]
mod kube;
mod listen;
mod process_metrics;
mod runtime_binary;
mod server;
mod spec;
mod tls;
mod token;
mod workflows;

use clap::Parser;

/// The exit status of a process killed by SIGPIPE (128 + 13), as a shell
/// reports `fusion run list | head -1`.
const BROKEN_PIPE_EXIT: i32 = 141;

/// Whether printing failed because the reader went away (`| head`).
fn is_broken_pipe(message: &str) -> bool {
    message.contains("Broken pipe") || message.contains("os error 32")
}

fn main() {
    // A reader that stops early (`fusion run list | head -3`) ends the CLI
    // quietly, as other command-line tools end, not with println!'s panic.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && is_broken_pipe(message) {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default_hook(info);
    }));
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // A mistake on the command line: one line, as every other error.
            eprintln!("{}", cli::usage_error(&e.render().to_string()));
            std::process::exit(2);
        }
    };
    if let Some(command) = args.init_command() {
        init::run(command);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(cli::run(args));
    // Do not wait for stray blocking work (a log follower, a stdin watcher).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    if let Err(e) = result {
        let broken_pipe = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            // An error that already says its cause (`...: Read-only file
            // system`) is not followed by it again.
            let cause = cause.to_string();
            if !msg.contains(&cause) {
                msg.push_str(": ");
                msg.push_str(&cause);
            }
        }
        eprintln!("error: {msg}");
        let code = e.downcast_ref::<cli::ExitWith>().map_or(1, |x| x.code);
        std::process::exit(code);
    }
}
