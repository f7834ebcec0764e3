//! `fusion spec`: a Fission project's `specs/` folder (or Fusion's short form)
//! applied as a whole. `init` starts one, `validate` checks it offline, `apply`
//! creates or updates what it declares (and with `--delete` removes what this
//! project applied before and no longer declares), `destroy` removes what it
//! applied, `list` shows it. What a project applied is recorded on the server
//! under its DeploymentConfig uid, as Fission marks it with `fission-uid`.

pub(crate) mod archive;
pub(crate) mod load;
pub(crate) mod model;
pub(crate) mod save;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::client::Client;
use model::{ArchiveSource, Deployment, Kind, Resource, Specs, DEFAULT_NAMESPACE};

/// What to read: a folder (Fission's `specs/`) or one file.
pub struct Source {
    pub path: PathBuf,
    /// Namespace of resources that name none.
    pub namespace: String,
}

/// Reads and checks the folder offline; warnings go to stderr, errors fail
/// together, each with its file, line and column.
fn read(source: &Source) -> Result<Specs> {
    let files = load::spec_files(&source.path)?;
    if files.is_empty() {
        bail!("no spec files (*.yaml) under {}", source.path.display());
    }
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for file in &files {
        match load::read_file(file) {
            Ok(d) => docs.extend(d),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let mut specs = Specs::read(&docs, &source.namespace);
    errors.append(&mut specs.errors);
    // Fission's own `spec apply` refuses such a folder; here it applies, as
    // the short form does, and nothing records it: said, so that a project
    // is not found undeletable after the fact.
    if specs.deployment.is_none() {
        if let Some(doc) = docs.iter().find(|d| {
            model::str_at(&d.value, "apiVersion").is_some_and(|v| v.starts_with("fission.io/"))
        }) {
            specs.warnings.push(format!(
                "{}: these are Fission documents without a DeploymentConfig: nothing records what `spec apply` makes of them, so `spec destroy` and `spec apply --delete` cannot remove them (Fission refuses such a folder); `fusion spec init` writes one",
                doc.at("apiVersion")
            ));
        }
    }
    // Archives are checked offline too: every include must match something.
    let root = project_root(&source.path);
    let mut unmatched = HashSet::new();
    for a in &specs.archives {
        if let Err(e) = archive::matches(a, &root) {
            errors.push(format!("{e:#}"));
            unmatched.insert(a.name.as_str());
        }
    }
    // A Fission Workflows function's workflow, checked as the server will
    // (an archive said above to match nothing is not said again).
    for r in &specs.resources {
        let Some(a) = &r.workflow_archive else {
            continue;
        };
        if matches!(a, ArchiveSource::Upload(name) if unmatched.contains(name.as_str())) {
            continue;
        }
        match workflow_in_archive(&specs, &root, a) {
            Err(e) => errors.push(format!("{}: {}: {e:#}", r.at, r.label())),
            Ok(source) => {
                for e in engine::validate::check_offline(&source)
                    .err()
                    .unwrap_or_default()
                {
                    errors.push(format!(
                        "{}: {}: its workflow file, line {} column {}: {} ({})",
                        r.at,
                        r.label(),
                        e.line,
                        e.column,
                        e.message,
                        e.code
                    ));
                }
            }
        }
    }
    for w in &specs.warnings {
        eprintln!("warning: {w}");
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        bail!(
            "{} error{} in {}",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" },
            source.path.display()
        );
    }
    Ok(specs)
}

fn project_root(path: &Path) -> PathBuf {
    if path.is_file() {
        archive::project_root(path.parent().unwrap_or(Path::new(".")))
    } else {
        archive::project_root(path)
    }
}

// ---- init ----

const README: &str = "Fusion (and Fission) specs
==========================

The resources of this project: environments, packages, functions, triggers and
workflows, as Fission's fission.io/v1 documents (or Fusion's short form).

  fusion spec validate     check them offline
  fusion spec apply        create or update them (--delete also removes what this
                           project applied before and no longer declares)
  fusion spec list         what this project applied
  fusion spec destroy      remove what this project applied

fission-deployment-config.yaml holds this project's uid: everything `spec apply`
creates is recorded under it, and only what is recorded under it is ever updated
or deleted by this project. Do not edit the uid.
";

pub fn init(specdir: &Path, name: Option<String>, uid: Option<String>) -> Result<()> {
    let config = specdir.join("fission-deployment-config.yaml");
    if config.exists() {
        bail!(
            "{} already exists: this folder is already a spec folder",
            config.display()
        );
    }
    let name = match name {
        Some(n) => n,
        None => {
            let cwd = std::env::current_dir()?;
            kubify(cwd.file_name().and_then(|n| n.to_str()).unwrap_or(""))
        }
    };
    let uid = uid.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    crate::declared::check_uid(&uid).map_err(|e| anyhow!("--deployid: {e}"))?;
    if !model::is_dns_label(&name) {
        bail!("--name {name:?} is not a DNS-1123 label (at most 63 lowercase letters, digits and '-')");
    }
    std::fs::create_dir_all(specdir)
        .with_context(|| format!("cannot create {}", specdir.display()))?;
    // A README the folder holds already is the user's: kept.
    let readme = specdir.join("README");
    if !readme.exists() {
        std::fs::write(&readme, README)?;
    }
    std::fs::write(
        &config,
        format!(
            "# This file is generated by 'fusion spec init' (as 'fission spec init' does).\n\
             # Do not edit the uid below: it marks what 'spec apply' applied for this project.\n\
             apiVersion: fission.io/v1\nkind: DeploymentConfig\nname: {name}\nuid: {uid}\n"
        ),
    )?;
    println!("created {} (project {name}, uid {uid})", config.display());
    Ok(())
}

/// A name made into a DNS-1123 label, as Fission's `KubifyName`.
fn kubify(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = lower
        .trim_start_matches(|c: char| !c.is_ascii_lowercase())
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let cut: String = trimmed.chars().take(63).collect();
    let cut = cut.trim_end_matches('-').to_string();
    if cut.is_empty() {
        "default".into()
    } else {
        cut
    }
}

// ---- validate ----

pub fn validate(source: &Source) -> Result<()> {
    let specs = read(source)?;
    if let Some(d) = &specs.deployment {
        println!("project {} (uid {})", d.name, d.uid);
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in &specs.resources {
        *counts.entry(r.kind.name()).or_default() += 1;
    }
    for kind in Kind::ALL {
        if let Some(n) = counts.get(kind.name()) {
            println!("{n:4} {}", kind.name());
        }
    }
    if !specs.archives.is_empty() {
        println!("{:4} ArchiveUploadSpec", specs.archives.len());
    }
    println!("the specs are valid");
    Ok(())
}

// ---- the server side of resources ----

/// Where a kind lives in the API.
pub(crate) fn collection(r: &Resource) -> &'static str {
    kind_collection(r.kind)
}

/// Where resources of a kind live in the API.
pub(crate) fn kind_collection(kind: Kind) -> &'static str {
    match kind {
        Kind::Environment => "/v1/environments",
        Kind::Secret => "/v1/secrets",
        Kind::ConfigMap => "/v1/configmaps",
        Kind::Package => "/v1/packages",
        Kind::Function => "/v1/functions",
        Kind::Workflow => "/v1/workflows",
        Kind::HttpTrigger => "/v1/routes",
        Kind::TimeTrigger => "/v1/timers",
        Kind::MessageQueueTrigger => "/v1/mqtriggers",
        Kind::CanaryConfig => "/v1/canaries",
    }
}

/// One resource as the deployment record keeps it.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub(crate) struct Applied {
    pub(crate) kind: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// The API collection it lives in.
    pub(crate) collection: String,
}

impl Applied {
    pub(crate) fn of(r: &Resource) -> Applied {
        Applied {
            kind: r.kind.name().to_string(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            collection: collection(r).to_string(),
        }
    }
    pub(crate) fn path(&self) -> String {
        with_namespace(
            &format!("{}/{}", self.collection, self.name),
            &self.namespace,
        )
    }
    pub(crate) fn label(&self) -> String {
        if self.namespace == DEFAULT_NAMESPACE {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
    /// Triggers first, environments last: the reverse of applying.
    fn delete_rank(&self) -> usize {
        Kind::ALL
            .iter()
            .position(|k| k.name() == self.kind)
            .map_or(0, |i| Kind::ALL.len() - i)
    }
}

pub(crate) fn with_namespace(path: &str, namespace: &str) -> String {
    if namespace == DEFAULT_NAMESPACE {
        path.to_string()
    } else {
        format!("{path}?namespace={namespace}")
    }
}

/// What the server records a project applied.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Record {
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) resources: BTreeSet<Applied>,
}

/// The deployment records of custom resources (written by the Kubernetes
/// controller) have uids with this prefix, then the custom resource's own uid.
pub(crate) const CUSTOM_RESOURCE_UID_PREFIX: &str = "k8s-";

fn is_custom_resource_record(r: &Record) -> bool {
    r.uid.starts_with(CUSTOM_RESOURCE_UID_PREFIX)
}

/// Who applied a resource, when not this project.
#[derive(Debug, Clone)]
enum Owner {
    /// Another project, by uid.
    Project(String),
    /// A custom resource, by its record's name (`Function default/hello`).
    CustomResource(String),
}

impl Owner {
    fn of(r: &Record) -> Owner {
        if is_custom_resource_record(r) {
            Owner::CustomResource(r.name.clone())
        } else {
            Owner::Project(r.uid.clone())
        }
    }
}

/// What custom resources own, with the owner's name.
async fn custom_resource_owners(client: &Client) -> Result<HashMap<Applied, String>> {
    let all: Vec<Record> = client.get("/v1/deployments").await?;
    Ok(all
        .into_iter()
        .filter(is_custom_resource_record)
        .flat_map(|r| {
            let name = r.name.clone();
            r.resources.into_iter().map(move |a| (a, name.clone()))
        })
        .collect())
}

pub(crate) async fn record(client: &Client, uid: &str) -> Result<Option<Record>> {
    client.get_opt(&format!("/v1/deployments/{uid}")).await
}

// ---- apply ----

pub struct ApplyOpts {
    pub delete: bool,
    pub allow_conflicts: bool,
    /// Wait for the builds of the packages applied.
    pub wait: bool,
}

#[derive(Default)]
struct Summary {
    lines: Vec<(String, String)>,
    notes: Vec<String>,
}

impl Summary {
    fn add(&mut self, verb: &str, what: String) {
        self.lines.push((verb.to_string(), what));
    }
    fn note(&mut self, line: String) {
        self.notes.push(line);
    }
    /// Prints what was done; `complete` is false when applying stopped at an
    /// error (then only what changed is worth saying, before the error).
    fn print(&self, complete: bool) {
        for (verb, what) in &self.lines {
            println!("{verb:9} {what}");
        }
        for note in &self.notes {
            println!("{note}");
        }
        // Last: the conclusion comes after what it concludes.
        if complete && self.lines.iter().all(|(v, _)| v == "unchanged") {
            println!("everything up to date ({} resources)", self.lines.len());
        }
    }
}

pub async fn apply(client: &Client, source: &Source, opts: ApplyOpts) -> Result<()> {
    let specs = read(source)?;
    if opts.delete && specs.deployment.is_none() {
        bail!(
            "--delete needs a DeploymentConfig in the specs (create one with `fusion spec init`)"
        );
    }
    let root = project_root(&source.path);
    let mut summary = Summary::default();
    let previous = match &specs.deployment {
        Some(d) => record(client, &d.uid).await?.unwrap_or_default(),
        None => Record::default(),
    };
    // What other projects applied, and what custom resources own (also for
    // specs without a DeploymentConfig, which own nothing but take nothing
    // over either): never taken over without --allowconflicts.
    let own_uid = specs.deployment.as_ref().map(|d| d.uid.as_str());
    let owners: HashMap<Applied, Owner> = {
        let all: Vec<Record> = client.get("/v1/deployments").await?;
        all.into_iter()
            .filter(|r| Some(r.uid.as_str()) != own_uid)
            .flat_map(|r| {
                let owner = Owner::of(&r);
                r.resources.into_iter().map(move |a| (a, owner.clone()))
            })
            .collect()
    };
    let claimed = preflight(client, &specs, &previous, &owners, &opts, &mut summary).await?;
    let mut applied: BTreeSet<Applied> = BTreeSet::new();
    let mut result = apply_all(
        client,
        &specs,
        &root,
        &previous,
        &opts,
        &mut applied,
        &mut summary,
    )
    .await;
    // What this project applied before and no longer declares: deleted with
    // --delete (triggers first), else kept in the record.
    let mut kept: Vec<Applied> = previous.resources.difference(&applied).cloned().collect();
    // A claim of an apply stopped before it made the resource (or one
    // deleted by hand since): nothing to keep or delete, and not said to be.
    // Kept when the server cannot say (what was applied is recorded below).
    let mut there = Vec::with_capacity(kept.len());
    for a in kept {
        if !matches!(client.get_opt::<Value>(&a.path()).await, Ok(None)) {
            there.push(a);
        }
    }
    kept = there;
    if opts.delete && result.is_ok() {
        kept.sort_by_key(|a| a.delete_rank());
        let mut still = Vec::new();
        let mut gone = Vec::new();
        for a in kept {
            // A custom resource's now: not this project's to delete.
            if let Some(Owner::CustomResource(cr)) = owners.get(&a) {
                summary.note(format!(
                    "kept      {} (owned by the custom resource {cr})",
                    a.label()
                ));
                continue;
            }
            gone.push(a);
        }
        if let Err(e) = check_deletable(client, &gone, "deleted").await {
            result = Err(e);
            still.append(&mut gone);
        }
        for (a, r) in delete_all(client, gone).await {
            match r {
                Ok(()) => summary.add("deleted", a.label()),
                Err(e) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                    still.push(a);
                }
            }
        }
        kept = still;
    }
    // What is still declared but was not reached is not "no longer declared".
    let declared: BTreeSet<Applied> = specs.resources.iter().map(Applied::of).collect();
    if result.is_err() {
        for a in declared.difference(&applied) {
            summary.note(format!(
                "not applied {} (applying stopped at the error)",
                a.label()
            ));
        }
    }
    if !opts.delete {
        for a in kept.iter().filter(|a| !declared.contains(a)) {
            summary.note(format!(
                "kept      {} (no longer declared; `spec apply --delete` deletes it)",
                a.label()
            ));
        }
    }
    if let Some(d) = &specs.deployment {
        // Recorded even when applying or deleting stopped half-way, so that
        // `destroy` and `--delete` still find everything that exists.
        let mut resources = applied;
        resources.extend(kept);
        if result.is_err() {
            // What it claimed and did not get to (or made without hearing so,
            // a connection lost mid-call) stays claimed for the next apply.
            resources.extend(claimed);
        }
        put_record(client, d, resources).await?;
    }
    // What was changed before an error is said before it.
    summary.print(result.is_ok());
    result?;
    if opts.wait {
        let packages: Vec<&Resource> = specs
            .resources
            .iter()
            .filter(|r| r.kind == Kind::Package)
            .collect();
        wait_for_builds(client, &packages).await?;
    }
    Ok(())
}

/// Waits until each package's build has ended; says how each ended, and fails
/// when one failed.
async fn wait_for_builds(client: &Client, packages: &[&Resource]) -> Result<()> {
    let mut failed = Vec::new();
    let mut failed_names: Vec<String> = Vec::new();
    for r in packages {
        let path = with_namespace(&format!("/v1/packages/{}", r.name), &r.namespace);
        let status = loop {
            let p: Value = client.get(&path).await?;
            let status = p["status"]["buildstatus"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if !matches!(status.as_str(), "pending" | "running") {
                break status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        };
        if status != "none" {
            println!("built     {} ({status})", r.label());
        }
        if status == "failed" {
            failed.push(r.label());
            failed_names.push(match r.namespace.as_str() {
                "default" => r.name.clone(),
                ns => format!("{} -n {ns}", r.name),
            });
        }
    }
    if !failed.is_empty() {
        let commands: Vec<String> = failed_names
            .iter()
            .map(|n| format!("`fusion pkg info --name {n}`"))
            .collect();
        bail!(
            "{} failed to build ({} shows the end of its log)",
            failed.join(", "),
            commands.join(", ")
        );
    }
    Ok(())
}

/// Before anything is made: refuses, all at once, what this project may not
/// take without --allowconflicts (another project's, a custom resource's, or,
/// with a DeploymentConfig, one that exists and it did not apply), as
/// Fission's apply checks conflicts before applying; then records as this
/// project's what it declares and does not exist yet. An apply cut short
/// (Ctrl-C, a killed shell, a lost connection) between making a resource and
/// recording it would otherwise leave the resource no project's, and the next
/// apply would refuse it as someone else's. A claim on something never made
/// costs nothing: a complete apply's record drops it (one stopped by an error
/// keeps it), and deletes skip what is not there. What it takes over from
/// another project with --allowconflicts becomes this project's alone (as
/// Fission rewrites its `fission-uid`): the other's destroy leaves it.
/// Answers the new claims.
async fn preflight(
    client: &Client,
    specs: &Specs,
    previous: &Record,
    owners: &HashMap<Applied, Owner>,
    opts: &ApplyOpts,
    summary: &mut Summary,
) -> Result<BTreeSet<Applied>> {
    let mut refused = Vec::new();
    let mut claimed = previous.resources.clone();
    let mut taken: BTreeMap<String, BTreeSet<Applied>> = BTreeMap::new();
    for r in &specs.resources {
        let a = Applied::of(r);
        if let (true, Some(_), Some(Owner::Project(uid))) =
            (opts.allow_conflicts, &specs.deployment, owners.get(&a))
        {
            taken.entry(uid.clone()).or_default().insert(a.clone());
            claimed.insert(a.clone());
        }
        match owners.get(&a) {
            _ if opts.allow_conflicts => {}
            Some(Owner::CustomResource(cr)) => refused.push(format!(
                "{}: {} is owned by the custom resource {cr} in the cluster, which wins: change it there (kubectl), or use --allowconflicts to change it here until the next reconcile reverts it",
                r.at,
                r.label()
            )),
            Some(Owner::Project(uid)) => refused.push(format!(
                "{}: {} was applied by another project (uid {uid}); use --allowconflicts to take it over",
                r.at,
                r.label()
            )),
            None => {}
        }
        if specs.deployment.is_none() || claimed.contains(&a) || owners.contains_key(&a) {
            continue;
        }
        match client.get_opt::<Value>(&a.path()).await? {
            None => {
                claimed.insert(a);
            }
            Some(_) if !opts.allow_conflicts => refused.push(format!(
                "{}: {} already exists and was not applied by this project; use --allowconflicts to take it over",
                r.at,
                r.label()
            )),
            Some(_) => {}
        }
    }
    // What the folder needs from the server and the server lacks: refused
    // now, not by the server half-way through the apply.
    for (at, label, kind, ns, name) in &specs.on_server {
        let path = with_namespace(&format!("{}/{name}", kind_collection(*kind)), ns);
        if client.get_opt::<Value>(&path).await?.is_none() {
            refused.push(format!(
                "{at}: {label} references {} {ns}/{name}, which is neither in the specs nor on the server",
                kind.name()
            ));
        }
    }
    refused.extend(route_clashes(client, specs).await?);
    // One line for one problem (as every CLI error); one a line for several.
    match refused.as_slice() {
        [] => {}
        [one] => bail!("nothing applied: {one}"),
        all => bail!(
            "nothing applied: {} problems:\n{}",
            all.len(),
            all.join("\n")
        ),
    }
    if let Some(d) = &specs.deployment {
        if claimed.len() > previous.resources.len() {
            put_record(client, d, claimed.clone()).await?;
        }
    }
    // Recorded as this project's first: an apply cut short here leaves
    // them claimed twice, never by no one.
    for (uid, resources) in taken {
        let Some(mut other) = record(client, &uid).await? else {
            continue;
        };
        other.resources.retain(|a| !resources.contains(a));
        client
            .put_json::<Value>(
                &format!("/v1/deployments/{uid}"),
                &serde_json::to_value(&other)?,
            )
            .await
            .with_context(|| format!("cannot take resources over from project {uid}"))?;
        for a in resources {
            summary.note(format!("took over {} from project {uid}", a.label()));
        }
    }
    Ok(claimed.difference(&previous.resources).cloned().collect())
}

/// The folder's routes that would answer the same requests as a route on the
/// server that the folder does not declare (in any namespace: they share the
/// URL paths): the server would refuse them half-way through the apply,
/// after changing what came before them.
async fn route_clashes(client: &Client, specs: &Specs) -> Result<Vec<String>> {
    let declared: Vec<(&Resource, triggers::Route)> = specs
        .resources
        .iter()
        .filter(|r| r.kind == Kind::HttpTrigger)
        .filter_map(|r| {
            let mut route: triggers::Route = serde_json::from_value(r.body.clone()).ok()?;
            route.namespace.clone_from(&r.namespace);
            Some((r, route))
        })
        .collect();
    if declared.is_empty() {
        return Ok(Vec::new());
    }
    let on_server: Vec<triggers::Route> = client.get("/v1/routes?all_namespaces=true").await?;
    let keys: BTreeSet<String> = declared.iter().map(|(_, r)| r.key()).collect();
    let mut clashes = Vec::new();
    for (r, route) in &declared {
        let other = on_server
            .iter()
            .filter(|o| !keys.contains(&o.key()))
            .find(|o| o.answers_as(route));
        if let Some(other) = other {
            let path = other
                .url
                .clone()
                .or_else(|| other.prefix.as_ref().map(|p| format!("{p}*")))
                .unwrap_or_default();
            let place = if other.namespace == route.namespace {
                String::new()
            } else {
                format!(" in namespace {:?}", other.namespace)
            };
            clashes.push(format!(
                "{}: {} would answer the same requests as route {:?}{place} on the server ({path}), which this folder does not declare: change one of them",
                r.at,
                r.label(),
                other.name
            ));
        }
    }
    Ok(clashes)
}

async fn put_record(client: &Client, d: &Deployment, resources: BTreeSet<Applied>) -> Result<()> {
    let rec = Record {
        name: d.name.clone(),
        uid: d.uid.clone(),
        resources,
    };
    client
        .put_json::<Value>(
            &format!("/v1/deployments/{}", d.uid),
            &serde_json::to_value(&rec)?,
        )
        .await
        .context("cannot record what this project applied")?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn apply_all(
    client: &Client,
    specs: &Specs,
    root: &Path,
    previous: &Record,
    opts: &ApplyOpts,
    applied: &mut BTreeSet<Applied>,
    summary: &mut Summary,
) -> Result<()> {
    let mut uploads: HashMap<String, Value> = HashMap::new();
    for kind in Kind::ALL {
        for r in specs.resources.iter().filter(|r| r.kind == kind) {
            let a = Applied::of(r);
            let mut body = r.body.clone();
            for (field, src) in &r.archives {
                let uploaded = upload(client, specs, root, src, &mut uploads)
                    .await
                    .with_context(|| format!("{}: {}", r.at, r.label()))?;
                body[field.as_str()] = uploaded;
            }
            let owned = previous.resources.contains(&a) || specs.deployment.is_none();
            if r.kind == Kind::HttpTrigger {
                keep_canary_weights(client, specs, r, &mut body).await?;
            }
            let outcome = if let Some(file) = &r.workflow_file {
                match std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read workflow file {}", file.display()))
                {
                    Ok(yaml) => {
                        apply_workflow(client, r, yaml, owned || opts.allow_conflicts).await
                    }
                    Err(e) => Err(e),
                }
            } else if let Some(source) = &r.workflow_source {
                apply_workflow(client, r, source.clone(), owned || opts.allow_conflicts).await
            } else if let Some(archive) = &r.workflow_archive {
                match workflow_in_archive(specs, root, archive) {
                    Ok(yaml) => {
                        apply_workflow(client, r, yaml, owned || opts.allow_conflicts).await
                    }
                    Err(e) => Err(e),
                }
            } else {
                upsert(client, r, body, owned || opts.allow_conflicts).await
            }
            .with_context(|| format!("{}: {}", r.at, r.label()))?;
            applied.insert(a);
            summary.add(outcome, r.label());
            // What a Fission image stands for here: said, not left to guess.
            if r.kind == Kind::Environment && r.body.get("image").is_some() {
                let path = with_namespace(&format!("{}/{}", collection(r), r.name), &r.namespace);
                if let Some(line) = client
                    .get_opt::<Value>(&path)
                    .await?
                    .as_ref()
                    .and_then(crate::cli::image_use_line)
                {
                    summary.note(line);
                }
            }
        }
    }
    Ok(())
}

/// The folder's ArchiveUploadSpec `name` (`archive://NAME`).
fn archive_spec<'a>(specs: &'a Specs, name: &str) -> Result<&'a model::ArchiveSpec> {
    specs
        .archives
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| anyhow!("unknown archive archive://{name}"))
}

/// The workflow a Fission Workflows function's package holds: its one file.
fn workflow_in_archive(specs: &Specs, root: &Path, src: &ArchiveSource) -> Result<String> {
    let bytes = match src {
        ArchiveSource::Upload(name) => {
            let files = archive::matches(archive_spec(specs, name)?, root)?;
            let [file] = files.as_slice() else {
                bail!(
                    "archive://{name} holds {} files: a function of Fission Workflows' `workflow` environment is one workflow file",
                    files.len()
                );
            };
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
        }
        ArchiveSource::Literal(bytes) => bytes.clone(),
        ArchiveSource::File(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
    };
    workflow_text(bytes)
}

/// The workflow file of a Fission Workflows function's package (the file
/// itself, as `fission fn create --src W.wf.yaml` stores it).
pub fn workflow_text(bytes: Vec<u8>) -> Result<String> {
    if bytes.starts_with(b"PK") {
        bail!("the package is a zip archive: a function of Fission Workflows' `workflow` environment is one workflow file");
    }
    String::from_utf8(bytes).map_err(|_| anyhow!("the package's workflow file is not UTF-8 text"))
}

/// Uploads an archive once per apply; answers the stored code's reference.
async fn upload(
    client: &Client,
    specs: &Specs,
    root: &Path,
    src: &ArchiveSource,
    done: &mut HashMap<String, Value>,
) -> Result<Value> {
    let (key, filename, bytes) = match src {
        ArchiveSource::Upload(name) => {
            let built = archive::build(archive_spec(specs, name)?, root)?;
            (format!("archive://{name}"), built.filename, built.bytes)
        }
        ArchiveSource::Literal(bytes) => ("literal".to_string(), "user".to_string(), bytes.clone()),
        ArchiveSource::File(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read code file {}", path.display()))?;
            let filename = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow!("{} has no file name", path.display()))?
                .to_string();
            (path.display().to_string(), filename, bytes)
        }
    };
    if let Some(v) = done.get(&key).filter(|_| key != "literal") {
        return Ok(v.clone());
    }
    let req = client
        .request(reqwest::Method::POST, "/v1/archives")
        .query(&[("filename", filename.as_str())])
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(bytes);
    let v: Value = client.send(req).await?.json().await?;
    done.insert(key, v.clone());
    Ok(v)
}

/// A route that a CanaryConfig of the folder moves keeps the weights the
/// canary gave it when it shares its requests between the same functions as
/// declared: applying the folder again does not undo the canary's steps (or
/// its rollback).
async fn keep_canary_weights(
    client: &Client,
    specs: &Specs,
    r: &Resource,
    body: &mut Value,
) -> Result<()> {
    let moved = specs.resources.iter().any(|c| {
        c.kind == Kind::CanaryConfig
            && c.namespace == r.namespace
            && c.body.get("trigger").and_then(Value::as_str) == Some(r.name.as_str())
    });
    let Some(Value::Object(declared)) = body.get("function_weights").cloned() else {
        return Ok(());
    };
    if !moved {
        return Ok(());
    }
    let path = with_namespace(&format!("{}/{}", collection(r), r.name), &r.namespace);
    let live = client.get_opt::<Value>(&path).await?;
    if let Some(Value::Object(live)) = live.as_ref().and_then(|v| v.get("function_weights")) {
        let names = |m: &serde_json::Map<String, Value>| m.keys().cloned().collect::<BTreeSet<_>>();
        if names(live) == names(&declared) {
            body["function_weights"] = Value::Object(live.clone());
        }
    }
    Ok(())
}

/// Creates the resource, or updates it when it differs in any field the spec
/// gives (fields the server fills in aside). A resource that exists but was not
/// applied by this project is refused unless `take_over`.
pub(crate) async fn upsert(
    client: &Client,
    r: &Resource,
    body: Value,
    take_over: bool,
) -> Result<&'static str> {
    let coll = collection(r);
    let path = with_namespace(&format!("{coll}/{}", r.name), &r.namespace);
    match client.get_opt::<Value>(&path).await? {
        None => {
            client
                .post_json::<Value>(&with_namespace(coll, &r.namespace), &body)
                .await?;
            Ok("created")
        }
        Some(existing) => {
            if !take_over {
                bail!(
                    "{} already exists and was not applied by this project; use --allowconflicts to take it over",
                    r.label()
                );
            }
            if r.kind == Kind::Secret {
                // Values are never shown: the server says whether they changed.
                let answer: Value = client.put_json(&path, &body).await?;
                let same = answer.get("unchanged").and_then(Value::as_bool) == Some(true);
                return Ok(if same { "unchanged" } else { "updated" });
            }
            // The whole resource is sent (so a field taken out of the spec goes
            // back to its default); the server changes nothing when it is the
            // same, and what it answers says which. A package moved to another
            // environment takes its functions along (those of the folder move
            // with it, and are then unchanged).
            let put = if r.kind == Kind::Package {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("{path}{sep}move_functions=true")
            } else {
                path.clone()
            };
            let answer: Value = client.put_json(&put, &body).await?;
            Ok(if same_resource(&existing, &answer) {
                "unchanged"
            } else {
                "updated"
            })
        }
    }
}

/// Whether two answers of the server are the same resource, its bookkeeping
/// (generation, status) aside.
fn same_resource(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("generation");
            o.remove("status");
            o.remove("unchanged");
        }
        v
    };
    strip(a) == strip(b)
}

/// A workflow sent as its source: a Fusion workflow (`file:` a `*.wf.yaml`) or
/// an RFC-0022 `Workflow` document.
pub(crate) async fn apply_workflow(
    client: &Client,
    r: &Resource,
    yaml: String,
    take_over: bool,
) -> Result<&'static str> {
    let name = r.name.as_str();
    match client
        .get_opt::<Value>(&format!("/v1/workflows/{name}"))
        .await?
    {
        None => {
            let req = client
                .request(reqwest::Method::POST, "/v1/workflows")
                .query(&[("name", name)])
                .header("content-type", "application/yaml")
                .body(yaml);
            client.send(req).await?;
            Ok("created")
        }
        Some(_) if !take_over => bail!(
            "{} already exists and was not applied by this project; use --allowconflicts to take it over",
            r.label()
        ),
        Some(current) if current.get("source").and_then(Value::as_str) == Some(yaml.as_str()) => {
            Ok("unchanged")
        }
        Some(_) => {
            let req = client
                .request(reqwest::Method::PUT, &format!("/v1/workflows/{name}"))
                .header("content-type", "application/yaml")
                .body(yaml);
            client.send(req).await?;
            Ok("updated")
        }
    }
}

/// Refuses, before anything is deleted, to delete `items` when something
/// that is not among them still uses one (a route made by hand that calls a
/// function of the project, a function that runs on its environment, a run
/// in flight): the server says what, and the deletes would stop half-way at
/// the first of them. Fission deletes such a function and leaves its users
/// pointing at nothing; Fusion's deletes refuse that, so refusing the whole
/// set at once is what keeps a project whole.
async fn check_deletable(client: &Client, items: &[Applied], verb: &str) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let resources: Vec<Value> = items
        .iter()
        .map(|a| serde_json::json!({"kind": a.kind, "namespace": a.namespace, "name": a.name}))
        .collect();
    let body = serde_json::json!({ "resources": resources });
    let answer: Value = match client.post_json("/v1/deletions/check", &body).await {
        Ok(v) => v,
        // A server from before the check: its deletes still refuse one by one.
        Err(e) if e.downcast_ref::<crate::client::NotFound>().is_some() => return Ok(()),
        Err(e) => return Err(e.context("cannot check what the deletes would leave")),
    };
    let label = |v: &Value| {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Applied {
            kind: s("kind"),
            namespace: s("namespace"),
            name: s("name"),
            collection: String::new(),
        }
        .label()
    };
    let mut runs = false;
    let said: Vec<String> = answer["blocked"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let users: Vec<String> = b["used_by"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| match u["kind"].as_str() {
                    Some("Run") => {
                        runs = true;
                        format!("the run {} in flight", u["name"].as_str().unwrap_or(""))
                    }
                    _ => label(u),
                })
                .collect();
            format!("{} is still used by {}", label(b), users.join(", "))
        })
        .collect();
    if said.is_empty() {
        return Ok(());
    }
    bail!(
        "nothing {verb}: {}; delete or change {} first{}",
        said.join("; "),
        if said.len() == 1 { "that" } else { "those" },
        if runs {
            " (let runs end, or cancel them)"
        } else {
            ""
        }
    )
}

/// Deletes `items`, triggers first and environments last. One that another of
/// them still uses (a 409: a workflow that another workflow runs, a function
/// such a workflow runs) is tried again after the rest, until a round deletes
/// nothing more. Each item's result, in the order they ended.
async fn delete_all(client: &Client, mut items: Vec<Applied>) -> Vec<(Applied, Result<()>)> {
    items.sort_by_key(|a| a.delete_rank());
    let mut done = Vec::new();
    loop {
        let mut progress = false;
        let mut in_use = Vec::new();
        for a in items {
            match delete_if_present(client, &a).await {
                Err(e)
                    if e.downcast_ref::<crate::client::ApiError>()
                        .is_some_and(|api| api.status == 409) =>
                {
                    in_use.push((a, e))
                }
                r => {
                    progress |= r.is_ok();
                    done.push((a, r));
                }
            }
        }
        if in_use.is_empty() || !progress {
            done.extend(in_use.into_iter().map(|(a, e)| (a, Err(e))));
            return done;
        }
        items = in_use.into_iter().map(|(a, _)| a).collect();
    }
}

pub(crate) async fn delete_if_present(client: &Client, a: &Applied) -> Result<()> {
    // A function or workflow is refused while workflows run it (not deleted
    // with a warning): what runs it goes first, and one of them left outside
    // the project keeps it.
    let mut path = a.path();
    if [
        kind_collection(Kind::Function),
        kind_collection(Kind::Workflow),
    ]
    .contains(&a.collection.as_str())
    {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str("if_unused=true");
    }
    match client.delete(&path).await {
        Ok(()) => Ok(()),
        Err(e) if e.downcast_ref::<crate::client::NotFound>().is_some() => Ok(()),
        Err(e) => Err(e.context(format!("cannot delete {}", a.label()))),
    }
}

// ---- destroy and list ----

/// The project's uid, from its DeploymentConfig only: a project whose other
/// files no longer read (sources removed, say) can still be listed and destroyed.
fn deployment_uid(source: &Source) -> Result<String> {
    for file in load::spec_files(&source.path)? {
        let Ok(docs) = load::read_file(&file) else {
            continue;
        };
        for doc in docs {
            if model::str_at(&doc.value, "kind") == Some("DeploymentConfig") {
                if let Some(uid) = model::str_at(&doc.value, "uid") {
                    crate::declared::check_uid(uid)
                        .map_err(|e| anyhow!("{}: {e}", doc.at("uid")))?;
                    return Ok(uid.to_string());
                }
            }
        }
    }
    bail!(
        "no DeploymentConfig in {}: nothing records what this project applied",
        source.path.display()
    )
}

/// Deletes everything this project applied (triggers first, environments last):
/// what its record holds, and nothing it did not apply.
pub async fn destroy(client: &Client, source: &Source) -> Result<()> {
    let uid = deployment_uid(source)?;
    let Some(rec) = record(client, &uid).await? else {
        println!("nothing applied under uid {uid}");
        return Ok(());
    };
    let custom_resources = custom_resource_owners(client).await?;
    let mut order: Vec<&Applied> = rec.resources.iter().collect();
    order.sort_by_key(|a| a.delete_rank());
    let mut present = Vec::new();
    let mut remaining = rec.resources.clone();
    for a in order {
        if let Some(cr) = custom_resources.get(a) {
            println!(
                "kept      {} (owned by the custom resource {cr})",
                a.label()
            );
            continue;
        }
        if client.get_opt::<Value>(&a.path()).await?.is_some() {
            present.push(a.clone());
        } else {
            remaining.remove(a);
        }
    }
    // Everything checked before anything is deleted: a project whose
    // function a route made by hand still calls is left whole, not without
    // its routes.
    check_deletable(client, &present, "destroyed").await?;
    let mut failed = None;
    for (a, r) in delete_all(client, present).await {
        match r {
            Ok(()) => {
                println!("deleted   {}", a.label());
                remaining.remove(&a);
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        // The record keeps what is still there, not what is gone.
        let rec = Record {
            resources: remaining,
            ..rec
        };
        client
            .put_json::<Value>(
                &format!("/v1/deployments/{uid}"),
                &serde_json::to_value(&rec)?,
            )
            .await
            .context("cannot record what this project still has")?;
        return Err(e);
    }
    match client.delete(&format!("/v1/deployments/{uid}")).await {
        Ok(()) => Ok(()),
        Err(e) if e.downcast_ref::<crate::client::NotFound>().is_some() => Ok(()),
        Err(e) => Err(e),
    }
}

/// What a project applied, and whether each is still there.
/// What a project applied, and whether each is still there: a table, or
/// with `json` one object (`project` null when nothing was applied).
pub async fn list(client: &Client, source: &Source, uid: Option<String>, json: bool) -> Result<()> {
    let uid = match uid {
        Some(u) => {
            crate::declared::check_uid(&u).map_err(|e| anyhow!("--deployid: {e}"))?;
            u
        }
        None => deployment_uid(source)?,
    };
    let Some(rec) = record(client, &uid).await? else {
        if json {
            println!(
                "{}",
                serde_json::json!({"project": null, "uid": uid, "resources": []})
            );
        } else {
            println!("nothing applied under uid {uid}");
        }
        return Ok(());
    };
    let mut rows = Vec::new();
    for a in &rec.resources {
        let state = if client.get_opt::<Value>(&a.path()).await?.is_some() {
            "present"
        } else {
            "missing"
        };
        rows.push((a, state));
    }
    if json {
        let resources: Vec<Value> = rows
            .iter()
            .map(|(a, state)| {
                serde_json::json!({"kind": a.kind, "namespace": a.namespace, "name": a.name, "state": state})
            })
            .collect();
        let v = serde_json::json!({"project": rec.name, "uid": uid, "resources": resources});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("project {} (uid {uid})", rec.name);
    println!("{:<20} {:<12} {:<32} STATE", "KIND", "NAMESPACE", "NAME");
    for (a, state) in rows {
        println!("{:<20} {:<12} {:<32} {state}", a.kind, a.namespace, a.name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_keeps_a_readme_the_folder_has() {
        let dir = tempfile::tempdir().unwrap();
        let specs = dir.path().join("specs");
        std::fs::create_dir_all(&specs).unwrap();
        std::fs::write(specs.join("README"), "my notes\n").unwrap();
        init(&specs, Some("p".into()), None).unwrap();
        assert_eq!(
            std::fs::read_to_string(specs.join("README")).unwrap(),
            "my notes\n"
        );
        assert!(specs.join("fission-deployment-config.yaml").exists());
        let fresh = dir.path().join("fresh");
        init(&fresh, Some("q".into()), None).unwrap();
        assert_eq!(
            std::fs::read_to_string(fresh.join("README")).unwrap(),
            README
        );
    }

    #[test]
    fn project_names_become_labels() {
        assert_eq!(kubify("My_Project"), "my-project");
        assert_eq!(kubify("123abc"), "abc");
        assert_eq!(kubify("___"), "default");
    }

    #[test]
    fn delete_order_is_the_reverse_of_apply() {
        let a = |kind: &str| Applied {
            kind: kind.into(),
            namespace: "default".into(),
            name: "x".into(),
            collection: "/c".into(),
        };
        assert!(a("HTTPTrigger").delete_rank() < a("Function").delete_rank());
        assert!(a("Function").delete_rank() < a("Package").delete_rank());
        assert!(a("Package").delete_rank() < a("Environment").delete_rank());
    }
}
