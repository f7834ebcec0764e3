//! The custom resources' controller: one kube-rs `Controller` per kind
//! (Environment, Package, Function, HTTPTrigger, TimeTrigger,
//! MessageQueueTrigger, Workflow of `fission.io/v1`), over `DynamicObject`s.
//!
//! Each reconcile reads the object as `fusion spec apply` reads a document
//! (src/spec/model.rs, its errors naming the field), waits for what it
//! references, records that this custom resource owns the Fusion object (a
//! deployment record with uid `k8s-<uid>`, which `spec apply` will not take
//! over), creates or updates it through Fusion's own API, and says how it went
//! in the object's `Ready` condition. A finalizer deletes the Fusion object
//! when the custom resource goes.
//!
//! Who wins: the custom resource. Every object is applied again at every
//! change (of its generation), at the controller's start and every `resync`, so a change made in Fusion (CLI, API) to an
//! object a custom resource owns is reverted.
//!
//! Once applied, an object is not applied again until its generation changes
//! or its resync is due: the event of its own status write (or of any other
//! metadata change) sends nothing to Fusion. A `literal` package's code is
//! uploaded when new or changed, not at each resync.
//!
//! Errors: an invalid spec (or one Fusion's API refuses as such, 400 or 422)
//! waits for the next change of the object; a missing reference is tried again
//! every few seconds; Fusion or the cluster failing (5xx, 408, 409, 429, a
//! refused token) is tried again with a growing delay.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, ResourceExt};
use ::kube::core::GroupVersionKind;
use ::kube::runtime::controller::{self, Action, Controller};
use ::kube::runtime::finalizer::{self, finalizer, Event as Finalize};
use ::kube::runtime::watcher;
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::status::{self, Ready};
use super::watch_trigger::{self, Watches};
use super::{Health, Settings};
use crate::client::{ApiError, Client};
use crate::spec::{self, load, model};

/// The finalizer the controller puts on every custom resource it applies.
pub const FINALIZER: &str = "fusion.dev/cleanup";

/// How often a custom resource waiting for another is tried again.
const PENDING_RETRY: Duration = Duration::from_secs(3);

/// Fission's kind whose objects run watches rather than Fusion objects.
const WATCH_TRIGGER: &str = "KubernetesWatchTrigger";

/// The kinds reconciled, with their plurals (Fission's CRD names).
pub const KINDS: [(&str, &str); 8] = [
    ("Environment", "environments"),
    ("Package", "packages"),
    ("Function", "functions"),
    ("HTTPTrigger", "httptriggers"),
    ("TimeTrigger", "timetriggers"),
    ("MessageQueueTrigger", "messagequeuetriggers"),
    ("Workflow", "workflows"),
    (WATCH_TRIGGER, "kuberneteswatchtriggers"),
];

pub fn api_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("fission.io", "v1", kind), plural)
}

/// What one kind's reconciles share.
struct Ctx {
    kind: &'static str,
    plural: &'static str,
    resource: ApiResource,
    kube: ::kube::Client,
    fusion: Client,
    resync: Duration,
    health: Health,
    watches: Arc<Watches>,
    /// Failures in a row per object (`namespace/name`), for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// What the last reconcile that reached Fusion made of each object
    /// (`namespace/name`): at which generation, the reason it wrote, and when
    /// it is due again (`None`: at its next change). A reconcile of the same
    /// generation before then (the event of its own status write, a metadata
    /// change) sends nothing to Fusion.
    done: Mutex<HashMap<String, Done>>,
    /// What Fusion answered to the upload of each object's `literal` code
    /// (`namespace/name field`), with the code's sha256: the same code is not
    /// uploaded again at a resync.
    uploads: Mutex<HashMap<String, (String, Value)>>,
    /// The namespace of Fusion's function pods (`--kube-namespace`), where
    /// no KubernetesWatchTrigger may watch.
    functions_namespace: String,
}

/// See `Ctx::done`.
struct Done {
    generation: Option<i64>,
    reason: &'static str,
    due: Option<Instant>,
}

impl Ctx {
    /// When the object's status already says what its last reconcile made of
    /// this generation and it is not due again (a resync, a retry): how long
    /// until it is.
    fn fresh(&self, obj: &DynamicObject) -> Option<Action> {
        let status = obj.data.get("status")?;
        let observed = status.get("observedGeneration").and_then(Value::as_i64);
        if observed.is_none() || observed != obj.metadata.generation {
            return None;
        }
        let said = status
            .get("conditions")
            .and_then(Value::as_array)?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .get("reason")
            .and_then(Value::as_str)?
            .to_string();
        let done = self.done.lock().ok()?;
        let d = done.get(&key_of(obj))?;
        if d.generation != obj.metadata.generation || d.reason != said {
            return None;
        }
        match d.due {
            None => Some(Action::await_change()),
            Some(due) => {
                // A timer that fires a hair early counts as due.
                let left = due.checked_duration_since(Instant::now())?;
                (left > Duration::from_millis(20)).then(|| Action::requeue(left))
            }
        }
    }

    fn set_done(&self, obj: &DynamicObject, done: Option<(&'static str, Option<Duration>)>) {
        if let Ok(mut m) = self.done.lock() {
            match done {
                Some((reason, after)) => {
                    m.insert(
                        key_of(obj),
                        Done {
                            generation: obj.metadata.generation,
                            reason,
                            due: after.map(|d| Instant::now() + d),
                        },
                    );
                }
                None => {
                    m.remove(&key_of(obj));
                }
            }
        }
    }

    /// The delay before the next try of an object that failed `n` times in
    /// a row: 0.5 s, doubling up to 5 minutes.
    fn backoff(n: u32) -> Duration {
        Duration::from_millis(500)
            .saturating_mul(1 << n.saturating_sub(1).min(10))
            .min(Duration::from_secs(300))
    }

    fn failures(&self, obj: &DynamicObject) -> u32 {
        self.failures
            .lock()
            .ok()
            .and_then(|f| f.get(&key_of(obj)).copied())
            .unwrap_or(0)
    }
}

/// Why a reconcile failed; all of these are tried again with a backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fusion's API is unreachable or failed (5xx).
    #[error("Fusion's API failed: {0}")]
    Fusion(String),
    /// The cluster refused or failed a request; the message says what to do.
    #[error("{0}")]
    Kube(String),
}

/// Why a custom resource is not applied.
enum Problem {
    /// The spec is wrong: waits for the next change.
    Invalid(String),
    /// Something it references is not in Fusion yet.
    Pending(String),
    /// Fusion failed: tried again.
    Failed(String),
}

/// An error of Fusion's API: a 400 or 422 is the spec's fault (waits for its
/// next change); anything else, a 409 of a concurrent apply, a 408 or 429 as
/// much as a 5xx, is tried again with a backoff. A 401 or 403 says that the
/// controller's admin token was refused.
fn fusion_problem(e: anyhow::Error) -> Problem {
    let message = format!("{e:#}");
    match e.downcast_ref::<ApiError>().map(|api| api.status) {
        Some(400 | 422) => Problem::Invalid(message),
        Some(status @ (401 | 403)) => Problem::Failed(format!(
            "Fusion's API refused the controller's admin token ({status}): was the token \
             file (--token-file) replaced while the server ran? Restart the server to read \
             it again ({message})"
        )),
        _ => Problem::Failed(message),
    }
}

/// What to say of a failed request to the cluster: for RBAC, what to grant.
fn explain(err: &::kube::Error, verb: &str, what: &str, namespace: Option<&str>) -> String {
    let place = match namespace {
        Some(ns) => format!("in namespace {ns}"),
        None => "in all namespaces".to_string(),
    };
    match err {
        ::kube::Error::Api(s) if s.code == 403 => format!(
            "Fusion's service account may not {verb} {what} {place} (403 Forbidden): \
             grant it the ClusterRole in deploy/kubernetes/rbac.yaml"
        ),
        ::kube::Error::Api(s) if s.code == 404 && namespace.is_none() => format!(
            "cannot {verb} {what} (404 Not Found): is its custom resource definition \
             installed? (deploy/kubernetes/)"
        ),
        ::kube::Error::Api(s) => {
            format!("cannot {verb} {what} {place}: {} ({})", s.message, s.code)
        }
        other => format!("cannot {verb} {what} {place}: {other}"),
    }
}

fn explain_watch(err: &watcher::Error, what: &str) -> String {
    match err {
        watcher::Error::InitialListFailed(e) => explain(e, "list", what, None),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            explain(e, "watch", what, None)
        }
        watcher::Error::WatchError(s) if s.code == 410 => {
            format!("the watch of {what} expired (410 Gone): listing again")
        }
        watcher::Error::WatchError(s) if s.code == 403 => format!(
            "Fusion's service account may not watch {what} in all namespaces (403 Forbidden): \
             grant it the ClusterRole in deploy/kubernetes/rbac.yaml"
        ),
        other => format!("watching {what}: {other}"),
    }
}

/// Starts a controller per kind; they run until the tasks are aborted.
pub fn start(settings: Settings, health: Health) -> Vec<tokio::task::JoinHandle<()>> {
    let watches = Arc::new(Watches::new(settings.kube.clone(), settings.router.clone()));
    KINDS
        .iter()
        .map(|&(kind, plural)| {
            let resource = api_resource(kind, plural);
            let ctx = Arc::new(Ctx {
                kind,
                plural,
                resource: resource.clone(),
                kube: settings.kube.clone(),
                fusion: settings.fusion.clone(),
                resync: settings.resync,
                health: health.clone(),
                watches: watches.clone(),
                failures: Mutex::new(HashMap::new()),
                done: Mutex::new(HashMap::new()),
                uploads: Mutex::new(HashMap::new()),
                functions_namespace: settings.functions_namespace.clone(),
            });
            health.set(kind, None);
            let api = Api::<DynamicObject>::all_with(settings.kube.clone(), &resource);
            tokio::spawn(async move {
                let what = format!("{plural}.fission.io");
                Controller::new_with(api, watcher::Config::default(), resource)
                    .run(reconcile, error_policy, ctx.clone())
                    .for_each(|result| {
                        match result {
                            Ok(_) => ctx.health.set(kind, None),
                            // An expired watch is routine: listed again, not an error.
                            Err(controller::Error::QueueError(watcher::Error::WatchError(s)))
                                if s.code == 410 =>
                            {
                                tracing::info!(
                                    kind,
                                    "{}",
                                    explain_watch(&watcher::Error::WatchError(s), &what)
                                );
                            }
                            Err(controller::Error::QueueError(e)) => {
                                let message = explain_watch(&e, &what);
                                tracing::warn!(kind, "{message}");
                                ctx.health.set(kind, Some(message));
                            }
                            Err(controller::Error::ReconcilerFailed(e, object)) => {
                                ctx.health.set(kind, Some(format!("{object}: {e}")));
                            }
                            Err(e) => tracing::debug!(kind, "controller: {e}"),
                        }
                        std::future::ready(())
                    })
                    .await;
            })
        })
        .collect()
}

fn key_of(obj: &DynamicObject) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_else(|| "default".to_string());
    let key = key_of(&obj);
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.kube.clone(), &ns, &ctx.resource);
    let what = format!("{}.fission.io", ctx.plural);
    // Already done at this generation and not due again: nothing to send to
    // Fusion (nor a failure count to reset). The finalizer's own steps
    // (adding it, a deletion) always go on.
    let ours = obj.finalizers().iter().any(|f| f == FINALIZER);
    if ours && obj.metadata.deletion_timestamp.is_none() {
        if let Some(action) = ctx.fresh(&obj) {
            return Ok(action);
        }
    }
    let action = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalize::Apply(o) => apply(&api, &o, &ctx).await,
            Finalize::Cleanup(o) => cleanup(&o, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) => {
            Error::Kube(explain(&e, "add its finalizer to", &what, Some(&ns)))
        }
        finalizer::Error::RemoveFinalizer(e) => {
            Error::Kube(explain(&e, "remove its finalizer from", &what, Some(&ns)))
        }
        other => Error::Kube(other.to_string()),
    })?;
    if let Ok(mut f) = ctx.failures.lock() {
        f.remove(&key);
    }
    Ok(action)
}

/// Tried again after 0.5 s, doubling up to 5 minutes.
fn error_policy(obj: Arc<DynamicObject>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = key_of(&obj);
    let n = match ctx.failures.lock() {
        Ok(mut f) => {
            let n = f.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        }
        Err(_) => 1,
    };
    let delay = Ctx::backoff(n);
    tracing::warn!(kind = ctx.kind, object = %key, "{err}; trying again in {delay:?}");
    Action::requeue(delay)
}

/// The uid of the deployment record that says what this custom resource owns.
fn record_uid(obj: &DynamicObject) -> String {
    let id = obj
        .uid()
        .unwrap_or_else(|| format!("{}.{}", obj.namespace().unwrap_or_default(), obj.name_any()));
    format!("{}{id}", spec::CUSTOM_RESOURCE_UID_PREFIX)
}

/// Applies the object into Fusion and writes its status.
async fn apply(api: &Api<DynamicObject>, obj: &DynamicObject, ctx: &Ctx) -> Result<Action, Error> {
    let outcome = if ctx.kind == WATCH_TRIGGER {
        run_watch_trigger(obj, ctx).await
    } else {
        apply_to_fusion(obj, ctx).await
    };
    ctx.set_done(
        obj,
        Some(match &outcome {
            Ok(_) => ("Applied", Some(ctx.resync)),
            Err(Problem::Invalid(_)) => ("Invalid", None),
            Err(Problem::Pending(_)) => ("Pending", Some(PENDING_RETRY)),
            Err(Problem::Failed(_)) => ("Failed", Some(Ctx::backoff(ctx.failures(obj) + 1))),
        }),
    );
    let (ready, action, failure) = match outcome {
        Ok(said) => (Ready::applied(said), Action::requeue(ctx.resync), None),
        Err(Problem::Invalid(m)) => {
            tracing::warn!(kind = ctx.kind, object = %key_of(obj), "invalid: {m}");
            (Ready::not("Invalid", m), Action::await_change(), None)
        }
        Err(Problem::Pending(m)) => (
            Ready::not("Pending", m),
            Action::requeue(PENDING_RETRY),
            None,
        ),
        Err(Problem::Failed(m)) => (
            Ready::not("Failed", m.clone()),
            Action::await_change(),
            Some(m),
        ),
    };
    let written = write_status(api, obj, &ready, ctx).await;
    if let Some(m) = failure {
        return Err(Error::Fusion(m));
    }
    written?;
    Ok(action)
}

async fn write_status(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
    ready: &Ready,
    ctx: &Ctx,
) -> Result<(), Error> {
    let now = jiff::Timestamp::now();
    let now = jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string();
    let Some(status) = status::next(obj.data.get("status"), obj.metadata.generation, ready, &now)
    else {
        return Ok(());
    };
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map(|_| ())
    .map_err(|e| {
        Error::Kube(explain(
            &e,
            "update the status of",
            &format!("{}.fission.io", ctx.plural),
            obj.namespace().as_deref(),
        ))
    })
}

/// Reads, checks and applies the object; answers what became of it.
async fn apply_to_fusion(obj: &DynamicObject, ctx: &Ctx) -> Result<String, Problem> {
    let name = obj.name_any();
    let ns = obj.namespace().unwrap_or_else(|| "default".to_string());
    let doc = load::Document::object(json!({
        "apiVersion": "fission.io/v1",
        "kind": ctx.kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": obj.data.get("spec").cloned().unwrap_or(Value::Null),
    }));
    let specs = model::Specs::read_object(&doc, &ns);
    for w in &specs.warnings {
        tracing::info!(kind = ctx.kind, object = %key_of(obj), "{w}");
    }
    if !specs.errors.is_empty() {
        return Err(Problem::Invalid(specs.errors.join("; ")));
    }
    let Some(r) = specs.resources.into_iter().next() else {
        return Err(Problem::Invalid(format!(
            "a {} Fusion does not apply",
            ctx.kind
        )));
    };
    if let Some(said) = fission_workflows(obj, ctx, &r, &ns).await? {
        return Ok(said);
    }
    // What it references must be in Fusion first.
    for (kind, ref_ns, ref_name, field) in &r.refs {
        let path = spec::with_namespace(
            &format!("{}/{ref_name}", spec::kind_collection(*kind)),
            ref_ns,
        );
        let mut found = ctx
            .fusion
            .get_opt::<Value>(&path)
            .await
            .map_err(fusion_problem)?;
        // A trigger that names a workflow as its function (Fission
        // Workflows' way) targets the workflow, as the API does.
        let or_workflow = *kind == model::Kind::Function && ref_ns == model::DEFAULT_NAMESPACE;
        if found.is_none() && or_workflow {
            found = ctx
                .fusion
                .get_opt::<Value>(&format!("/v1/workflows/{ref_name}"))
                .await
                .map_err(fusion_problem)?;
        }
        if found.is_none() {
            return Err(Problem::Pending(format!(
                "{field}: waiting for {}{} {ref_ns}/{ref_name}, which is not in Fusion yet",
                kind.name(),
                if or_workflow { " (or workflow)" } else { "" }
            )));
        }
    }
    // Code comes with the object (`literal`); nothing is fetched. Code
    // uploaded before is not sent again.
    let mut body = r.body.clone();
    let mut reused = false;
    for (field, src) in &r.archives {
        match src {
            model::ArchiveSource::Literal(bytes) => {
                let slot = format!("{} {field}", key_of(obj));
                let digest = format!("{:x}", Sha256::digest(bytes));
                let held = ctx.uploads.lock().ok().and_then(|m| {
                    m.get(&slot)
                        .filter(|(d, _)| *d == digest)
                        .map(|(_, v)| v.clone())
                });
                body[field.as_str()] = match held {
                    Some(answer) => {
                        reused = true;
                        answer
                    }
                    None => {
                        let answer = ctx
                            .fusion
                            .upload_bytes("user", bytes.clone())
                            .await
                            .map_err(fusion_problem)?;
                        if let Ok(mut m) = ctx.uploads.lock() {
                            m.insert(slot, (digest, answer.clone()));
                        }
                        answer
                    }
                };
            }
            model::ArchiveSource::Upload(archive) => {
                return Err(Problem::Invalid(format!(
                    "spec.{field}.url: archive://{archive} names an ArchiveUploadSpec of a spec \
                     folder, which a custom resource has not: give the code as `literal` (base64)"
                )))
            }
            model::ArchiveSource::File(path) => {
                return Err(Problem::Invalid(format!(
                    "spec.{field}: a file ({}) cannot come with a custom resource: give the code \
                     as `literal` (base64)",
                    path.display()
                )))
            }
        }
    }
    let outcome = record_and_apply(obj, ctx, &r, body).await.map(applied_as);
    if reused && outcome.is_err() {
        // Perhaps what was uploaded before is gone: uploaded again next time,
        // and only then can the answer say the spec is wrong.
        forget_uploads(ctx, obj);
        if let Err(Problem::Invalid(m)) = outcome {
            return Err(Problem::Failed(m));
        }
    }
    outcome
}

fn applied_as(label: String) -> String {
    format!("applied to Fusion as {label}")
}

/// Fission Workflows' deploy, as the cluster holds it after `fission fn
/// create --env workflow --src W.wf.yaml` (or its spec applied): a Function of
/// the `workflow` environment, its Package (the workflow file, `literal`) and
/// that environment (image `fission/workflow-env`). Fusion runs workflows
/// itself, as `fusion spec apply` reads such a folder: the environment is not
/// applied, the package is applied with its function, and the function
/// becomes workflow W. Answers `None` for every other object (and for all
/// three when the namespace's `workflow` environment is a runtime of
/// another image).
async fn fission_workflows(
    obj: &DynamicObject,
    ctx: &Ctx,
    r: &model::Resource,
    ns: &str,
) -> Result<Option<String>, Problem> {
    let env_field = match r.kind {
        model::Kind::Environment => {
            let ours = r.name == model::WORKFLOW_ENV
                && r.body["image"]
                    .as_str()
                    .is_some_and(model::is_fission_workflows_image);
            if !ours {
                return Ok(None);
            }
            unapply(obj, ctx).await?;
            return Ok(Some(
                "not applied: Fission Workflows' environment (fission/workflow-env); Fusion runs \
                 workflows itself, and this namespace's functions of environment `workflow` \
                 become workflows"
                    .to_string(),
            ));
        }
        model::Kind::Package => "environment",
        model::Kind::Function => "env",
        _ => return Ok(None),
    };
    if r.body[env_field] != model::WORKFLOW_ENV || !workflows_env_is_fissions(ctx, ns).await? {
        return Ok(None);
    }
    if r.kind == model::Kind::Package {
        unapply(obj, ctx).await?;
        return Ok(Some(
            "not applied on its own: the workflow file of a function of Fission Workflows' \
             environment `workflow`, applied as that function's workflow"
                .to_string(),
        ));
    }
    if ns != model::DEFAULT_NAMESPACE {
        return Err(Problem::Invalid(format!(
            "metadata.namespace: {ns}: a function of Fission Workflows' environment `workflow` \
             becomes a Fusion workflow, and workflows have no namespace: deploy it in namespace \
             default"
        )));
    }
    let source = fission_workflows_source(ctx, r).await?;
    let workflow = model::Resource {
        kind: model::Kind::Workflow,
        namespace: ns.to_string(),
        name: r.name.clone(),
        body: Value::Null,
        archives: Vec::new(),
        workflow_file: None,
        workflow_source: Some(source),
        workflow_archive: None,
        refs: Vec::new(),
        refs_at: Vec::new(),
        at: r.at.clone(),
        fission: true,
    };
    record_and_apply(obj, ctx, &workflow, Value::Null)
        .await
        .map(|label| {
            Some(format!(
                "{} (a function of Fission Workflows' environment `workflow`)",
                applied_as(label)
            ))
        })
}

/// Whether the namespace's `workflow` environment is Fission Workflows':
/// its custom resource runs `fission/workflow-env`, or there is none and
/// Fusion has no environment of that name either (as `fusion fn create
/// --env workflow` decides).
async fn workflows_env_is_fissions(ctx: &Ctx, ns: &str) -> Result<bool, Problem> {
    let envs: Api<DynamicObject> = Api::namespaced_with(
        ctx.kube.clone(),
        ns,
        &api_resource("Environment", "environments"),
    );
    match envs.get_opt(model::WORKFLOW_ENV).await {
        Ok(Some(env)) => Ok(env
            .data
            .pointer("/spec/runtime/image")
            .and_then(Value::as_str)
            .is_some_and(model::is_fission_workflows_image)),
        Ok(None) => {
            let path =
                spec::with_namespace(&format!("/v1/environments/{}", model::WORKFLOW_ENV), ns);
            ctx.fusion
                .get_opt::<Value>(&path)
                .await
                .map(|found| found.is_none())
                .map_err(fusion_problem)
        }
        Err(e) => Err(Problem::Failed(explain(
            &e,
            "read",
            "environments.fission.io",
            Some(ns),
        ))),
    }
}

/// The workflow file in the Package custom resource a Fission Workflows
/// function names.
async fn fission_workflows_source(ctx: &Ctx, f: &model::Resource) -> Result<String, Problem> {
    let field = "spec.package.packageref.name";
    let Some((pkg_ns, pkg)) = f
        .refs
        .iter()
        .find(|(kind, ..)| *kind == model::Kind::Package)
        .map(|(_, ns, name, _)| (ns.clone(), name.clone()))
    else {
        return Err(Problem::Invalid(format!(
            "{field}: a function of Fission Workflows' environment `workflow` names the package \
             that holds its workflow file"
        )));
    };
    let packages: Api<DynamicObject> = Api::namespaced_with(
        ctx.kube.clone(),
        &pkg_ns,
        &api_resource("Package", "packages"),
    );
    let found = packages
        .get_opt(&pkg)
        .await
        .map_err(|e| Problem::Failed(explain(&e, "read", "packages.fission.io", Some(&pkg_ns))))?;
    let Some(package) = found else {
        return Err(Problem::Pending(format!(
            "{field}: waiting for Package {pkg_ns}/{pkg}, which is not in the cluster yet"
        )));
    };
    let doc = load::Document::object(json!({
        "apiVersion": "fission.io/v1",
        "kind": "Package",
        "metadata": {"name": pkg, "namespace": pkg_ns},
        "spec": package.data.get("spec").cloned().unwrap_or(Value::Null),
    }));
    let specs = model::Specs::read_object(&doc, &pkg_ns);
    let invalid = |m: String| Problem::Invalid(format!("{field}: Package {pkg_ns}/{pkg}: {m}"));
    if !specs.errors.is_empty() {
        return Err(invalid(specs.errors.join("; ")));
    }
    let archives = specs
        .resources
        .into_iter()
        .next()
        .map(|p| p.archives)
        .unwrap_or_default();
    let by = |name: &str| archives.iter().find(|(n, _)| n == name);
    match by("deployment").or_else(|| by("source")).map(|(_, a)| a) {
        Some(model::ArchiveSource::Literal(bytes)) => {
            spec::workflow_text(bytes.clone()).map_err(|e| invalid(format!("{e:#}")))
        }
        Some(_) => Err(invalid(
            "its workflow file must come as `literal` (base64) with the custom resource".into(),
        )),
        None => Err(invalid(
            "it holds no workflow file (spec.deployment)".into(),
        )),
    }
}

fn forget_uploads(ctx: &Ctx, obj: &DynamicObject) {
    let prefix = format!("{} ", key_of(obj));
    if let Ok(mut m) = ctx.uploads.lock() {
        m.retain(|k, _| !k.starts_with(&prefix));
    }
}

/// Deletes what the custom resource made before, now that it makes nothing
/// (an Environment whose image became Fission Workflows'), and its record.
async fn unapply(obj: &DynamicObject, ctx: &Ctx) -> Result<(), Problem> {
    let uid = record_uid(obj);
    let Some(record) = spec::record(&ctx.fusion, &uid)
        .await
        .map_err(fusion_problem)?
    else {
        return Ok(());
    };
    for a in &record.resources {
        spec::delete_if_present(&ctx.fusion, a)
            .await
            .map_err(fusion_problem)?;
        tracing::info!(kind = ctx.kind, object = %key_of(obj), "deleted {}, which it no longer makes", a.label());
    }
    match ctx.fusion.delete(&format!("/v1/deployments/{uid}")).await {
        Ok(()) => Ok(()),
        Err(e) if e.downcast_ref::<crate::client::NotFound>().is_some() => Ok(()),
        Err(e) => Err(fusion_problem(e)),
    }
}

/// Writes the deployment record `uid` of custom resource `name`: what it owns.
async fn put_record(
    ctx: &Ctx,
    uid: &str,
    name: &str,
    resources: BTreeSet<spec::Applied>,
) -> Result<(), Problem> {
    let record = spec::Record {
        name: name.to_string(),
        uid: uid.to_string(),
        resources,
    };
    let record = serde_json::to_value(&record).map_err(|e| Problem::Failed(e.to_string()))?;
    ctx.fusion
        .put_json::<Value>(&format!("/v1/deployments/{uid}"), &record)
        .await
        .map(|_| ())
        .map_err(fusion_problem)
}

/// Records the Fusion object as this custom resource's, then creates or
/// updates it; answers its label.
async fn record_and_apply(
    obj: &DynamicObject,
    ctx: &Ctx,
    r: &model::Resource,
    body: Value,
) -> Result<String, Problem> {
    let name = obj.name_any();
    let ns = obj.namespace().unwrap_or_else(|| "default".to_string());
    // Recorded as this custom resource's before it is applied, so that a
    // crash in between leaves nothing unowned.
    let uid = record_uid(obj);
    let now = BTreeSet::from([spec::Applied::of(r)]);
    // What it made before and makes no more (a Function that became a
    // workflow, or back): kept in the record until it is deleted below.
    let before = spec::record(&ctx.fusion, &uid)
        .await
        .map_err(fusion_problem)?
        .map(|r| r.resources)
        .unwrap_or_default();
    let dropped: Vec<spec::Applied> = before.difference(&now).cloned().collect();
    let label = format!("{} {ns}/{name}", ctx.kind);
    put_record(ctx, &uid, &label, now.union(&before).cloned().collect()).await?;
    // Deleted first: the new object may take the old one's name (a workflow
    // and a function share one name space).
    for a in &dropped {
        spec::delete_if_present(&ctx.fusion, a)
            .await
            .map_err(fusion_problem)?;
        tracing::info!(kind = ctx.kind, object = %key_of(obj), "deleted {}, which it no longer makes", a.label());
    }
    let outcome = match &r.workflow_source {
        Some(source) => spec::apply_workflow(&ctx.fusion, r, source.clone(), true).await,
        None => spec::upsert(&ctx.fusion, r, body, true).await,
    }
    .map_err(fusion_problem)?;
    if !dropped.is_empty() {
        put_record(ctx, &uid, &label, now).await?;
    }
    let observed = obj
        .data
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    if outcome == "updated" && observed.is_some() && observed == obj.metadata.generation {
        tracing::info!(
            kind = ctx.kind,
            object = %key_of(obj),
            "{} was changed in Fusion outside its custom resource: changed back",
            r.label()
        );
    } else if outcome != "unchanged" {
        tracing::info!(kind = ctx.kind, object = %key_of(obj), "{outcome} {}", r.label());
    }
    Ok(r.label())
}

/// A KubernetesWatchTrigger: its watch runs while its function is in Fusion.
async fn run_watch_trigger(obj: &DynamicObject, ctx: &Ctx) -> Result<String, Problem> {
    let ns = obj.namespace().unwrap_or_else(|| "default".to_string());
    let key = key_of(obj);
    let spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
    if ns == ctx.functions_namespace {
        ctx.watches.stop(&key);
        return Err(Problem::Invalid(format!(
            "metadata.namespace: {ns} is where Fusion runs its function pods (--kube-namespace): \
             a watch there would send Fusion's own pods to user code; put the trigger in the \
             namespace of the objects it watches"
        )));
    }
    let watch = match watch_trigger::parse(&ns, &spec) {
        Ok(w) => w,
        Err(m) => {
            ctx.watches.stop(&key);
            return Err(Problem::Invalid(m));
        }
    };
    let function = spec::with_namespace(&format!("/v1/functions/{}", watch.function), &ns);
    let workflow = format!("/v1/workflows/{}", watch.function);
    let mut found = ctx
        .fusion
        .get_opt::<Value>(&function)
        .await
        .map_err(fusion_problem)?;
    if found.is_none() && ns == model::DEFAULT_NAMESPACE {
        found = ctx
            .fusion
            .get_opt::<Value>(&workflow)
            .await
            .map_err(fusion_problem)?;
    }
    if found.is_none() {
        ctx.watches.stop(&key);
        return Err(Problem::Pending(format!(
            "spec.functionref.name: waiting for function (or workflow) {ns}/{}, which is not in Fusion yet",
            watch.function
        )));
    }
    let said = watch.describe();
    ctx.watches.ensure(&key, watch);
    Ok(said)
}

/// The custom resource is going: deletes what it applied, and its record.
async fn cleanup(obj: &DynamicObject, ctx: &Ctx) -> Result<Action, Error> {
    ctx.set_done(obj, None);
    forget_uploads(ctx, obj);
    if ctx.kind == WATCH_TRIGGER {
        ctx.watches.stop(&key_of(obj));
        return Ok(Action::await_change());
    }
    let uid = record_uid(obj);
    let failed = |e: anyhow::Error| Error::Fusion(format!("{e:#}"));
    if let Some(record) = spec::record(&ctx.fusion, &uid).await.map_err(failed)? {
        for a in &record.resources {
            spec::delete_if_present(&ctx.fusion, a)
                .await
                .map_err(failed)?;
            tracing::info!(kind = ctx.kind, object = %key_of(obj), "deleted {}", a.label());
        }
        match ctx.fusion.delete(&format!("/v1/deployments/{uid}")).await {
            Ok(()) => {}
            Err(e) if e.downcast_ref::<crate::client::NotFound>().is_some() => {}
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_status(status: u16) -> Problem {
        fusion_problem(anyhow::Error::new(ApiError {
            status,
            message: "refused".into(),
            details: Vec::new(),
        }))
    }

    #[test]
    fn only_400_and_422_from_fusion_are_invalid_the_rest_is_tried_again() {
        for status in [400, 422] {
            assert!(
                matches!(from_status(status), Problem::Invalid(_)),
                "{status}"
            );
        }
        for status in [404, 408, 409, 429, 500, 502, 503] {
            assert!(
                matches!(from_status(status), Problem::Failed(_)),
                "{status}"
            );
        }
        for status in [401, 403] {
            match from_status(status) {
                Problem::Failed(m) => assert!(
                    m.starts_with(&format!(
                        "Fusion's API refused the controller's admin token ({status})"
                    )),
                    "{m}"
                ),
                _ => panic!("{status} is not Failed"),
            }
        }
        // Unreachable: not an answer at all.
        assert!(matches!(
            fusion_problem(anyhow::anyhow!("connection refused")),
            Problem::Failed(_)
        ));
    }

    #[test]
    fn the_backoff_doubles_up_to_five_minutes() {
        let ms: Vec<u128> = (1..=4).map(|n| Ctx::backoff(n).as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000]);
        assert_eq!(Ctx::backoff(30), Duration::from_secs(300));
    }
}
