//! `fusion backup` and `fusion restore`: a running server's data into one
//! file, and that file into a new data directory (`crate::backup`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;

use super::ClientOpts;
use crate::backup::shown;

/// `fusion backup FILE`: downloads a backup of the running server into FILE
/// (`-`: stdout), through a file beside it that becomes FILE only once it is
/// read back whole.
pub(super) async fn backup(file: &Path, opts: &ClientOpts) -> Result<()> {
    let client = opts.client()?;
    let to_stdout = file == Path::new("-");
    if !to_stdout && file.exists() {
        bail!(
            "{} exists: give a new file (a backup never overwrites one)",
            shown(file).display()
        );
    }
    let resp = client
        .send(client.request(reqwest::Method::GET, "/v1/backup"))
        .await?;
    let mut body = resp.bytes_stream();
    if to_stdout {
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk.context("the backup broke off")?)?;
        }
        out.flush()?;
        return Ok(());
    }
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut partial = tempfile::Builder::new()
        .prefix(".fusion-backup-")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot write in {}", shown(&dir).display()))?;
    let mut bytes = 0u64;
    let download = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the backup broke off (the server's log says why)")?;
            bytes += chunk.len() as u64;
            partial.write_all(&chunk)?;
        }
        anyhow::Ok(())
    };
    // Interrupted, it returns (and so removes the partial file) rather than
    // dying with it left behind.
    tokio::select! {
        done = download => done?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted: no backup written"),
    }
    partial.as_file().sync_all()?;
    let reread = std::fs::File::open(partial.path())?;
    let found =
        tokio::task::spawn_blocking(move || crate::backup::check(std::io::BufReader::new(reread)))
            .await?
            .context("the backup the server sent is not whole")?;
    // Mode 0600 (tempfile's): it holds the token and what seals secrets.
    partial
        .persist_noclobber(file)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", shown(file).display()))?;
    if opts.json() {
        println!(
            "{}",
            serde_json::json!({
                "file": shown(file),
                "bytes": bytes,
                "records": found.records,
                "records_during": found.manifest.records_during,
                "files": found.files,
                "created_at": found.manifest.created_at,
            })
        );
    } else {
        println!(
            "backup written to {}: {:.1} MB, {} database records ({} written while it was read), {} files",
            shown(file).display(),
            bytes as f64 / 1e6,
            found.records,
            found.manifest.records_during,
            found.files
        );
    }
    Ok(())
}

/// `fusion restore FILE --data-dir DIR`: the backup in FILE (`-`: stdin)
/// into DIR, which must be new or empty; no server involved.
pub(super) async fn restore(file: &Path, data_dir: &Path) -> Result<()> {
    let (file, dir) = (file.to_path_buf(), data_dir.to_path_buf());
    let restored = tokio::task::spawn_blocking(move || {
        if file == Path::new("-") {
            crate::backup::restore(std::io::stdin().lock(), &dir)
        } else {
            let input = std::fs::File::open(&file)
                .with_context(|| format!("cannot read {}", shown(&file).display()))?;
            crate::backup::restore(std::io::BufReader::new(input), &dir)
        }
    })
    .await??;
    let m = &restored.manifest;
    println!(
        "restored the backup made {} by fusion {} into {}: {} database records, {} files; start it with `fusion server --data-dir {}`",
        m.created_at,
        m.fusion_version,
        shown(data_dir).display(),
        restored.records,
        restored.files,
        data_dir.display()
    );
    Ok(())
}
