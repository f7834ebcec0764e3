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
    // Installed before the request: a signal from here on (the server reads
    // its database before it answers) is the one-line error below, never the
    // default action, which would leave a partial file.
    let mut stop = Box::pin(crate::server::shutdown_signal());
    let resp = tokio::select! {
        resp = client.send(client.request(reqwest::Method::GET, "/v1/backup")) => resp?,
        _ = &mut stop => bail!("interrupted: no backup written"),
    };
    let mut body = resp.bytes_stream();
    if to_stdout {
        return tokio::select! {
            // Written asynchronously: a reader that stalls the pipe does not
            // stall the task, so a signal meanwhile is still heard.
            done = write_checked(&mut body, tokio::io::stdout()) => done,
            _ = stop => bail!("interrupted: the backup written to stdout is not whole"),
        };
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
    // Stopped by a signal (Ctrl-C, SIGTERM, a closed terminal), it returns,
    // and so removes the partial file, rather than dying with it left behind.
    tokio::select! {
        done = download => done?,
        _ = &mut stop => bail!("interrupted: no backup written"),
    }
    partial.as_file().sync_all()?;
    let reread = std::fs::File::open(partial.path())?;
    let check =
        tokio::task::spawn_blocking(move || crate::backup::check(std::io::BufReader::new(reread)));
    // A signal while it is read back (a large file takes a while) is heard
    // too: the tokio handlers installed above stay for the whole process.
    let found = tokio::select! {
        found = check => found?.context("the backup the server sent is not whole")?,
        _ = stop => bail!("interrupted: no backup written"),
    };
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

/// Writes the download to stdout as it comes and reads the same bytes back
/// on a thread of their own, as a download to a file is read back: a copy
/// that is not whole (the server stopped, the connection broke) is an error
/// and a non-zero exit, so `fusion backup - | ...` does not end as a success.
async fn write_checked<E: std::error::Error + Send + Sync + 'static>(
    body: &mut (impl futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin),
    mut out: impl tokio::io::AsyncWrite + Unpin,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let checked = tokio::task::spawn_blocking(move || {
        crate::backup::check(ChannelReader {
            rx,
            chunk: bytes::Bytes::new(),
        })
    });
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the backup broke off (the server's log says why)")?;
        out.write_all(&chunk).await?;
        // A check that already failed has dropped its end: stdout still
        // gets every byte, the check's error is said at the end.
        let _ = tx.send(chunk).await;
    }
    out.flush().await?;
    drop(tx);
    checked
        .await?
        .context("the backup written to stdout is not whole")?;
    Ok(())
}

/// The chunks of a download as one `Read`, for `crate::backup::check` on a
/// blocking thread.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::tests::{manifest, records, tar_of};
    use crate::backup::{END, MANIFEST, RECORDS};

    async fn written(archive: &[u8]) -> (Vec<u8>, Result<()>) {
        let chunks: Vec<std::io::Result<bytes::Bytes>> = archive
            .chunks(100)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let mut out = Vec::new();
        let done = write_checked(&mut futures_util::stream::iter(chunks), &mut out).await;
        (out, done)
    }

    #[tokio::test]
    async fn a_backup_to_stdout_is_read_back_and_one_cut_short_is_an_error() {
        let whole = tar_of(&[
            (MANIFEST, &manifest(1)),
            (RECORDS, &records()),
            ("secrets.key", b"key"),
            (END, br#"{"files": 1}"#),
        ]);
        let (out, done) = written(&whole).await;
        done.unwrap();
        assert_eq!(out, whole);

        let cut = &whole[..whole.len() / 2];
        let (out, done) = written(cut).await;
        let e = format!("{:#}", done.unwrap_err());
        assert!(e.contains("written to stdout is not whole"), "{e}");
        assert_eq!(out, cut, "every byte still reaches stdout");
    }
}
