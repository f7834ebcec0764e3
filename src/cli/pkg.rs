//! `fusion pkg ...`: named packages in Fission's shape. `--src` and `--deploy`
//! take a directory, a zip archive or a file; several of them (or a directory)
//! are zipped together before the upload, as `fission pkg create` does.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::output::print;
use super::ClientOpts;
use crate::client::Client;
use crate::spec::save;

#[derive(Args)]
pub struct PkgId {
    /// The package's name (or give it as --name NAME).
    #[arg(value_name = "NAME", required_unless_present = "flag")]
    positional: Option<String>,
    /// The package's name (as the positional NAME).
    #[arg(long = "name", value_name = "NAME", conflicts_with = "positional")]
    flag: Option<String>,
    /// The package's namespace.
    #[arg(long, short = 'n', env = "FUSION_NAMESPACE", default_value = "default")]
    namespace: String,
}

impl PkgId {
    fn name(&self) -> &str {
        self.positional
            .as_deref()
            .or(self.flag.as_deref())
            .unwrap_or_default()
    }
}

/// A new package's name: given, or made as Fission's CLI makes one.
#[derive(Args)]
pub struct NewPkgId {
    /// The package's name; made from the code's file name when absent
    /// (`hello.js` -> `hello-js-1a2b`), as Fission's CLI does.
    #[arg(value_name = "NAME")]
    positional: Option<String>,
    /// The package's name (as the positional NAME).
    #[arg(long = "name", value_name = "NAME", conflicts_with = "positional")]
    flag: Option<String>,
    /// The package's namespace.
    #[arg(long, short = 'n', env = "FUSION_NAMESPACE", default_value = "default")]
    namespace: String,
}

/// A package name from `code`'s file name and a random suffix (a glob's
/// from the folder it is in: `src/*` -> `src-1a2b`).
pub(super) fn generated_name(code: &std::path::Path) -> String {
    let code = code
        .ancestors()
        .find(|a| !crate::spec::archive::is_glob(a))
        .filter(|a| !a.as_os_str().is_empty())
        .unwrap_or(code);
    let stem: String = code
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let stem: String = stem.trim_matches('-').chars().take(50).collect();
    let stem = if stem.is_empty() {
        "pkg".to_string()
    } else {
        stem
    };
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..4];
    format!("{}-{suffix}", stem.trim_end_matches('-'))
}

#[derive(Args)]
pub struct PkgFields {
    /// The environment whose builder builds the source and whose runtime runs it.
    #[arg(long)]
    pub(super) env: Option<String>,
    /// Source code to build: a directory, a zip archive or a file (repeatable;
    /// several are zipped together). Python: a requirements.txt is installed
    /// with pip; nodejs: package.json with npm; else ./build.sh runs.
    #[arg(long = "src", alias = "sourcearchive", alias = "source")]
    pub(super) src: Vec<PathBuf>,
    /// Code ready to run, used as it is: a directory, a zip archive or a file
    /// (repeatable; several are zipped together).
    #[arg(long = "deploy", alias = "deployarchive")]
    pub(super) deploy: Vec<PathBuf>,
    /// One source file, run as it is (Fission's `--code`: what --deploy does
    /// with one file).
    #[arg(long = "code", value_name = "FILE")]
    pub(super) code: Option<PathBuf>,
    /// The build command, run by `sh` in the source directory with SRC_PKG
    /// (the source) and DEPLOY_PKG (where the deployment goes) set.
    #[arg(long)]
    pub(super) buildcmd: Option<String>,
    #[command(flatten)]
    pub(super) checksums: PkgChecksums,
}

/// Fission's flags for the checksums of archives it fetches from URLs:
/// Fusion takes local code only, and stores each upload by its SHA-256.
#[derive(Args, Default)]
pub(super) struct PkgChecksums {
    /// Fission's: no checksum for the archives; not applied here (said on
    /// stderr).
    #[arg(long)]
    insecure: bool,
    /// Fission's SHA-256 of a source archive fetched from a URL; not applied
    /// here (said on stderr).
    #[arg(long, value_name = "SHA256")]
    srcchecksum: Option<String>,
    /// Fission's SHA-256 of a deployment archive fetched from a URL; not
    /// applied here (said on stderr).
    #[arg(long, value_name = "SHA256")]
    deploychecksum: Option<String>,
}

impl PkgFields {
    /// `--code` as the deployment it stands for (after any --deploy), and
    /// Fission's checksum flags said to do nothing.
    fn normalized(mut self) -> PkgFields {
        self.deploy.extend(self.code.take());
        let c = &self.checksums;
        let given: Vec<&str> = [
            ("--insecure", c.insecure),
            ("--srcchecksum", c.srcchecksum.is_some()),
            ("--deploychecksum", c.deploychecksum.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect();
        if !given.is_empty() {
            eprintln!(
                "warning: {} not applied: they are Fission's checks of archives fetched from URLs, and Fusion uploads local code only (each stored by its SHA-256)",
                given.join(", ")
            );
        }
        self
    }
}

#[derive(Subcommand)]
pub enum PkgVerb {
    /// Create a package; one with a source is built in the background.
    Create {
        #[command(flatten)]
        id: NewPkgId,
        #[command(flatten)]
        fields: PkgFields,
        #[command(flatten)]
        spec: super::SpecOpt,
    },
    /// Change a package's environment, archives or build command (builds again
    /// when what is built changes).
    Update {
        #[command(flatten)]
        id: PkgId,
        #[command(flatten)]
        fields: PkgFields,
        /// Update it even when more than one function runs it (Fission's flag).
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Show a package: its build status and the end of its build log.
    Info {
        #[command(flatten)]
        id: PkgId,
    },
    /// List the packages of a namespace.
    List {
        /// The namespace to list.
        #[arg(long, short = 'n', env = "FUSION_NAMESPACE", default_value = "default")]
        namespace: String,
        /// Only the packages no function uses (Fission's flag).
        #[arg(long)]
        orphan: bool,
        /// Only the packages whose build is in this state (Fission's flag).
        #[arg(long, value_enum, value_name = "STATUS")]
        status: Option<BuildState>,
        #[command(flatten)]
        scope: super::AllNamespaces,
    },
    /// Delete a package no function uses; with --orphan, every package of the
    /// namespace that no function uses.
    Delete {
        /// The package's name (or give it as --name NAME).
        #[arg(value_name = "NAME", required_unless_present_any = ["flag", "orphan"])]
        positional: Option<String>,
        /// The package's name (as the positional NAME).
        #[arg(long = "name", value_name = "NAME", conflicts_with = "positional")]
        flag: Option<String>,
        /// The package's namespace.
        #[arg(long, short = 'n', env = "FUSION_NAMESPACE", default_value = "default")]
        namespace: String,
        /// Also delete every package of the namespace that no function uses
        /// (Fission's flag; what `fn delete` leaves, as in Fission).
        #[arg(long)]
        orphan: bool,
        #[command(flatten)]
        missing: super::IgnoreNotFound,
        /// Fission's: delete it even while functions use it. Not here: it is
        /// still refused, as it would break them (said when it is).
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Build the package's source again, without the build cache.
    Rebuild {
        #[command(flatten)]
        id: PkgId,
    },
    /// Print the package's whole build log.
    Logs {
        #[command(flatten)]
        id: PkgId,
    },
    /// Print the package's source: a file as it is; a directory as a zip
    /// archive, as Fission's (a tar with `--dest NAME.tar`; with --dest, or
    /// piped).
    Getsrc {
        #[command(flatten)]
        id: PkgId,
        /// Write it to this file (Fission's --output; `-o` is the output format here).
        #[arg(long, value_name = "FILE")]
        dest: Option<PathBuf>,
    },
    /// Print the code the package's functions run (its build, or its
    /// deployment), as getsrc does.
    Getdeploy {
        #[command(flatten)]
        id: PkgId,
        /// Write it to this file (Fission's --output; `-o` is the output format here).
        #[arg(long, value_name = "FILE")]
        dest: Option<PathBuf>,
    },
    /// Remove the code (uploaded archives, builds) that no function, package
    /// or running instance uses, now; the server also does it on its own
    /// (`--package-prune-secs`). Code stored or newly used within the last
    /// hour is kept.
    Prune,
}

/// A package's build state, as `--status` names it.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BuildState {
    /// Nothing to build: code ready to run was given.
    None,
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl BuildState {
    fn as_str(self) -> &'static str {
        match self {
            BuildState::None => "none",
            BuildState::Pending => "pending",
            BuildState::Running => "running",
            BuildState::Succeeded => "succeeded",
            BuildState::Failed => "failed",
        }
    }
}

/// The packages of `namespace` (None: of every namespace); with `orphans`,
/// only those no function runs.
pub(super) async fn packages(
    c: &Client,
    namespace: Option<&str>,
    orphans: bool,
) -> Result<Vec<Value>> {
    let list = |path: &'static str| async move {
        let query = match namespace {
            Some(ns) => ("namespace", ns),
            None => ("all_namespaces", "true"),
        };
        c.send(c.request(Method::GET, path).query(&[query]))
            .await?
            .json::<Vec<Value>>()
            .await
            .map_err(anyhow::Error::from)
    };
    let mut all = list("/v1/packages").await?;
    if orphans {
        let functions = list("/v1/functions").await?;
        all.retain(|p| {
            !functions.iter().any(|f| {
                let r = &f["package"]["packageref"];
                r["name"] == p["name"] && r["namespace"] == p["namespace"]
            })
        });
    }
    Ok(all)
}

const PKG_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("NAMESPACE", "/namespace"),
    ("ENV", "/environment"),
    ("BUILDSTATUS", "/status/buildstatus"),
    ("LASTUPDATE", "/status/lastUpdateTimestamp"),
];

/// How many lines of the build log `pkg info` shows.
const INFO_LOG_LINES: usize = 20;

pub async fn pkg_cmd(verb: PkgVerb, opts: &ClientOpts) -> Result<()> {
    let c = opts.client()?;
    match verb {
        PkgVerb::Create { id, fields, spec } => {
            let fields = fields.normalized();
            if fields.env.is_none() {
                bail!("--env is required");
            }
            if fields.src.is_empty() && fields.deploy.is_empty() {
                bail!(
                    "give the code: --src (to build) or --deploy/--code (to run as it is), or both"
                );
            }
            let given = id.positional.or(id.flag);
            let named_here = given.is_none();
            let name = match given {
                Some(name) => name,
                None => {
                    let code = fields.src.first().or(fields.deploy.first());
                    generated_name(code.map_or(std::path::Path::new("pkg"), |p| p))
                }
            };
            if let Some(target) = spec.target() {
                let docs = package_docs(
                    &target,
                    &id.namespace,
                    &name,
                    fields.env.as_deref().unwrap_or_default(),
                    &fields.src,
                    &fields.deploy,
                    fields.buildcmd.as_deref(),
                )?;
                return save::save(&target, &format!("package-{name}.yaml"), &docs);
            }
            let mut body = json!({"name": name, "namespace": id.namespace});
            merge(&c, &mut body, fields).await?;
            let v: Value = c
                .send(
                    c.request(Method::POST, "/v1/packages")
                        .query(&[("namespace", &id.namespace)])
                        .json(&body),
                )
                .await?
                .json()
                .await?;
            if named_here && !opts.json() {
                // The name it made, as Fission's CLI says it (scripts take
                // it with `cut -f2 -d' ' | tr -d \'`).
                println!("Package '{name}' created");
                eprintln!("(a name made from the code's; --name to choose one; `fusion pkg info {name}` shows it)");
            } else {
                print(opts, &v, PKG_COLUMNS);
            }
        }
        PkgVerb::Update { id, fields, force } => {
            let fields = fields.normalized();
            // As Fission's `pkg update` (and `fn update --code` here): a
            // package that several functions run changes for all of them
            // only when that is asked for.
            let users: Vec<String> = c
                .send(
                    c.request(Method::GET, "/v1/functions")
                        .query(&[("namespace", &id.namespace)]),
                )
                .await?
                .json::<Vec<Value>>()
                .await?
                .iter()
                .filter(|f| f["package"]["packageref"]["name"] == id.name())
                .filter_map(|f| f["name"].as_str().map(str::to_string))
                .collect();
            if users.len() > 1 && !force {
                bail!(
                    "package {:?} is run by functions {}: --force updates it for all of them",
                    id.name(),
                    users.join(", ")
                );
            }
            // --force also takes them along to another environment (`--env`).
            let v = update(&c, &id.namespace, id.name(), fields, force).await?;
            print(opts, &v, PKG_COLUMNS);
        }
        PkgVerb::Info { id } => {
            let v = get(&c, &id).await?;
            if opts.json() {
                print(opts, &v, PKG_COLUMNS);
                return Ok(());
            }
            print(opts, &v, PKG_COLUMNS);
            let log = v
                .pointer("/status/buildlog")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !log.is_empty() {
                let lines: Vec<&str> = log.lines().collect();
                let from = lines.len().saturating_sub(INFO_LOG_LINES);
                if from > 0 {
                    println!("\nbuild log (last {INFO_LOG_LINES} lines; `fusion pkg logs --name {}` has it all):", id.name());
                } else {
                    println!("\nbuild log:");
                }
                for l in &lines[from..] {
                    println!("  {}", super::output::printable_log_line(l));
                }
            }
            let failed = v.pointer("/status/buildstatus").and_then(Value::as_str) == Some("failed");
            if failed && v.pointer("/status/built").is_some_and(|b| !b.is_null()) {
                println!(
                    "\nthe last build failed: its functions keep running the last good build until one succeeds"
                );
            }
        }
        PkgVerb::List {
            namespace,
            orphan,
            status,
            scope,
        } => {
            let namespace = (!scope.all).then_some(namespace.as_str());
            let mut v = packages(&c, namespace, orphan).await?;
            if let Some(status) = status {
                v.retain(|p| p["status"]["buildstatus"] == status.as_str());
            }
            print(opts, &Value::Array(v), PKG_COLUMNS);
        }
        PkgVerb::Delete {
            positional,
            flag,
            namespace,
            orphan,
            missing,
            force,
        } => {
            let delete = |name: String| {
                let c = &c;
                let namespace = &namespace;
                async move {
                    let sent = c
                        .send(
                            c.request(Method::DELETE, &path(&name, ""))
                                .query(&[("namespace", namespace)]),
                        )
                        .await;
                    match sent {
                        Err(e)
                            if force
                                && e.downcast_ref::<crate::client::ApiError>()
                                    .is_some_and(|e| e.status == 409) =>
                        {
                            bail!("{e}: --force does not delete a package functions use here (they would break): delete them, or give them another package (fusion fn update F --pkg P), first")
                        }
                        sent => sent?,
                    };
                    Ok::<_, anyhow::Error>(name)
                }
            };
            let name = positional.or(flag);
            if !orphan {
                // One name: said as every delete of one says it.
                match delete(name.unwrap_or_default()).await {
                    Ok(name) => super::output::deleted(opts, "package", Some(&namespace), &name),
                    Err(e) => missing.apply(opts, Err(e))?,
                }
                return Ok(());
            }
            // The one named, then every package no function uses, as
            // Fission's `pkg delete --name P --orphan` does both.
            let mut said = super::output::DeletedList::new(opts);
            if let Some(name) = name {
                match delete(name).await {
                    Ok(name) => said.add(opts, "package", Some(&namespace), &name),
                    Err(e) if missing.ignores(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            for p in packages(&c, Some(&namespace), true).await? {
                let Some(name) = p["name"].as_str() else {
                    continue;
                };
                // Gone meanwhile: what was asked for is done.
                match delete(name.to_string()).await {
                    Ok(name) => said.add(opts, "package", Some(&namespace), &name),
                    Err(e) if e.downcast_ref::<crate::client::NotFound>().is_some() => {}
                    Err(e) => return Err(e),
                }
            }
            said.finish();
        }
        PkgVerb::Rebuild { id } => {
            let v: Value = c
                .send(
                    c.request(Method::POST, &path(id.name(), "/rebuild"))
                        .query(&[("namespace", &id.namespace)]),
                )
                .await?
                .json()
                .await?;
            if opts.json() {
                print(opts, &v, PKG_COLUMNS);
            } else {
                println!(
                    "package {}: build {} (see `fusion pkg info --name {}`)",
                    id.name(),
                    v.pointer("/status/buildstatus")
                        .and_then(Value::as_str)
                        .unwrap_or("pending"),
                    id.name()
                );
            }
        }
        PkgVerb::Getsrc { id, dest } => {
            let path = format!("{}?namespace={}", path(id.name(), "/source"), id.namespace);
            download(&c, &path, dest.as_deref()).await?;
        }
        PkgVerb::Getdeploy { id, dest } => {
            let path = format!(
                "{}?namespace={}",
                path(id.name(), "/deployment"),
                id.namespace
            );
            download(&c, &path, dest.as_deref()).await?;
        }
        PkgVerb::Logs { id } => {
            let text = c
                .send(
                    c.request(Method::GET, &path(id.name(), "/logs"))
                        .query(&[("namespace", &id.namespace)]),
                )
                .await?
                .text()
                .await?;
            let mut out = std::io::stdout();
            // `-o json`: one object per line, as `fn logs` prints them.
            for line in text.lines() {
                if opts.json() {
                    writeln!(out, "{}", super::function::log_line_json(line))?;
                } else {
                    writeln!(out, "{}", super::output::printable_log_line(line))?;
                }
            }
            out.flush()?;
        }
        PkgVerb::Prune => {
            let v: Value = c
                .send(c.request(Method::POST, "/v1/archives/prune"))
                .await?
                .json()
                .await?;
            if opts.json() {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let removed = v["removed"].as_array().map_or(0, Vec::len);
                let kib = v["bytes"].as_u64().unwrap_or(0).div_ceil(1024);
                let kept = v["kept"].as_u64().unwrap_or(0);
                println!("removed {removed} archive(s) nothing uses ({kib} KiB); kept {kept}");
                let images = v["images_removed"].as_array().map_or(0, Vec::len);
                if images > 0 {
                    let mib = v["image_bytes"].as_u64().unwrap_or(0).div_ceil(1 << 20);
                    println!("removed {images} unpacked image(s) no environment uses ({mib} MiB)");
                }
            }
        }
    }
    Ok(())
}

/// Whether the start of a file is not text: a zip archive, or bytes text
/// has not (a NUL).
fn not_text(start: &[u8]) -> bool {
    start.starts_with(b"PK\x03\x04") || start.contains(&0)
}

/// Code from the API (`path`) to `output`, or to standard output: a file as
/// it is, a directory as a zip archive, as Fission's CLI gives it (`unzip`
/// reads it), or as the tar the server sends when `output` is a `.tar` (not
/// to a terminal).
pub(super) async fn download(c: &Client, path: &str, output: Option<&Path>) -> Result<()> {
    use std::io::IsTerminal;
    let mut resp = c.send(c.request(Method::GET, path)).await?;
    let tar = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/x-tar"));
    let as_zip = tar && output.is_none_or(|f| f.extension().is_none_or(|e| e != "tar"));

    let mut out: Box<dyn Write> = match output {
        Some(file) => Box::new(
            std::fs::File::create(file)
                .with_context(|| format!("cannot write {}", file.display()))?,
        ),
        None if tar && std::io::stdout().is_terminal() => {
            bail!("the code is a directory: give --dest FILE (a zip archive, or a .tar) or pipe it (> code.zip)")
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut written = 0;
    if as_zip {
        let zip = zip_of_tar(&resp.bytes().await?)?;
        out.write_all(&zip)?;
        written = zip.len();
    } else {
        let mut first = true;
        while let Some(chunk) = resp.chunk().await? {
            // Code that is not text (a zip archive, a binary) is not written
            // to a terminal, where it is noise and control sequences.
            if first && output.is_none() && std::io::stdout().is_terminal() && not_text(&chunk) {
                bail!("the code is not text (an archive or a binary): give --dest FILE or pipe it (> code.zip)");
            }
            first = false;
            out.write_all(&chunk)?;
            written += chunk.len();
        }
    }
    out.flush()?;
    if let Some(file) = output {
        let what = match (tar, as_zip) {
            (true, true) => "a zip archive",
            (true, false) => "a tar archive",
            _ => "a file",
        };
        eprintln!("{} written: {what} of {written} bytes", file.display());
    }
    Ok(())
}

/// The zip archive of the directory a tar stream holds: its files (with their
/// modes) and directories, in the tar's order.
fn zip_of_tar(tar_bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().context("cannot read the package")? {
        let mut entry = entry.context("cannot read the package")?;
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if name.is_empty() {
            continue;
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let options = zip::write::SimpleFileOptions::default().unix_permissions(mode);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                zip.add_directory(format!("{}/", name.trim_end_matches('/')), options)?
            }
            tar::EntryType::Regular => {
                zip.start_file(name, options)?;
                let mut data = Vec::new();
                entry.read_to_end(&mut data)?;
                zip.write_all(&data)?;
            }
            // Links and the like: a package holds files only.
            _ => {}
        }
    }
    Ok(zip
        .finish()
        .context("cannot write the archive")?
        .into_inner())
}

fn path(name: &str, rest: &str) -> String {
    format!("/v1/packages/{name}{rest}")
}

/// Changes package `name` by `fields` (its server builds again when what is
/// built changed); answers the package as stored. One moved to another
/// environment takes the functions that run it along when `move_functions`.
pub(super) async fn update(
    c: &Client,
    namespace: &str,
    name: &str,
    fields: PkgFields,
    move_functions: bool,
) -> Result<Value> {
    let mut body: Value = c
        .send(
            c.request(Method::GET, &path(name, ""))
                .query(&[("namespace", namespace)]),
        )
        .await?
        .json()
        .await?;
    merge(c, &mut body, fields).await?;
    Ok(c.send(
        c.request(Method::PUT, &path(name, ""))
            .query(&[("namespace", namespace)])
            .query(&[("move_functions", move_functions)])
            .json(&body),
    )
    .await?
    .json()
    .await?)
}

async fn get(c: &Client, id: &PkgId) -> Result<Value> {
    Ok(c.send(
        c.request(Method::GET, &path(id.name(), ""))
            .query(&[("namespace", &id.namespace)]),
    )
    .await?
    .json()
    .await?)
}

async fn merge(c: &Client, body: &mut Value, f: PkgFields) -> Result<()> {
    if let Some(e) = f.env {
        body["environment"] = json!(e);
    }
    if !f.src.is_empty() {
        let (bytes, name) = archive_of(&f.src)?;
        body["source"] = c.upload_bytes(&name, bytes).await?;
    }
    if !f.deploy.is_empty() {
        let (bytes, name) = archive_of(&f.deploy)?;
        body["deployment"] = c.upload_bytes(&name, bytes).await?;
        if f.src.is_empty() && f.buildcmd.is_none() {
            // Given alone, a deployment is what runs (as Fission then skips
            // the build): a source would be built and run instead.
            if let Some(o) = body.as_object_mut() {
                o.remove("source");
                o.remove("buildcmd");
            }
        }
    }
    if let Some(cmd) = f.buildcmd {
        body["buildcmd"] = json!(cmd);
    }
    Ok(())
}

/// The spec documents of package `name` of `src` (to build) and `deploy` (to
/// run as it is): an ArchiveUploadSpec for each given, then the Package.
pub(super) fn package_docs(
    target: &save::Target,
    namespace: &str,
    name: &str,
    env: &str,
    src: &[PathBuf],
    deploy: &[PathBuf],
    buildcmd: Option<&str>,
) -> Result<Vec<save::Doc>> {
    let mut docs = Vec::new();
    let mut archives = [None, None];
    for (i, paths) in [src, deploy].into_iter().enumerate() {
        let Some(first) = paths.first() else {
            continue;
        };
        let archive = generated_name(first);
        docs.push(save::archive(target, &archive, paths)?);
        archives[i] = Some(archive);
    }
    let [source, deployment] = archives;
    docs.push(save::package(
        namespace,
        name,
        env,
        source.as_deref(),
        deployment.as_deref(),
        buildcmd,
    )?);
    Ok(docs)
}

/// Makes a package for function `function` from `src` (to build) and
/// `deploy` (to run as it is), as Fission's `fn create --src/--deploy` does;
/// answers its name (the function's, with a short random suffix).
pub(super) async fn create_for_function(
    c: &Client,
    namespace: &str,
    function: &str,
    env: &str,
    src: Vec<PathBuf>,
    deploy: Vec<PathBuf>,
    buildcmd: Option<String>,
) -> Result<String> {
    let name = generated_name(std::path::Path::new(function));
    let mut body = json!({"name": name, "namespace": namespace});
    let fields = PkgFields {
        env: Some(env.to_string()),
        src,
        deploy,
        code: None,
        buildcmd,
        checksums: PkgChecksums::default(),
    };
    merge(c, &mut body, fields).await?;
    c.send(
        c.request(Method::POST, "/v1/packages")
            .query(&[("namespace", namespace)])
            .json(&body),
    )
    .await?;
    eprintln!("package {name} made for function {function}");
    Ok(name)
}

/// What to upload for `paths`, and its file name: one zip archive or one file
/// as it is; a directory, or several paths, zipped together (a directory by
/// its contents, a file by its name). A glob (`src/*`) stands for what it
/// matches, each under its own name, as Fission's CLI packs it.
pub fn archive_of(paths: &[PathBuf]) -> Result<(Vec<u8>, String)> {
    use crate::spec::archive::{glob_matches, is_glob};
    let mut items = Vec::new();
    for p in paths {
        refuse_url(p)?;
        if is_glob(p) {
            items.extend(glob_matches(p)?.into_iter().map(|m| (m, true)));
        } else {
            items.push((p.clone(), false));
        }
    }
    zip_of(&items)
}

/// A URL where a path belongs (Fission's CLI fetches code from one): said in
/// one line, not as a file that cannot be read.
fn refuse_url(p: &Path) -> Result<()> {
    let text = p.to_string_lossy();
    let scheme = text.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("http" | "https" | "ftp")) {
        bail!("{text}: Fusion does not fetch code from URLs; download it first (curl -LO {text}) and give the file");
    }
    Ok(())
}

/// One file as it is, else a zip of `items`: a file by its name, a directory
/// by its contents, or (marked) under its own name.
fn zip_of(items: &[(PathBuf, bool)]) -> Result<(Vec<u8>, String)> {
    if let [(one, _)] = items {
        if one.is_file() {
            let bytes =
                std::fs::read(one).with_context(|| format!("cannot read {}", one.display()))?;
            let name = one
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow!("{} has no file name", one.display()))?;
            return Ok((bytes, name.to_string()));
        }
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        for (p, own_name) in items {
            let meta =
                std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
            if meta.is_dir() && *own_name {
                let name = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| anyhow!("{} has no file name", p.display()))?;
                zip.add_directory(format!("{name}/"), zip::write::SimpleFileOptions::default())?;
                add_dir(
                    &mut zip,
                    p.parent().unwrap_or(Path::new(".")),
                    Path::new(name),
                )?;
            } else if meta.is_dir() {
                add_dir(&mut zip, p, Path::new(""))?;
            } else {
                let name = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| anyhow!("{} has no file name", p.display()))?;
                add_file(&mut zip, p, name)?;
            }
        }
        zip.finish().context("cannot write the archive")?;
    }
    Ok((buf.into_inner(), "archive.zip".into()))
}

fn add_dir(
    zip: &mut zip::ZipWriter<&mut std::io::Cursor<Vec<u8>>>,
    dir: &Path,
    rel: &Path,
) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir.join(rel))
        .with_context(|| format!("cannot read {}", dir.join(rel).display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = rel.join(e.file_name());
        let name = path
            .to_str()
            .ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))?
            .to_string();
        let meta = std::fs::metadata(e.path()).with_context(|| {
            format!(
                "cannot read {} (a link to something missing?)",
                e.path().display()
            )
        })?;
        if meta.is_dir() {
            zip.add_directory(format!("{name}/"), zip::write::SimpleFileOptions::default())?;
            add_dir(zip, dir, &path)?;
        } else if meta.is_file() {
            add_file(zip, &e.path(), &name)?;
        }
    }
    Ok(())
}

fn add_file(
    zip: &mut zip::ZipWriter<&mut std::io::Cursor<Vec<u8>>>,
    path: &Path,
    name: &str,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .permissions()
        .mode();
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(mode & 0o777);
    zip.start_file(name, options)?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    zip.write_all(&bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_and_binaries_are_told_from_text() {
        assert!(not_text(b"PK\x03\x04rest"));
        assert!(not_text(b"\x7fELF\x02\x01\x01\x00"));
        assert!(!not_text(b"def main():\n    return 'hi'\n"));
        assert!(!not_text("d\u{e9}j\u{e0}".as_bytes()));
    }

    #[test]
    fn directories_and_several_paths_are_zipped_together() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("lib")).unwrap();
        std::fs::write(src.join("main.py"), "x").unwrap();
        std::fs::write(src.join("lib/a.py"), "a").unwrap();
        let extra = dir.path().join("build.sh");
        std::fs::write(&extra, "echo").unwrap();
        // One file goes as it is.
        let (bytes, name) = archive_of(std::slice::from_ref(&extra)).unwrap();
        assert_eq!(
            (bytes.as_slice(), name.as_str()),
            (&b"echo"[..], "build.sh")
        );
        let (bytes, name) = archive_of(&[src.clone(), extra]).unwrap();
        assert_eq!(name, "archive.zip");
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let mut names: Vec<String> = z.file_names().map(str::to_string).collect();
        names.sort();
        assert_eq!(names, ["build.sh", "lib/", "lib/a.py", "main.py"]);
        let mut a = String::new();
        std::io::Read::read_to_string(&mut z.by_name("lib/a.py").unwrap(), &mut a).unwrap();
        assert_eq!(a, "a");
        assert!(archive_of(&[dir.path().join("nope")]).is_err());
    }
}
