//! What a spec document declares, read offline: Fission's `fission.io/v1` kinds
//! (field names and meanings as Fission's CRDs have them) and Fusion's own short
//! forms, each turned into the body Fusion's API takes, with the references it
//! makes and the place of every error and warning.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::load::{Document, Location};

/// The `concurrency` Fission's CLI writes into a function's spec when none is
/// asked for (`DefaultConcurrency` in Fission's core types).
const FISSION_DEFAULT_CONCURRENCY: u64 = 500;

/// The environment Fission Workflows ran workflows in: a workflow was
/// deployed as a function of it (`fission fn create --name W --env workflow
/// --src W.wf.yaml`), and triggers named it as a function.
pub const WORKFLOW_ENV: &str = "workflow";

/// Whether an environment's image is Fission Workflows' own
/// (`fission/workflow-env`, from any registry, of any tag).
pub fn is_fission_workflows_image(image: &str) -> bool {
    image.contains("fission/workflow-env")
}

/// The kinds a spec folder may hold, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Environment,
    Secret,
    ConfigMap,
    Package,
    Function,
    Workflow,
    HttpTrigger,
    TimeTrigger,
    MessageQueueTrigger,
    CanaryConfig,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Environment => "Environment",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::Package => "Package",
            Kind::Function => "Function",
            Kind::Workflow => "Workflow",
            Kind::HttpTrigger => "HTTPTrigger",
            Kind::TimeTrigger => "TimeTrigger",
            Kind::MessageQueueTrigger => "MessageQueueTrigger",
            Kind::CanaryConfig => "CanaryConfig",
        }
    }

    /// The kind's name after its article: `an Environment`, `a Function`.
    pub fn with_article(self) -> String {
        let article = match self {
            Kind::Environment => "an",
            _ => "a",
        };
        format!("{article} {}", self.name())
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "Environment" => Kind::Environment,
            "Secret" => Kind::Secret,
            "ConfigMap" => Kind::ConfigMap,
            "Package" => Kind::Package,
            "Function" => Kind::Function,
            "Workflow" => Kind::Workflow,
            "HTTPTrigger" | "Route" => Kind::HttpTrigger,
            "TimeTrigger" => Kind::TimeTrigger,
            "MessageQueueTrigger" => Kind::MessageQueueTrigger,
            "CanaryConfig" => Kind::CanaryConfig,
            _ => return None,
        })
    }

    pub const ALL: [Kind; 10] = [
        Kind::Environment,
        Kind::Secret,
        Kind::ConfigMap,
        Kind::Package,
        Kind::Function,
        Kind::Workflow,
        Kind::HttpTrigger,
        Kind::TimeTrigger,
        Kind::MessageQueueTrigger,
        // After the routes it moves.
        Kind::CanaryConfig,
    ];
}

/// Where a package's archive comes from, resolved at apply time.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchiveSource {
    /// `archive://NAME`: an ArchiveUploadSpec of the same folder.
    Upload(String),
    /// Inline bytes (Fission's `literal`, base64 in YAML).
    Literal(Vec<u8>),
    /// A file next to the spec (Fusion's short form `code:`).
    File(PathBuf),
}

/// A resource the folder declares.
#[derive(Debug, Clone)]
pub struct Resource {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The body for Fusion's API, archives still to resolve.
    pub body: Value,
    /// Body fields whose value is an archive to upload first (`source`, `deploy`,
    /// `package`), with where each comes from.
    pub archives: Vec<(String, ArchiveSource)>,
    /// A Fusion workflow file (`*.wf.yaml`) to send as the workflow's source.
    pub workflow_file: Option<PathBuf>,
    /// An RFC-0022 `Workflow` document's own text, sent as the workflow's source.
    pub workflow_source: Option<String>,
    /// A Fission Workflows function's package archive (one workflow file),
    /// read at apply time as the workflow's source.
    pub workflow_archive: Option<ArchiveSource>,
    /// Resources this one needs: (kind, namespace, name, field path).
    pub refs: Vec<(Kind, String, String, String)>,
    /// Where each of `refs` is written (set when the resource is read whole).
    pub refs_at: Vec<Location>,
    pub at: Location,
    /// Read from a `fission.io/v1` document (rather than Fusion's short form).
    pub fission: bool,
}

impl Resource {
    pub fn key(&self) -> (Kind, String, String) {
        (self.kind, self.namespace.clone(), self.name.clone())
    }
    pub fn label(&self) -> String {
        if self.namespace == DEFAULT_NAMESPACE {
            format!("{} {}", self.kind.name(), self.name)
        } else {
            format!("{} {}/{}", self.kind.name(), self.namespace, self.name)
        }
    }
}

/// Fission's `ArchiveUploadSpec`: files to zip and upload, named for
/// `archive://NAME` references.
#[derive(Debug, Clone)]
pub struct ArchiveSpec {
    pub name: String,
    pub rootdir: Option<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub at: Location,
}

/// Fission's `DeploymentConfig`: the project's name and the uid that marks what
/// it applied.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub name: String,
    pub uid: String,
    pub at: Location,
}

/// Everything a folder declares, with what is wrong with it.
#[derive(Default)]
pub struct Specs {
    pub deployment: Option<Deployment>,
    pub archives: Vec<ArchiveSpec>,
    pub resources: Vec<Resource>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// What the folder's resources need and it does not declare, which must
    /// be on the server (an environment, secret or configmap): where it is
    /// needed, by what, and what (kind, namespace, name).
    pub on_server: Vec<(Location, String, Kind, String, String)>,
    /// The Fission Workflows environments the folder declared (left unapplied).
    fission_workflows_envs: std::collections::BTreeSet<String>,
    /// Every resource a document of the folder names, kept or refused for
    /// an error of its own: a reference to one refused is not said to be
    /// missing from the folder (its own error says what is wrong).
    named: HashSet<(Kind, String, String)>,
}

pub const DEFAULT_NAMESPACE: &str = "default";

impl Specs {
    /// Reads the documents; `namespace` is given to resources that name none.
    pub fn read(docs: &[Document], namespace: &str) -> Specs {
        let mut specs = Specs::default();
        for doc in docs {
            specs.read_doc(doc, namespace);
        }
        specs.fission_workflows_functions();
        specs.check_references();
        specs
    }

    /// One object read from an API (a custom resource): its errors and
    /// warnings name its fields; the resources it references are not looked
    /// for among others (they are on the server, or not yet).
    #[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
    pub fn read_object(doc: &Document, namespace: &str) -> Specs {
        let mut specs = Specs::default();
        specs.read_doc(doc, namespace);
        specs
    }

    fn error(&mut self, at: Location, message: impl std::fmt::Display) {
        self.errors.push(format!("{at}: {message}"));
    }
    fn warn(&mut self, at: Location, message: impl std::fmt::Display) {
        self.warnings.push(format!("{at}: {message}"));
    }

    fn read_doc(&mut self, doc: &Document, namespace: &str) {
        let Some(obj) = doc.value.as_object() else {
            self.error(doc.at(""), "a spec document must be a mapping");
            return;
        };
        let Some(kind) = obj.get("kind").and_then(Value::as_str) else {
            self.error(doc.at(""), "a document without `kind`");
            return;
        };
        // Fission's form has `apiVersion` and `metadata.name`; the short form
        // a top-level `name` (and may have a `metadata` of its own, as a
        // message-queue trigger's connection settings).
        let fission = obj.contains_key("apiVersion")
            || (obj.contains_key("metadata") && !obj.contains_key("name"));
        match kind {
            "DeploymentConfig" => self.read_deployment(doc),
            "ArchiveUploadSpec" => self.read_archive(doc),
            "KubernetesWatchTrigger" => self.warn(
                doc.at("kind"),
                "a KubernetesWatchTrigger runs only as a custom resource in a cluster \
                 (`fusion server --kube-controller`); the document is skipped",
            ),
            _ => match Kind::parse(kind) {
                // Another API's object kept beside the specs (a Deployment, a
                // `kubectl get -o yaml` List): skipped with a warning, as
                // Fission skips it. A kind of Fission's own API, or of the short
                // form, that is none of these is a mistake (a typo).
                None if obj
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .is_some_and(|api| !api.starts_with("fission.io/")) =>
                {
                    self.warn(
                        doc.at("kind"),
                        format!(
                            "{kind} ({}) is not a Fission resource; the document is skipped",
                            obj["apiVersion"].as_str().unwrap_or_default()
                        ),
                    )
                }
                // RFC-0022's run of a workflow, a custom resource there: a
                // run is started, not applied, here.
                None if kind == "WorkflowRun" => self.error(
                    doc.at("kind"),
                    "a WorkflowRun (RFC-0022) is not applied here: start the run with `fusion workflow run --name WORKFLOW --input @input.json` (or `POST /v1/workflows/WORKFLOW/invoke`, with an Idempotency-Key to start it once)".to_string(),
                ),
                None => self.error(
                    doc.at("kind"),
                    format!(
                        "unknown kind {kind:?}: expected one of DeploymentConfig, ArchiveUploadSpec, {}",
                        Kind::ALL.map(Kind::name).join(", ")
                    ),
                ),
                Some(k) if fission => self.read_fission(doc, k, namespace),
                Some(k) => self.read_short(doc, k, namespace),
            },
        }
    }

    fn read_deployment(&mut self, doc: &Document) {
        check_fields(self, doc, &doc.value, "", DEPLOYMENT_FIELDS);
        let name = str_at(&doc.value, "name").unwrap_or_default();
        let uid = str_at(&doc.value, "uid").unwrap_or_default();
        if uid.is_empty() {
            self.error(doc.at("uid"), "DeploymentConfig needs a `uid`");
            return;
        }
        if let Err(e) = crate::declared::check_uid(uid) {
            self.error(doc.at("uid"), e);
            return;
        }
        if let Some(first) = &self.deployment {
            let first = first.at.clone();
            self.error(
                doc.at(""),
                format!("a second DeploymentConfig; the first is at {first}"),
            );
            return;
        }
        self.deployment = Some(Deployment {
            name: name.to_string(),
            uid: uid.to_string(),
            at: doc.at(""),
        });
    }

    fn read_archive(&mut self, doc: &Document) {
        check_fields(self, doc, &doc.value, "", ARCHIVE_FIELDS);
        let name = str_at(&doc.value, "name").unwrap_or_default().to_string();
        if name.is_empty() {
            self.error(doc.at("name"), "ArchiveUploadSpec needs a `name`");
            return;
        }
        if let Some(first) = self.archives.iter().find(|a| a.name == name) {
            let first = first.at.clone();
            self.error(
                doc.at("name"),
                format!("duplicate ArchiveUploadSpec {name:?}, first defined at {first}"),
            );
            return;
        }
        let strings = |path: &str| -> Vec<String> {
            match doc.value.get(path) {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                Some(Value::String(s)) => vec![s.clone()],
                _ => Vec::new(),
            }
        };
        let include = strings("include");
        if include.is_empty() {
            self.error(
                doc.at("include"),
                format!("archive {name:?} includes nothing: give `include` globs"),
            );
        }
        self.archives.push(ArchiveSpec {
            name,
            rootdir: str_at(&doc.value, "rootdir").map(str::to_string),
            include,
            exclude: strings("exclude"),
            at: doc.at(""),
        });
    }

    /// A `fission.io/v1` document: `metadata` and `spec`.
    fn read_fission(&mut self, doc: &Document, kind: Kind, namespace: &str) {
        let shape = match kind {
            Kind::Environment => ENVIRONMENT_FIELDS,
            Kind::Package => PACKAGE_FIELDS,
            Kind::Function => FUNCTION_FIELDS,
            Kind::HttpTrigger => HTTP_TRIGGER_FIELDS,
            Kind::TimeTrigger => TIME_TRIGGER_FIELDS,
            Kind::MessageQueueTrigger => MQ_TRIGGER_FIELDS,
            Kind::CanaryConfig => CANARY_FIELDS,
            Kind::Workflow => WORKFLOW_FIELDS,
            Kind::Secret | Kind::ConfigMap => KUBE_DATA_FIELDS,
        };
        // Fields in another case than Fission's (`TerminationGracePeriod`,
        // as older Fission CLIs wrote it): read as Fission reads them, since
        // Go's JSON decoding matches names in any case.
        let mut renames = Vec::new();
        case_renames(&doc.value, "", shape, &mut renames);
        let renamed;
        let doc = if renames.is_empty() {
            doc
        } else {
            let mut d = doc.clone();
            for (parent, from, to) in &renames {
                d.rename_field(parent, from, to);
            }
            renamed = d;
            &renamed
        };
        let v = &doc.value;
        let expected = match kind {
            Kind::Secret | Kind::ConfigMap => "v1",
            _ => "fission.io/v1",
        };
        match v.get("apiVersion") {
            Some(Value::String(a)) if a == expected => {}
            Some(other) => self.error(
                doc.at("apiVersion"),
                format!(
                    "apiVersion {other}: kind {} is `apiVersion: {expected}`",
                    kind.name()
                ),
            ),
            None => self.error(
                doc.at(""),
                format!("kind {} needs `apiVersion: {expected}`", kind.name()),
            ),
        }
        check_fields(self, doc, v, "", shape);
        let Some(name) = str_at(v, "metadata.name").map(str::to_string) else {
            self.error(
                doc.at("metadata"),
                format!("{} without `metadata.name`", kind.with_article()),
            );
            return;
        };
        let ns = str_at(v, "metadata.namespace")
            .filter(|s| !s.is_empty())
            .unwrap_or(namespace)
            .to_string();
        self.named.insert((kind, ns.clone(), name.clone()));
        // A bad name is said, and the rest of the document checked still:
        // every mistake at once.
        let mut named = true;
        for (what, value, path) in [
            ("name", &name, "metadata.name"),
            ("namespace", &ns, "metadata.namespace"),
        ] {
            if !is_dns_label(value) {
                self.error(
                    doc.at(path),
                    format!("{what} {value:?} is not a DNS-1123 label (at most 63 lowercase letters, digits and '-')"),
                );
                named = false;
            }
        }
        let mut r = Resource {
            kind,
            namespace: ns.clone(),
            name: name.clone(),
            body: json!({"name": name}),
            archives: Vec::new(),
            workflow_file: None,
            workflow_source: None,
            workflow_archive: None,
            refs: Vec::new(),
            refs_at: Vec::new(),
            at: doc.at(""),
            fission: true,
        };
        if ns != DEFAULT_NAMESPACE {
            r.body["namespace"] = json!(ns);
        }
        let spec = v.get("spec").cloned().unwrap_or(Value::Null);
        let ok = match kind {
            Kind::Environment => self.fission_environment(doc, &spec, &mut r),
            Kind::Package => self.fission_package(doc, &spec, &mut r),
            Kind::Function => self.fission_function(doc, &spec, &mut r),
            Kind::HttpTrigger => self.fission_http_trigger(doc, &spec, &mut r),
            Kind::TimeTrigger => self.fission_time_trigger(doc, &spec, &mut r),
            Kind::MessageQueueTrigger => self.fission_mq_trigger(doc, &spec, &mut r),
            Kind::CanaryConfig => self.fission_canary(doc, &spec, &mut r),
            Kind::Workflow => {
                if ns != DEFAULT_NAMESPACE {
                    self.error(
                        doc.at("metadata.namespace"),
                        "workflows live in the default namespace",
                    );
                    false
                } else if !self.state_machine(doc, &mut r) {
                    false
                } else if spec.get("startAt").is_none() {
                    self.error(
                        doc.at("spec"),
                        "a fission.io/v1 Workflow needs `spec.startAt` and `spec.states`",
                    );
                    false
                } else {
                    r.body = json!({"name": r.name, "namespace": ns, "spec": spec});
                    r.workflow_source = Some(doc.source.clone());
                    true
                }
            }
            Kind::Secret | Kind::ConfigMap => self.kube_data(doc, kind, &mut r),
        };
        if ok && named {
            self.push(r, doc);
        }
    }

    /// An RFC-0022 Workflow, checked by the engine's own validation (each error
    /// with its place in the file); the functions it calls are references.
    fn state_machine(&mut self, doc: &Document, r: &mut Resource) -> bool {
        let parsed = match engine::sfn::parse_and_validate(&doc.source) {
            Ok(p) => p,
            Err(errors) => {
                for e in errors {
                    let at = if doc.is_object() {
                        doc.at("spec")
                    } else {
                        Location {
                            file: doc.file.clone(),
                            line: doc.first_line + e.line.saturating_sub(1),
                            column: e.column,
                        }
                    };
                    self.error(
                        at,
                        format!("workflow {:?}: {} ({})", r.name, e.message, e.code),
                    );
                }
                return false;
            }
        };
        fn calls(
            states: &std::collections::BTreeMap<String, engine::sfn::WorkflowState>,
            out: &mut Vec<String>,
        ) {
            for st in states.values() {
                if let Some(f) = &st.function {
                    out.push(f.name.clone());
                }
                for b in &st.branches {
                    calls(&b.states, out);
                }
            }
        }
        let mut names = Vec::new();
        calls(&parsed.spec().states, &mut names);
        names.sort();
        names.dedup();
        for name in names {
            r.refs.push((
                Kind::Function,
                r.namespace.clone(),
                name,
                "spec.states".into(),
            ));
        }
        true
    }

    fn push(&mut self, mut r: Resource, doc: &Document) {
        r.refs_at = r
            .refs
            .iter()
            .map(|(_, _, _, field)| doc.at(field))
            .collect();
        // Checked offline as the server will check it (a route's URL and
        // methods, a function's timeout and scales, ...), so that `validate`
        // catches what `apply` would refuse half-way.
        if let Err(mut e) = check_offline(&r) {
            if r.kind == Kind::Function && !r.fission {
                // The short form's own field, which the server does not take.
                e = e.replacen("expected one of ", "expected one of `code`, ", 1);
            }
            let at = if r.fission {
                doc.at("spec")
            } else {
                // The short form's fields are the server's: the one the
                // error names (`unknown field `poolsiz``, `memory_mb 1 is
                // below ...`) is where it points.
                doc.at(named_field(&e, &doc.value).unwrap_or(""))
            };
            self.error(at, format!("{} {}: {e}", r.kind.name(), r.name));
            return;
        }
        if let Some(first) = self.resources.iter().find(|o| o.key() == r.key()) {
            let first = first.at.clone();
            let label = r.label();
            self.error(
                doc.at(""),
                format!("duplicate {label}, first defined at {first}"),
            );
            return;
        }
        self.resources.push(r);
    }

    fn fission_environment(&mut self, doc: &Document, spec: &Value, r: &mut Resource) -> bool {
        let Some(image) = str_at(spec, "runtime.image").filter(|s| !s.is_empty()) else {
            self.error(
                doc.at("spec.runtime"),
                "an Environment needs `spec.runtime.image`",
            );
            return false;
        };
        r.body["image"] = json!(image);
        let version = spec.get("version").and_then(Value::as_u64).unwrap_or(1);
        if !(1..=3).contains(&version) {
            self.error(
                doc.at("spec.version"),
                format!("version {version} is not 1, 2 or 3"),
            );
            return false;
        }
        if let Some(p) = spec.get("poolsize").and_then(Value::as_u64) {
            if version < 3 && p != 3 {
                self.warn(
                    doc.at("spec.poolsize"),
                    "poolsize is honoured only with version 3 (as in Fission): the pool keeps 3",
                );
                r.body["poolsize"] = json!(3);
            } else {
                r.body["poolsize"] = json!(p);
            }
        }
        // Builds use the bundled builder of the environment's language, which does
        // what Fission's builder images do (pip, npm, build.sh); another builder
        // image is not run, and says so.
        if let Some(builder) = str_at(spec, "builder.image").filter(|s| !s.is_empty()) {
            let own = pool_manager::resources::fission_runtime(builder);
            let runtime = pool_manager::resources::fission_runtime(image);
            if own.is_none() || own != runtime {
                self.warn(
                    doc.at("spec.builder.image"),
                    format!("builder image {builder} is not run: packages are built by the bundled builder of the environment's language"),
                );
            }
        }
        // The build command of its packages that give none. Fission's builders'
        // own script is `build`: the bundled builder's steps.
        if let Some(cmd) =
            str_at(spec, "builder.command").filter(|c| !c.is_empty() && *c != "build")
        {
            r.body["buildcmd"] = json!(cmd);
        }
        if let Some(limits) = spec.pointer("/resources/limits") {
            if let Some(m) = limits.get("memory") {
                match quantity_mib(m) {
                    Some(mb) => r.body["memory_mb"] = json!(mb),
                    None => {
                        self.error(
                            doc.at("spec.resources.limits.memory"),
                            format!("cannot read {m} as a memory quantity (e.g. 256Mi, 1Gi)"),
                        );
                        return false;
                    }
                }
            }
            if let Some(c) = limits.get("cpu") {
                match quantity_millicores(c) {
                    Some(m) => r.body["cpu_millis"] = json!(m),
                    None => {
                        self.error(
                            doc.at("spec.resources.limits.cpu"),
                            format!("cannot read {c} as a cpu quantity (e.g. 500m, 1)"),
                        );
                        return false;
                    }
                }
            }
        }
        true
    }

    /// The environment a Package or Function names (`spec.environment`), in its
    /// own namespace; recorded as a reference.
    fn environment_ref(
        &mut self,
        doc: &Document,
        spec: &Value,
        r: &mut Resource,
    ) -> Option<String> {
        let Some(env) = str_at(spec, "environment.name").filter(|s| !s.is_empty()) else {
            self.error(
                doc.at("spec.environment"),
                format!("a {} needs `spec.environment.name`", r.kind.name()),
            );
            return None;
        };
        if let Some(env_ns) =
            str_at(spec, "environment.namespace").filter(|n| !n.is_empty() && *n != r.namespace)
        {
            self.error(
                doc.at("spec.environment.namespace"),
                format!(
                    "{} {:?} names an environment outside its namespace ({env_ns}/{env})",
                    r.kind.name(),
                    r.name
                ),
            );
            return None;
        }
        r.refs.push((
            Kind::Environment,
            r.namespace.clone(),
            env.to_string(),
            "spec.environment".into(),
        ));
        Some(env.to_string())
    }

    fn fission_package(&mut self, doc: &Document, spec: &Value, r: &mut Resource) -> bool {
        let Some(env) = self.environment_ref(doc, spec, r) else {
            return false;
        };
        r.body["environment"] = json!(env);
        for (field, body_field) in [("source", "source"), ("deployment", "deployment")] {
            let Some(archive) = spec.get(field).filter(|a| !is_empty_archive(a)) else {
                continue;
            };
            match self.archive_source(doc, &format!("spec.{field}"), archive) {
                Some(src) => r.archives.push((body_field.to_string(), src)),
                None => return false,
            }
        }
        if r.archives.is_empty() {
            self.error(
                doc.at("spec"),
                "a Package needs a `source` or a `deployment` archive",
            );
            return false;
        }
        if let Some(cmd) = str_at(spec, "buildcmd").filter(|s| !s.is_empty()) {
            r.body["buildcmd"] = json!(cmd);
        }
        true
    }

    fn archive_source(
        &mut self,
        doc: &Document,
        path: &str,
        archive: &Value,
    ) -> Option<ArchiveSource> {
        let kind = str_at(archive, "type").unwrap_or("");
        if let Some(url) = str_at(archive, "url").filter(|u| !u.is_empty()) {
            if let Some(name) = url.strip_prefix("archive://") {
                return Some(ArchiveSource::Upload(name.to_string()));
            }
            self.error(
                doc.at(&format!("{path}.url")),
                format!("{url}: Fusion does not fetch packages from URLs; declare an ArchiveUploadSpec and use archive://NAME"),
            );
            return None;
        }
        if let Some(lit) = str_at(archive, "literal") {
            use base64::Engine;
            return match base64::engine::general_purpose::STANDARD.decode(lit.trim()) {
                Ok(bytes) => Some(ArchiveSource::Literal(bytes)),
                Err(e) => {
                    self.error(
                        doc.at(&format!("{path}.literal")),
                        format!("literal is not base64: {e}"),
                    );
                    None
                }
            };
        }
        self.error(
            doc.at(path),
            format!("archive of type {kind:?} has neither `url` nor `literal`"),
        );
        None
    }

    fn fission_function(&mut self, doc: &Document, spec: &Value, r: &mut Resource) -> bool {
        let ns = r.namespace.clone();
        let Some(env) = self.environment_ref(doc, spec, r) else {
            return false;
        };
        r.body["env"] = json!(env);
        let Some(pkg) = str_at(spec, "package.packageref.name").filter(|s| !s.is_empty()) else {
            self.error(
                doc.at("spec.package"),
                "a Function needs `spec.package.packageref.name`",
            );
            return false;
        };
        let pkg_ns = str_at(spec, "package.packageref.namespace")
            .filter(|s| !s.is_empty())
            .unwrap_or(&ns);
        if pkg_ns != ns {
            self.error(
                doc.at("spec.package.packageref.namespace"),
                format!(
                    "function {:?} references a package outside of its namespace ({pkg_ns}/{pkg})",
                    r.name
                ),
            );
            return false;
        }
        r.body["package"] = json!({"packageref": {"name": pkg, "namespace": ns}});
        r.refs.push((
            Kind::Package,
            ns.clone(),
            pkg.to_string(),
            "spec.package.packageref".into(),
        ));
        if let Some(ep) = str_at(spec, "package.functionName").filter(|s| !s.is_empty()) {
            r.body["entrypoint"] = json!(ep);
        }
        for (field, kind) in [("secrets", Kind::Secret), ("configmaps", Kind::ConfigMap)] {
            if let Some(Value::Array(items)) = spec.get(field) {
                let mut refs = Vec::new();
                for (n, item) in items.iter().enumerate() {
                    let Some(name) = str_at(item, "name") else {
                        self.error(
                            doc.at(&format!("spec.{field}.{n}")),
                            format!("a {field} entry needs `name`"),
                        );
                        return false;
                    };
                    let item_ns = str_at(item, "namespace")
                        .filter(|s| !s.is_empty())
                        .unwrap_or(&ns);
                    refs.push(json!({"name": name, "namespace": item_ns}));
                    r.refs.push((
                        kind,
                        item_ns.to_string(),
                        name.to_string(),
                        format!("spec.{field}.{n}"),
                    ));
                }
                r.body[field] = Value::Array(refs);
            }
        }
        let int = |path: &str| spec.pointer(path).and_then(Value::as_u64);
        if let Some(t) = int("/functionTimeout").filter(|t| *t > 0) {
            r.body["timeout_secs"] = json!(t);
        }
        if let Some(t) = int("/idletimeout").filter(|t| *t > 0) {
            r.body["idle_timeout_secs"] = json!(t);
        }
        // Fission's `concurrency` (most pods of a poolmgr function) is Fusion's
        // max scale; a newdeploy function's is its MaxScale (below), as in
        // Fission, where concurrency is for poolmgr only.
        let newdeploy =
            str_at(spec, "InvokeStrategy.ExecutionStrategy.ExecutorType") == Some("newdeploy");
        if let Some(c) = int("/concurrency").filter(|c| *c > 0 && !newdeploy) {
            if c > 1000 {
                self.warn(
                    doc.at("spec.concurrency"),
                    format!("concurrency {c} is above Fusion's most, 1000: 1000 it is"),
                );
            }
            // Fission's CLI writes its default, 500, into every function's
            // spec: on one machine that is 500 instances of this function
            // (not of one of Fission Workflows', which is a workflow here).
            if c == FISSION_DEFAULT_CONCURRENCY && r.body["env"] != WORKFLOW_ENV {
                self.warn(
                    doc.at("spec.concurrency"),
                    format!("concurrency {c} is Fission's default (its CLI writes it into every spec): here up to {c} instances of this function may run at once on one machine, where Fusion's own default is 10; write the number you mean"),
                );
            }
            r.body["max_scale"] = json!(c.min(1000));
        }
        if let Some(rpp) = int("/requestsPerPod").filter(|c| *c > 0) {
            r.body["requests_per_instance"] = json!(rpp);
        }
        // RFC-0024: the retry policy of asynchronous calls, and where their
        // results go. A topic destination is not run by Fusion yet: said, and
        // left out.
        if let Some(Value::Object(inv)) = spec.get("invocation") {
            let mut kept = serde_json::Map::new();
            for (k, v) in inv {
                let topic = matches!(k.as_str(), "onSuccess" | "onFailure")
                    && v.get("topic").is_some_and(|t| !t.is_null());
                if topic {
                    self.warn(
                        doc.at(&format!("spec.invocation.{k}.topic")),
                        format!("invocation.{k}: Fusion does not publish results to message-queue topics yet: ignored"),
                    );
                } else {
                    kept.insert(k.clone(), v.clone());
                }
            }
            r.body["invocation"] = Value::Object(kept);
        }
        if let Some(strategy) = spec.pointer("/InvokeStrategy/ExecutionStrategy") {
            let executor = str_at(strategy, "ExecutorType").unwrap_or("poolmgr");
            match executor {
                "poolmgr" | "newdeploy" | "" => {}
                other => {
                    self.error(
                        doc.at("spec.InvokeStrategy.ExecutionStrategy.ExecutorType"),
                        format!("executor type {other:?} is not supported: Fusion runs functions as poolmgr (newdeploy maps onto it)"),
                    );
                    return false;
                }
            }
            if !executor.is_empty() {
                r.body["executor_type"] = json!(executor);
            }
            let min = strategy
                .get("MinScale")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let max = strategy
                .get("MaxScale")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if max > 0 && min > max {
                self.error(
                    doc.at("spec.InvokeStrategy.ExecutionStrategy.MinScale"),
                    format!("MinScale {min} is above MaxScale {max}"),
                );
                return false;
            }
            if min > 0 {
                r.body["min_scale"] = json!(min);
            }
            if max > 0 {
                r.body["max_scale"] = json!(max);
            }
        }
        true
    }

    fn fission_http_trigger(&mut self, doc: &Document, spec: &Value, r: &mut Resource) -> bool {
        // Each field the server would refuse, at its place, all at once (the
        // server's own check, run at `push`, says only the first).
        let mut ok = true;
        for (path, value) in [
            ("spec.relativeurl", "relativeurl"),
            ("spec.prefix", "prefix"),
        ] {
            if let Some(Err(e)) = str_at(spec, value)
                .filter(|s| !s.is_empty())
                .map(triggers::table::Template::parse)
            {
                self.error(doc.at(path), format!("HTTPTrigger {}: {e}", r.name));
                ok = false;
            }
        }
        let listed = spec.get("methods").and_then(Value::as_array);
        for m in listed.into_iter().flatten().filter_map(Value::as_str) {
            if let Err(e) = triggers::route::check_method(m) {
                self.error(
                    doc.at("spec.methods"),
                    format!("HTTPTrigger {}: {e}", r.name),
                );
                ok = false;
            }
        }
        for (path, check) in [
            ("spec.host", triggers::route::check_host as fn(&str) -> _),
            (
                "spec.invocationMode",
                triggers::route::check_invocation_mode,
            ),
        ] {
            let field = path.trim_start_matches("spec.");
            if let Some(Err(e)) = str_at(spec, field).filter(|s| !s.is_empty()).map(check) {
                self.error(doc.at(path), format!("HTTPTrigger {}: {e}", r.name));
                ok = false;
            }
        }
        if str_at(spec, "functionref.type") == Some("function-weights") {
            match self.function_weights(doc, spec, r) {
                Some(weights) => r.body["function_weights"] = weights,
                None => ok = false,
            }
        } else {
            match self.function_ref(doc, spec, r) {
                Some(f) => r.body["function"] = json!(f),
                None => ok = false,
            }
        }
        if !ok {
            return false;
        }
        let prefix = str_at(spec, "prefix").filter(|s| !s.is_empty());
        let url = str_at(spec, "relativeurl").filter(|s| !s.is_empty());
        match (prefix, url) {
            (Some(p), url) => {
                if let Some(u) = url {
                    // As Fission's router: a trigger with a prefix serves
                    // the prefix alone.
                    self.warn(
                        doc.at("spec.relativeurl"),
                        format!("the trigger has a `prefix` ({p}): it serves that prefix, as Fission's router does, and not `relativeurl` ({u})"),
                    );
                }
                r.body["prefix"] = json!(p);
                if spec.get("keepPrefix").and_then(Value::as_bool) == Some(true) {
                    r.body["keep_prefix"] = json!(true);
                }
            }
            (None, Some(u)) => r.body["url"] = json!(u),
            (None, None) => {
                self.error(
                    doc.at("spec"),
                    "an HTTPTrigger needs `relativeurl` or `prefix`",
                );
                return false;
            }
        }
        let mut methods: Vec<String> = match spec.get("methods") {
            Some(Value::Array(m)) => m
                .iter()
                .filter_map(|m| m.as_str().map(str::to_string))
                .collect(),
            None | Some(Value::Null) => Vec::new(),
            Some(other) => {
                self.error(
                    doc.at("spec.methods"),
                    format!("`methods` must be a list (`[GET, POST]`), not {other}"),
                );
                return false;
            }
        };
        if let Some(m) = str_at(spec, "method").filter(|s| !s.is_empty()) {
            self.warn(
                doc.at("spec.method"),
                "`method` is deprecated in Fission: use `methods`",
            );
            if !methods.iter().any(|x| x == m) {
                methods.push(m.to_string());
            }
        }
        if methods.is_empty() {
            // Fission's router answers GET when a trigger names no method.
            methods.push("GET".into());
        }
        r.body["methods"] = json!(methods);
        if let Some(host) = str_at(spec, "host").filter(|s| !s.is_empty()) {
            self.warn(doc.at("spec.host"), "`host` is deprecated in Fission");
            r.body["host"] = json!(host);
        }
        if let Some(mode) = str_at(spec, "invocationMode").filter(|s| !s.is_empty()) {
            r.body["invocation_mode"] = json!(mode);
        }
        true
    }

    /// A TimeTrigger, as Fusion's `/v1/timers` takes it (the cron checked
    /// offline).
    fn fission_time_trigger(&mut self, doc: &Document, spec: &Value, r: &mut Resource) -> bool {
        let Some(function) = self.function_ref(doc, spec, r) else {
            return false;
        };
        let Some(cron) = str_at(spec, "cron").filter(|c| !c.is_empty()) else {
            self.error(doc.at("spec"), "a TimeTrigger needs `cron`");
            return false;
        };
        if let Err(e) = triggers::timer::Schedule::parse(cron, None) {
            self.error(doc.at("spec.cron"), e.to_string());
            return false;
        }
        r.body = json!({"name": r.name, "cron": cron, "function": function});
        if r.namespace != DEFAULT_NAMESPACE {
            r.body["namespace"] = json!(r.namespace);
        }
        // Fission's defaults (POST, `/`) apply when they are absent or empty.
        for field in ["method", "subpath"] {
            if let Some(v) = str_at(spec, field).filter(|v| !v.is_empty()) {
                r.body[field] = json!(if field == "method" {
                    v.to_uppercase()
                } else {
                    v.to_string()
                });
            }
        }
        true
    }

    /// A MessageQueueTrigger: Fusion's `/v1/mqtriggers` takes Fission's spec
    /// fields as they are, with the function by name.
    fn fission_mq_trigger(&mut self, doc: &Document, spec: &Value, r: &mut Resource) -> bool {
        let Some(f) = self.function_ref(doc, spec, r) else {
            return false;
        };
        if str_at(spec, "topic").is_none_or(str::is_empty) {
            self.error(doc.at("spec"), "a MessageQueueTrigger needs `topic`");
            return false;
        }
        r.body["function"] = json!(f);
        for field in [
            "messageQueueType",
            "topic",
            "respTopic",
            "errorTopic",
            "maxRetries",
            "contentType",
            "metadata",
            "pollingInterval",
            "cooldownPeriod",
            "minReplicaCount",
            "maxReplicaCount",
            "secret",
            "mqtkind",
        ] {
            match spec.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.is_empty() => {}
                Some(v) => r.body[field] = v.clone(),
            }
        }
        true
    }

    /// A CanaryConfig, as Fusion's `/v1/canaries` takes it: it references its
    /// route and both functions.
    fn fission_canary(&mut self, doc: &Document, spec: &Value, r: &mut Resource) -> bool {
        let mut ok = true;
        for (field, to, kind) in [
            ("trigger", "trigger", Kind::HttpTrigger),
            ("newfunction", "new_function", Kind::Function),
            ("oldfunction", "old_function", Kind::Function),
        ] {
            match str_at(spec, field).filter(|s| !s.is_empty()) {
                Some(name) => {
                    r.body[to] = json!(name);
                    r.refs.push((
                        kind,
                        r.namespace.clone(),
                        name.to_string(),
                        format!("spec.{field}"),
                    ));
                }
                None => {
                    self.error(doc.at("spec"), format!("a CanaryConfig needs `{field}`"));
                    ok = false;
                }
            }
        }
        for (field, to) in [
            ("weightincrement", "weight_increment"),
            ("duration", "weight_increment_duration"),
            ("failurethreshold", "failure_threshold"),
            ("failureType", "failure_type"),
        ] {
            match spec.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.is_empty() => {}
                Some(v) => r.body[to] = v.clone(),
            }
        }
        ok
    }

    fn function_ref(&mut self, doc: &Document, spec: &Value, r: &mut Resource) -> Option<String> {
        let kind = str_at(spec, "functionref.type").unwrap_or("name");
        if kind != "name" {
            self.error(
                doc.at("spec.functionref.type"),
                match kind {
                    "function-weights" => format!(
                        "functionref type {kind:?} is for an HTTPTrigger only (here: \"name\")"
                    ),
                    _ => format!("functionref type {kind:?} is not supported (\"name\", or \"function-weights\" on an HTTPTrigger)"),
                },
            );
            return None;
        }
        let Some(f) = str_at(spec, "functionref.name").filter(|s| !s.is_empty()) else {
            self.error(
                doc.at("spec.functionref"),
                format!("a {} needs `functionref.name`", r.kind.name()),
            );
            return None;
        };
        // Triggers reference functions in their own namespace only (as Fission).
        r.refs.push((
            Kind::Function,
            r.namespace.clone(),
            f.to_string(),
            "spec.functionref.name".into(),
        ));
        Some(f.to_string())
    }

    /// An HTTPTrigger's `functionref.functionweights` (a canary, Fission's
    /// `function-weights`): each function's share of the requests, adding up
    /// to 100.
    fn function_weights(
        &mut self,
        doc: &Document,
        spec: &Value,
        r: &mut Resource,
    ) -> Option<Value> {
        let at = "spec.functionref.functionweights";
        let Some(Value::Object(weights)) = spec.pointer("/functionref/functionweights") else {
            self.error(
                doc.at("spec.functionref"),
                "a `function-weights` functionref needs `functionweights`, each function's share of the requests (`{v1: 90, v2: 10}`)",
            );
            return None;
        };
        let mut total = 0;
        for (f, w) in weights {
            let Some(w) = w.as_u64().filter(|w| *w <= 100) else {
                self.error(
                    doc.at(&format!("{at}.{f}")),
                    format!("the weight of {f:?} must be a whole number from 0 to 100, not {w}"),
                );
                return None;
            };
            total += w;
            r.refs.push((
                Kind::Function,
                r.namespace.clone(),
                f.clone(),
                format!("{at}.{f}"),
            ));
        }
        if total != 100 {
            self.error(
                doc.at(at),
                format!("the function weights add up to {total}; they must add up to 100"),
            );
            return None;
        }
        Some(Value::Object(weights.clone()))
    }

    /// A Kubernetes-style Secret or ConfigMap (`data` base64, `stringData` plain).
    fn kube_data(&mut self, doc: &Document, kind: Kind, r: &mut Resource) -> bool {
        use base64::Engine;
        let mut data = Map::new();
        if let Some(Value::Object(d)) = doc.value.get("data") {
            for (k, v) in d {
                let Some(text) = v.as_str() else {
                    self.error(
                        doc.at(&format!("data.{k}")),
                        "a value must be a string (quote it)",
                    );
                    return false;
                };
                let value = if kind == Kind::Secret {
                    match base64::engine::general_purpose::STANDARD.decode(text) {
                        Ok(b) => match String::from_utf8(b) {
                            Ok(s) => s,
                            Err(_) => {
                                self.error(
                                    doc.at(&format!("data.{k}")),
                                    "only UTF-8 secret values are supported",
                                );
                                return false;
                            }
                        },
                        Err(e) => {
                            self.error(
                                doc.at(&format!("data.{k}")),
                                format!("Secret data must be base64: {e}"),
                            );
                            return false;
                        }
                    }
                } else {
                    text.to_string()
                };
                data.insert(k.clone(), json!(value));
            }
        }
        if let Some(Value::Object(d)) = doc.value.get("stringData") {
            for (k, v) in d {
                let Some(text) = v.as_str() else {
                    self.error(
                        doc.at(&format!("stringData.{k}")),
                        "a value must be a string (quote it)",
                    );
                    return false;
                };
                data.insert(k.clone(), json!(text));
            }
        }
        r.body["data"] = Value::Object(data);
        true
    }

    /// Fusion's own short form: `kind` and the API's fields at the top level.
    fn read_short(&mut self, doc: &Document, kind: Kind, namespace: &str) {
        let mut body = doc.value.clone();
        let Some(obj) = body.as_object_mut() else {
            return;
        };
        obj.remove("kind");
        let Some(name) = obj.get("name").and_then(Value::as_str).map(str::to_string) else {
            self.error(
                doc.at(""),
                format!(
                    "{} without `name` (or use Fission's `metadata.name`)",
                    kind.with_article()
                ),
            );
            return;
        };
        let ns = obj
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(namespace)
            .to_string();
        self.named.insert((kind, ns.clone(), name.clone()));
        for (what, value, path) in [("name", &name, "name"), ("namespace", &ns, "namespace")] {
            if !is_dns_label(value) {
                self.error(
                    doc.at(path),
                    format!("{what} {value:?} is not a DNS-1123 label (at most 63 lowercase letters, digits and '-')"),
                );
                return;
            }
        }
        if kind == Kind::Workflow && ns != DEFAULT_NAMESPACE {
            self.error(
                doc.at("namespace"),
                "workflows live in the default namespace",
            );
            return;
        }
        if ns != DEFAULT_NAMESPACE {
            obj.insert("namespace".into(), json!(ns));
        }
        let base = doc.file.parent().map(PathBuf::from).unwrap_or_default();
        let mut r = Resource {
            kind,
            namespace: ns.clone(),
            name: name.clone(),
            body: Value::Null,
            archives: Vec::new(),
            workflow_file: None,
            workflow_source: None,
            workflow_archive: None,
            refs: Vec::new(),
            refs_at: Vec::new(),
            at: doc.at(""),
            fission: false,
        };
        match kind {
            Kind::Function => {
                match obj
                    .remove("code")
                    .and_then(|v| v.as_str().map(str::to_string))
                {
                    Some(code) if !base.join(&code).is_file() => {
                        self.error(
                            doc.at("code"),
                            format!("function {name}: no code file {code} next to the spec"),
                        );
                        return;
                    }
                    Some(code) => r
                        .archives
                        .push(("package".into(), ArchiveSource::File(base.join(code)))),
                    None if obj.contains_key("package") => {}
                    None => {
                        self.error(
                            doc.at(""),
                            format!("function {name} needs `code` (a file next to the spec)"),
                        );
                        return;
                    }
                }
                // `concurrency` is max scale's older name: compared under the new one.
                if let Some(n) = obj.remove("concurrency") {
                    obj.entry("max_scale").or_insert(n);
                }
                if let Some(env) = obj.get("env").and_then(Value::as_str) {
                    r.refs
                        .push((Kind::Environment, ns.clone(), env.to_string(), "env".into()));
                }
            }
            Kind::Workflow => match obj.get("file").and_then(Value::as_str) {
                Some(f) => {
                    let file = base.join(f);
                    let source = match std::fs::read_to_string(&file) {
                        Ok(text) => text,
                        Err(e) => {
                            self.error(
                                doc.at("file"),
                                format!("workflow {name}: cannot read {f}: {e}"),
                            );
                            return;
                        }
                    };
                    // Checked offline as the server will (the functions it calls
                    // may be on the server only).
                    if let Err(errors) = engine::validate::parse_and_validate(&source, &|_| true) {
                        for e in errors {
                            let at = Location {
                                file: file.clone(),
                                line: e.line,
                                column: e.column,
                            };
                            self.error(at, format!("workflow {name}: {}", e.message));
                        }
                        return;
                    }
                    r.workflow_file = Some(file);
                }
                None => {
                    self.error(
                        doc.at(""),
                        format!("workflow {name} needs `file` (a *.wf.yaml next to the spec)"),
                    );
                    return;
                }
            },
            Kind::HttpTrigger | Kind::TimeTrigger | Kind::MessageQueueTrigger => {
                if let Some(f) = obj.get("function").and_then(Value::as_str) {
                    r.refs
                        .push((Kind::Function, ns.clone(), f.to_string(), "function".into()));
                }
                // A canary route's functions, each a reference.
                if let Some(Value::Object(weights)) = obj.get("function_weights") {
                    for f in weights.keys() {
                        r.refs.push((
                            Kind::Function,
                            ns.clone(),
                            f.clone(),
                            format!("function_weights.{f}"),
                        ));
                    }
                }
                if kind == Kind::TimeTrigger {
                    let cron = obj.get("cron").and_then(Value::as_str).unwrap_or("");
                    let tz = obj.get("timezone").and_then(Value::as_str);
                    if let Err(e) = triggers::timer::Schedule::parse(cron, tz) {
                        self.error(doc.at("cron"), format!("time trigger {name}: {e}"));
                        return;
                    }
                }
            }
            Kind::CanaryConfig => {
                for (field, kind) in [
                    ("trigger", Kind::HttpTrigger),
                    ("new_function", Kind::Function),
                    ("old_function", Kind::Function),
                ] {
                    if let Some(n) = obj.get(field).and_then(Value::as_str) {
                        r.refs.push((kind, ns.clone(), n.to_string(), field.into()));
                    }
                }
            }
            _ => {}
        }
        r.body = body;
        self.push(r, doc);
    }

    /// Fission Workflows' deploy, as `fission fn create --spec --env workflow
    /// --src W.wf.yaml` writes it: a Function of the `workflow` environment,
    /// its Package (one workflow file) and the environment itself (image
    /// `fission/workflow-env`). Fusion runs workflows itself: the environment
    /// is not applied, and each such function (with its package) is a
    /// workflow of its name. So is an environment of that image under another
    /// name (Fission Workflows' `examples/workflows-env.yaml` names it
    /// `workflows-env`). A folder that declares a `workflow` environment of
    /// another image keeps its functions as they are.
    fn fission_workflows_functions(&mut self) {
        let engine_env = |r: &Resource| {
            r.kind == Kind::Environment
                && r.body["image"]
                    .as_str()
                    .is_some_and(is_fission_workflows_image)
        };
        let dropped: Vec<(String, Location)> = self
            .resources
            .iter()
            .filter(|r| engine_env(r))
            .map(|r| (r.name.clone(), r.at.clone()))
            .collect();
        self.resources.retain(|r| !engine_env(r));
        for (name, at) in dropped {
            self.warn(at, format!("Environment {name} is Fission Workflows' (fission/workflow-env): Fusion runs workflows itself, so it is not applied, and its functions are stored as workflows"));
            self.fission_workflows_envs.insert(name);
        }
        // `workflow` is Fission Workflows' name for its environment unless
        // the folder declares one of that name of another image.
        let mut engines = self.fission_workflows_envs.clone();
        if !self
            .resources
            .iter()
            .any(|r| r.kind == Kind::Environment && r.name == WORKFLOW_ENV)
        {
            engines.insert(WORKFLOW_ENV.to_string());
        }
        let functions: Vec<Resource> = self
            .resources
            .iter()
            .filter(|r| {
                r.kind == Kind::Function
                    && r.body["env"].as_str().is_some_and(|e| engines.contains(e))
            })
            .cloned()
            .collect();
        for f in functions {
            let package = f
                .body
                .pointer("/package/packageref/name")
                .and_then(Value::as_str);
            let archive = package.and_then(|p| {
                self.resources
                    .iter()
                    .find(|r| r.kind == Kind::Package && r.namespace == f.namespace && r.name == p)
                    .and_then(|r| {
                        let by = |field: &str| r.archives.iter().find(|(n, _)| n == field);
                        by("deployment")
                            .or_else(|| by("source"))
                            .map(|(_, a)| a.clone())
                    })
            });
            let Some(archive) = archive else {
                // Left to the references' check, which says what is missing.
                continue;
            };
            self.resources.retain(|r| r.key() != f.key());
            // Its package goes with it, unless another function runs it.
            if let Some(p) = package {
                let used = self.resources.iter().any(|r| {
                    r.kind == Kind::Function
                        && r.namespace == f.namespace
                        && r.body
                            .pointer("/package/packageref/name")
                            .and_then(Value::as_str)
                            == Some(p)
                });
                if !used {
                    self.resources.retain(|r| {
                        !(r.kind == Kind::Package && r.namespace == f.namespace && r.name == p)
                    });
                }
            }
            self.resources.push(Resource {
                kind: Kind::Workflow,
                namespace: f.namespace.clone(),
                name: f.name.clone(),
                body: Value::Null,
                archives: Vec::new(),
                workflow_file: None,
                workflow_source: None,
                workflow_archive: Some(archive),
                refs: Vec::new(),
                refs_at: Vec::new(),
                at: f.at.clone(),
                fission: true,
            });
        }
    }

    /// References between the folder's resources, as Fission's validation checks
    /// them: what is missing from the folder is an error when it is a package,
    /// archive or trigger target, a warning when it may exist on the server.
    fn check_references(&mut self) {
        let declared: HashSet<(Kind, String, String)> =
            self.resources.iter().map(Resource::key).collect();
        let mut used_archives = HashSet::new();
        let mut problems = Vec::new();
        for r in &self.resources {
            let sources = r
                .archives
                .iter()
                .map(|(_, a)| a)
                .chain(r.workflow_archive.as_ref());
            for src in sources {
                if let ArchiveSource::Upload(name) = src {
                    if self.archives.iter().any(|a| &a.name == name) {
                        used_archives.insert(name.clone());
                    } else {
                        problems.push((
                            true,
                            r.at.clone(),
                            format!("{} references unknown archive archive://{name}", r.label()),
                        ));
                    }
                }
            }
            for (i, (kind, ns, name, _)) in r.refs.iter().enumerate() {
                // (One the folder has, with errors of its own, is there.)
                if self.named.contains(&(*kind, ns.clone(), name.clone())) {
                    continue;
                }
                // A trigger's function that is a workflow of the folder (Fission
                // Workflows' triggers named workflows so): the server takes it
                // as the workflow. Workflows' names have no namespace.
                let workflow = *kind == Kind::Function
                    && declared
                        .iter()
                        .any(|(k, _, n)| *k == Kind::Workflow && n == name);
                // Fission Workflows' environment, declared and left out: what
                // is wrong with such a function is said on its own.
                let engine_env =
                    *kind == Kind::Environment && self.fission_workflows_envs.contains(name);
                if workflow || engine_env {
                    continue;
                }
                // As Fission: a package, or a trigger's function, must be in the
                // folder; an environment, secret or configmap may be on the server.
                // (A workflow's function may be on the server: a warning, as in Fission.)
                let must = *kind == Kind::Package
                    || (*kind == Kind::Function && r.fission && r.kind != Kind::Workflow);
                if matches!(kind, Kind::Environment | Kind::Secret | Kind::ConfigMap) {
                    self.on_server
                        .push((r.at.clone(), r.label(), *kind, ns.clone(), name.clone()));
                }
                let message = format!(
                    "{} references {} {ns}/{name}, which is not in the specs{}",
                    r.label(),
                    kind.name(),
                    if must {
                        ""
                    } else {
                        " (it must exist on the server)"
                    }
                );
                let at = r.refs_at.get(i).unwrap_or(&r.at).clone();
                problems.push((must, at, message));
            }
        }
        // A canary of a route of the folder: the route must share its
        // requests between the two functions, or the server refuses the
        // canary half-way through an apply.
        for c in self
            .resources
            .iter()
            .filter(|r| r.kind == Kind::CanaryConfig)
        {
            let field = |f: &str| c.body[f].as_str().unwrap_or_default().to_string();
            let (trigger, old, new) = (
                field("trigger"),
                field("old_function"),
                field("new_function"),
            );
            let route = self.resources.iter().find(|r| {
                r.kind == Kind::HttpTrigger && r.namespace == c.namespace && r.name == trigger
            });
            let Some(route) = route else { continue };
            let weights = &route.body["function_weights"];
            if weights.get(&old).is_none() || weights.get(&new).is_none() {
                problems.push((
                    true,
                    c.at.clone(),
                    format!(
                        "{}: {} does not share its requests between {old:?} and {new:?}: give it \
                         `functionref: {{type: function-weights, functionweights: {{{old}: 100, {new}: 0}}}}`",
                        c.label(),
                        route.label()
                    ),
                ));
            }
        }
        // As Fission: a package no function of the folder runs is a warning.
        for p in self.resources.iter().filter(|r| r.kind == Kind::Package) {
            let used = self.resources.iter().any(|f| {
                f.refs.iter().any(|(k, ns, name, _)| {
                    (*k, ns, name) == (Kind::Package, &p.namespace, &p.name)
                })
            });
            if !used {
                problems.push((
                    false,
                    p.at.clone(),
                    format!("{} is not used by any function", p.label()),
                ));
            }
        }
        // A function runs its package as built for its own environment: the
        // folder's package made for another one is refused by the server,
        // half-way through the apply.
        for f in self.resources.iter().filter(|r| r.kind == Kind::Function) {
            let Some(pkg) = f
                .body
                .pointer("/package/packageref/name")
                .and_then(Value::as_str)
            else {
                continue;
            };
            let built_for = self
                .resources
                .iter()
                .find(|p| p.kind == Kind::Package && p.namespace == f.namespace && p.name == pkg)
                .and_then(|p| p.body["environment"].as_str());
            if let (Some(env), Some(built_for)) = (f.body["env"].as_str(), built_for) {
                if env != built_for {
                    problems.push((
                        true,
                        f.at.clone(),
                        format!(
                            "{} runs in Environment {env}, but its Package {pkg} is for Environment {built_for}",
                            f.label()
                        ),
                    ));
                }
            }
        }
        for a in &self.archives {
            if !used_archives.contains(&a.name) {
                problems.push((
                    false,
                    a.at.clone(),
                    format!("archive {:?} is not used by any package", a.name),
                ));
            }
        }
        // Two routes of the folder that would answer the same requests: the
        // server refuses the second, so apply would stop half-way.
        let routes: Vec<(&Resource, triggers::Route)> = self
            .resources
            .iter()
            .filter(|r| r.kind == Kind::HttpTrigger)
            .filter_map(|r| Some((r, serde_json::from_value(r.body.clone()).ok()?)))
            .collect();
        for (i, (r, route)) in routes.iter().enumerate() {
            if let Some((first, _)) = routes[..i].iter().find(|(_, o)| o.answers_as(route)) {
                problems.push((
                    true,
                    r.at.clone(),
                    format!(
                        "{} would answer the same requests as {}, defined at {}",
                        r.label(),
                        first.label(),
                        first.at
                    ),
                ));
            }
        }
        for (error, at, message) in problems {
            if error {
                self.error(at, message);
            } else {
                self.warn(at, message);
            }
        }
    }
}

/// The document's top-level field that `error` names, as a word of it
/// (`` `poolsiz` ``, `memory_mb 1 is ...`), if any.
fn named_field<'v>(error: &str, doc: &'v Value) -> Option<&'v str> {
    let fields = doc.as_object()?;
    // The first the error names: `unknown field `max_scal`, expected one of
    // `name`, `env`, ...` is about `max_scal`, not `env`.
    error
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .filter(|w| !matches!(*w, "kind" | "name" | "namespace"))
        .find_map(|w| fields.get_key_value(w))
        .map(|(k, _)| k.as_str())
}

/// What the server checks of an environment, function or trigger when it is
/// created, checked offline (a function's code, uploaded by apply, stands in
/// as a package of its own name).
fn check_offline(r: &Resource) -> Result<(), String> {
    fn parsed<T: serde::de::DeserializeOwned>(body: &Value) -> Result<T, String> {
        // The field a value of the wrong type is in (`poolsize: invalid
        // type: string "many", expected usize`): serde's own error names none.
        serde_path_to_error::deserialize(body.clone()).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.inner().to_string();
            if path == "." || inner.starts_with("unknown field") {
                inner
            } else {
                format!("{path}: {inner}")
            }
        })
    }
    if r.kind == Kind::HttpTrigger {
        return parsed::<triggers::Route>(&r.body)?
            .validate()
            .map_err(|e| e.to_string());
    }
    let mut body = r.body.clone();
    if body.get("namespace").is_none() {
        body["namespace"] = json!(r.namespace);
    }
    match r.kind {
        Kind::Environment => parsed::<pool_manager::Environment>(&body)?
            .validate()
            .map_err(|e| e.to_string()),
        Kind::Function => {
            if body.get("package").is_none() {
                body["package"] = json!({"packageref": {"name": r.name, "namespace": r.namespace}});
            }
            parsed::<pool_manager::Function>(&body)?
                .validate()
                .map_err(|e| e.to_string())
        }
        Kind::TimeTrigger => parsed::<triggers::timer::TimeTrigger>(&body)?
            .validate()
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Kind::MessageQueueTrigger => parsed::<triggers::mqt::MessageQueueTrigger>(&body)?
            .validate()
            .map_err(|e| e.to_string()),
        Kind::CanaryConfig => parsed::<triggers::canary::Canary>(&body)?
            .validate()
            .map_err(|e| e.to_string()),
        _ => Ok(()),
    }
}

/// A value that sets nothing: null, `{}`, `[]`, `0`, `false` or `""`.
fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn is_empty_archive(a: &Value) -> bool {
    str_at(a, "url").is_none_or(str::is_empty) && str_at(a, "literal").is_none_or(str::is_empty)
}

/// The string at a dot-separated path.
pub fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    let mut cur = v;
    for seg in path.split('.') {
        cur = cur.get(seg)?;
    }
    cur.as_str()
}

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Kubernetes memory quantity in MiB (`256Mi`, `1Gi`, `500M`, bytes).
pub fn quantity_mib(v: &Value) -> Option<u64> {
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let bytes = n * match unit {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        _ => return None,
    };
    (bytes.is_finite() && bytes > 0.0).then(|| (bytes / (1024.0 * 1024.0)).ceil() as u64)
}

/// A Kubernetes cpu quantity in millicores (`500m`, `1`, `0.5`).
pub fn quantity_millicores(v: &Value) -> Option<u64> {
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let m = match s.strip_suffix('m') {
        Some(m) => m.parse::<f64>().ok()?,
        None => s.parse::<f64>().ok()? * 1000.0,
    };
    (m.is_finite() && m > 0.0).then(|| m.ceil() as u64)
}

// ---- the fields each kind may have ----

/// What a field holds, for the unknown-field check.
pub enum Shape {
    /// Anything; not looked into.
    Any,
    /// A Kubernetes-only field Fusion reads but cannot honour: a warning.
    KubeOnly,
    /// A mapping with these fields.
    Fields(&'static [(&'static str, Shape)]),
    /// A list of these.
    List(&'static Shape),
    /// A whole number, 0 or more (Fission's CRD has an integer there).
    Count,
    /// A string.
    Text,
}

use Shape::{Any, Count, Fields, KubeOnly, List, Text};

const METADATA: Shape = Fields(&[
    ("name", Any),
    ("namespace", Any),
    ("labels", Any),
    ("annotations", Any),
    ("creationTimestamp", Any),
    ("resourceVersion", Any),
    ("uid", Any),
    ("generation", Any),
]);
const REF: Shape = Fields(&[
    ("name", Any),
    ("namespace", Any),
    ("resourceversion", Any),
    ("mountPath", Any),
]);
const CHECKSUM: Shape = Fields(&[("type", Any), ("sum", Any)]);
const ARCHIVE: Shape = Fields(&[
    ("type", Any),
    ("literal", Any),
    ("url", Any),
    ("checksum", CHECKSUM),
    ("oci", KubeOnly),
    ("secretref", KubeOnly),
]);
const FUNCTION_REF: Shape = Fields(&[
    ("type", Any),
    ("name", Any),
    ("functionweights", Any),
    ("alias", Any),
    ("version", Any),
]);

const DEPLOYMENT_FIELDS: &Shape = &Fields(&[
    ("apiVersion", Any),
    ("kind", Any),
    ("name", Any),
    ("uid", Any),
]);
const ARCHIVE_FIELDS: &Shape = &Fields(&[
    ("apiVersion", Any),
    ("kind", Any),
    ("name", Any),
    ("rootdir", Any),
    ("include", Any),
    ("exclude", Any),
]);
const ENVIRONMENT_FIELDS: &Shape = &Fields(&[
    ("apiVersion", Any),
    ("kind", Any),
    ("metadata", METADATA),
    ("status", Any),
    (
        "spec",
        Fields(&[
            ("version", Count),
            (
                "runtime",
                Fields(&[
                    ("image", Any),
                    ("container", KubeOnly),
                    ("podspec", KubeOnly),
                    // Older Fission's ports and path of the runtime's container.
                    ("functionendpointport", KubeOnly),
                    ("loadendpointport", KubeOnly),
                    ("loadendpointpath", KubeOnly),
                ]),
            ),
            (
                "builder",
                Fields(&[
                    ("image", Any),
                    ("command", Any),
                    ("container", KubeOnly),
                    ("podspec", KubeOnly),
                ]),
            ),
            ("poolsize", Count),
            (
                "resources",
                Fields(&[
                    ("requests", Any),
                    ("limits", Fields(&[("cpu", Any), ("memory", Any)])),
                ]),
            ),
            ("keeparchive", Any),
            ("allowedFunctionsPerContainer", Any),
            ("allowAccessToExternalNetwork", Any),
            ("terminationGracePeriod", Any),
            ("imagepullsecret", KubeOnly),
        ]),
    ),
]);
const PACKAGE_FIELDS: &Shape = &Fields(&[
    ("apiVersion", Any),
    ("kind", Any),
    ("metadata", METADATA),
    ("status", Any),
    (
        "spec",
        Fields(&[
            ("environment", REF),
            ("source", ARCHIVE),
            ("deployment", ARCHIVE),
            ("buildcmd", Any),
        ]),
    ),
]);
const FUNCTION_FIELDS: &Shape = &Fields(&[
    ("apiVersion", Any),
    ("kind", Any),
    ("metadata", METADATA),
    ("status", Any),
    (
        "spec",
        Fields(&[
            ("environment", REF),
            (
                "package",
                Fields(&[("packageref", REF), ("functionName", Any)]),
            ),
            ("secrets", List(&REF)),
            ("configmaps", List(&REF)),
            ("resources", KubeOnly),
            (
                "InvokeStrategy",
                Fields(&[
                    ("StrategyType", Any),
                    (
                        "ExecutionStrategy",
                        Fields(&[
                            ("ExecutorType", Any),
                            ("MinScale", Any),
                            ("MaxScale", Any),
                            ("TargetCPUPercent", KubeOnly),
                            ("SpecializationTimeout", Any),
                            ("hpaMetrics", KubeOnly),
                            ("hpaBehavior", KubeOnly),
                        ]),
                    ),
                ]),
            ),
            ("functionTimeout", Count),
            ("idletimeout", Count),
            ("concurrency", Count),
            ("requestsPerPod", Count),
            ("invocation", Any),
            ("onceOnly", Any),
            ("retainPods", Any),
            ("podspec", KubeOnly),
        ]),
    ),
]);
const HTTP_TRIGGER_FIELDS: &Shape = &Fields(&[
    ("apiVersion", Any),
    ("kind", Any),
    ("metadata", METADATA),
    ("status", Any),
    (
        "spec",
        Fields(&[
            ("host", Text),
            ("relativeurl", Text),
            ("prefix", Text),
            ("keepPrefix", Any),
            ("method", Text),
            ("methods", Any),
            ("functionref", FUNCTION_REF),
            ("invocationMode", Text),
            ("createingress", KubeOnly),
            ("ingressconfig", KubeOnly),
        ]),
    ),
]);
const TIME_TRIGGER_FIELDS: &Shape = &Fields(&[
    ("apiVersion", Any),
    ("kind", Any),
    ("metadata", METADATA),
    ("status", Any),
    (
        "spec",
        Fields(&[
            ("cron", Any),
            ("functionref", FUNCTION_REF),
            ("method", Any),
            ("subpath", Any),
        ]),
    ),
]);
const CANARY_FIELDS: &Shape = &Fields(&[
    ("apiVersion", Any),
    ("kind", Any),
    ("metadata", METADATA),
    ("status", Any),
    (
        "spec",
        Fields(&[
            ("trigger", Text),
            ("newfunction", Text),
            ("oldfunction", Text),
            ("weightincrement", Any),
            ("duration", Text),
            ("failurethreshold", Any),
            ("failureType", Text),
        ]),
    ),
]);
const MQ_TRIGGER_FIELDS: &Shape = &Fields(&[
    ("apiVersion", Any),
    ("kind", Any),
    ("metadata", METADATA),
    ("status", Any),
    (
        "spec",
        Fields(&[
            ("functionref", FUNCTION_REF),
            ("messageQueueType", Any),
            ("topic", Any),
            ("respTopic", Any),
            ("errorTopic", Any),
            ("maxRetries", Any),
            ("contentType", Any),
            ("pollingInterval", Any),
            ("cooldownPeriod", Any),
            ("minReplicaCount", Any),
            ("maxReplicaCount", Any),
            ("metadata", Any),
            ("secret", Any),
            ("mqtkind", Any),
            ("podspec", KubeOnly),
        ]),
    ),
]);
const WORKFLOW_FIELDS: &Shape = &Fields(&[
    ("apiVersion", Any),
    ("kind", Any),
    ("metadata", METADATA),
    ("status", Any),
    ("spec", Any),
]);
const KUBE_DATA_FIELDS: &Shape = &Fields(&[
    ("apiVersion", Any),
    ("kind", Any),
    ("metadata", METADATA),
    ("type", Any),
    ("data", Any),
    ("stringData", Any),
    ("immutable", Any),
]);

/// The path of field `key` below `path` (`spec` and `runtime`: `spec.runtime`).
pub(crate) fn field_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The keys of `value` written in another case than the field of `shape`
/// they stand for, as (parent path, key, field), parents before what is
/// below them: Go's JSON decoding takes an exact match first, else one in
/// any case.
fn case_renames(
    value: &Value,
    path: &str,
    shape: &Shape,
    out: &mut Vec<(String, String, &'static str)>,
) {
    let join = |k: &str| field_path(path, k);
    match (shape, value) {
        (Fields(fields), Value::Object(obj)) => {
            for (k, v) in obj {
                let field = fields.iter().find(|(name, _)| name == k).or_else(|| {
                    fields
                        .iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case(k) && !obj.contains_key(*name))
                });
                if let Some((name, inner)) = field {
                    if name != k {
                        out.push((path.to_string(), k.clone(), name));
                    }
                    case_renames(v, &join(name), inner, out);
                }
            }
        }
        (List(inner), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                case_renames(item, &join(&i.to_string()), inner, out);
            }
        }
        _ => {}
    }
}

/// Warns, with its place, about every field `shape` does not know, and every
/// Kubernetes-only field that has no effect here.
fn check_fields(specs: &mut Specs, doc: &Document, value: &Value, path: &str, shape: &Shape) {
    let join = |k: &str| field_path(path, k);
    match (shape, value) {
        (Fields(fields), Value::Object(obj)) => {
            let mut unknown = BTreeMap::new();
            for (k, v) in obj {
                match fields.iter().find(|(name, _)| name == k) {
                    Some((_, KubeOnly)) if !is_blank(v) => specs.warn(
                        doc.at(&join(k)),
                        format!(
                            "`{}` is Kubernetes-only and has no effect in Fusion",
                            join(k)
                        ),
                    ),
                    Some((_, inner)) => check_fields(specs, doc, v, &join(k), inner),
                    None => {
                        unknown.insert(join(k), ());
                    }
                }
            }
            for k in unknown.into_keys() {
                specs.warn(doc.at(&k), format!("unknown field `{k}` (ignored)"));
            }
        }
        (List(inner), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check_fields(specs, doc, item, &join(&i.to_string()), inner);
            }
        }
        // A value of the wrong type would be dropped for the default without a
        // word: refused where it is written.
        (Count, v) if v.as_u64().is_none() && !v.is_null() => specs.error(
            doc.at(path),
            format!("`{path}` must be a whole number, 0 or more, not {v}"),
        ),
        (Text, v) if !v.is_string() && !v.is_null() => {
            specs.error(doc.at(path), format!("`{path}` must be a string, not {v}"))
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_form_with_a_metadata_field_of_its_own_is_the_short_form() {
        let specs = Specs::read_object(
            &Document::object(
                json!({"kind": "MessageQueueTrigger", "name": "q", "function": "f",
                "topic": "t", "messageQueueType": "nats-jetstream",
                "metadata": {"natsUrl": "nats://127.0.0.1:4222"}}),
            ),
            "default",
        );
        assert!(specs.errors.is_empty(), "{:?}", specs.errors);
        assert_eq!(
            specs.resources[0].body["metadata"]["natsUrl"],
            "nats://127.0.0.1:4222"
        );
    }

    #[test]
    fn a_function_in_another_environment_than_its_package_is_refused_offline() {
        let docs = [
            json!({"apiVersion": "fission.io/v1", "kind": "Package", "metadata": {"name": "p"},
                "spec": {"environment": {"name": "nodejs"},
                    "deployment": {"type": "literal", "literal": "aGk="}}}),
            json!({"apiVersion": "fission.io/v1", "kind": "Function", "metadata": {"name": "f"},
                "spec": {"environment": {"name": "python"},
                    "package": {"packageref": {"name": "p"}}}}),
        ]
        .map(Document::object);
        let specs = Specs::read(&docs, "default");
        assert!(
            specs
                .errors
                .iter()
                .any(|e| e.contains("Function f runs in Environment python, but its Package p is for Environment nodejs")),
            "{:?}",
            specs.errors
        );
    }

    /// A reference to a resource the folder has, refused for an error of
    /// its own, says nothing more: the resource's own error says what is
    /// wrong (it was said to be missing from the folder).
    #[test]
    fn a_reference_to_a_broken_resource_of_the_folder_is_not_said_to_be_missing() {
        let docs = [
            json!({"apiVersion": "fission.io/v1", "kind": "Package", "metadata": {"name": "p"},
                "spec": {"environment": {"name": "nodejs"},
                    "deployment": {"type": "literal", "literal": 42}}}),
            json!({"apiVersion": "fission.io/v1", "kind": "Function", "metadata": {"name": "f"},
                "spec": {"environment": {"name": "nodejs"},
                    "package": {"packageref": {"name": "p"}}}}),
        ]
        .map(Document::object);
        let specs = Specs::read(&docs, "default");
        assert!(
            specs.errors.iter().any(|e| e.contains("a Package needs")),
            "{:?}",
            specs.errors
        );
        assert!(
            !specs.errors.iter().any(|e| e.contains("not in the specs")),
            "{:?}",
            specs.errors
        );
    }

    #[test]
    fn a_newdeploy_functions_most_instances_are_its_max_scale_not_its_concurrency() {
        let specs = Specs::read_object(
            &Document::object(json!({"apiVersion": "fission.io/v1", "kind": "Function",
                "metadata": {"name": "f"}, "spec": {"environment": {"name": "py"},
                "package": {"packageref": {"name": "p"}}, "concurrency": 500,
                "InvokeStrategy": {"ExecutionStrategy": {"ExecutorType": "newdeploy",
                    "MinScale": 1, "MaxScale": 3}}}})),
            "default",
        );
        assert!(specs.errors.is_empty(), "{:?}", specs.errors);
        assert!(specs.warnings.is_empty(), "{:?}", specs.warnings);
        assert_eq!(specs.resources[0].body["max_scale"], 3);
    }

    #[test]
    fn another_apis_objects_are_skipped_and_an_unknown_fission_kind_refused() {
        let read = |v: Value| Specs::read_object(&Document::object(v), "default");
        for other in [
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}),
            json!({"apiVersion": "v1", "kind": "List", "items": []}),
        ] {
            let specs = read(other.clone());
            assert!(specs.errors.is_empty(), "{other}: {:?}", specs.errors);
            assert!(specs.resources.is_empty(), "{other}");
            assert!(
                specs.warnings[0].contains("is not a Fission resource; the document is skipped"),
                "{:?}",
                specs.warnings
            );
        }
        for typo in [
            json!({"apiVersion": "fission.io/v1", "kind": "Functon", "metadata": {"name": "f"}}),
            json!({"kind": "Functon", "name": "f"}),
        ] {
            let specs = read(typo.clone());
            assert!(
                specs.errors[0].contains("unknown kind \"Functon\""),
                "{typo}: {:?}",
                specs.errors
            );
        }
        // RFC-0022's run document: said what to do instead.
        let run = json!({"apiVersion": "fission.io/v1", "kind": "WorkflowRun", "metadata": {"name": "r"}, "spec": {"workflowRef": "w"}});
        let specs = read(run);
        assert!(
            specs.errors[0].contains("fusion workflow run --name WORKFLOW"),
            "{:?}",
            specs.errors
        );
    }

    #[test]
    fn a_builder_command_is_the_environments_build_command() {
        let read = |command: &str| {
            let specs = Specs::read_object(
                &Document::object(json!({"apiVersion": "fission.io/v1", "kind": "Environment",
                    "metadata": {"name": "py"}, "spec": {"version": 3, "runtime": {
                        "image": "fission/python-env"}, "builder": {
                        "image": "fission/python-builder", "command": command}}})),
                "default",
            );
            assert!(specs.errors.is_empty(), "{:?}", specs.errors);
            specs.resources[0].body.get("buildcmd").cloned()
        };
        assert_eq!(read("./mybuild.sh"), Some(json!("./mybuild.sh")));
        // `build`, the builder images' own script: the bundled builder's steps.
        assert_eq!(read("build"), None);
    }

    #[test]
    fn fissions_default_concurrency_is_applied_with_a_warning() {
        let read = |concurrency: u64| {
            Specs::read_object(
                &Document::object(json!({"apiVersion": "fission.io/v1", "kind": "Function",
                    "metadata": {"name": "charge"}, "spec": {
                        "environment": {"name": "nodejs", "namespace": "default"},
                        "package": {"packageref": {"name": "charge-pkg", "namespace": "default"}},
                        "concurrency": concurrency}})),
                "default",
            )
        };
        let fissions = read(500);
        assert_eq!(fissions.resources[0].body["max_scale"], 500);
        assert!(
            fissions
                .warnings
                .iter()
                .any(|w| w.contains("concurrency 500 is Fission's default")),
            "{:?}",
            fissions.warnings
        );
        let own = read(20);
        assert_eq!(own.resources[0].body["max_scale"], 20);
        assert!(
            !own.warnings.iter().any(|w| w.contains("concurrency")),
            "{:?}",
            own.warnings
        );
    }

    #[test]
    fn older_fission_runtime_ports_are_known_fields() {
        let specs = Specs::read_object(
            &Document::object(json!({"apiVersion": "fission.io/v1", "kind": "Environment",
                "metadata": {"name": "py"}, "spec": {"version": 2, "runtime": {
                    "image": "fission/python-env", "functionendpointport": 8888,
                    "loadendpointport": 8888, "loadendpointpath": "/specialize"}}})),
            "default",
        );
        assert!(specs.errors.is_empty(), "{:?}", specs.errors);
        assert_eq!(specs.warnings.len(), 3, "{:?}", specs.warnings);
        for w in &specs.warnings {
            assert!(w.contains("is Kubernetes-only"), "{w}");
        }
    }

    #[test]
    fn what_the_server_refuses_at_creation_is_refused_offline() {
        let read = |doc: Value| Specs::read_object(&Document::object(doc), "default").errors;
        let errors = read(json!({"kind": "Function", "name": "f", "env": "py",
            "package": {"packageref": {"name": "p"}}, "timeout_secs": 0}));
        assert!(
            errors[0].contains("timeout 0 s must be between"),
            "{errors:?}"
        );
        let errors = read(
            json!({"apiVersion": "fission.io/v1", "kind": "MessageQueueTrigger",
            "metadata": {"name": "q"}, "spec": {"functionref": {"type": "name", "name": "f"},
            "topic": "t", "messageQueueType": "kafka"}}),
        );
        assert!(
            errors[0].contains("Fusion consumes nats-jetstream"),
            "{errors:?}"
        );
        let errors = read(
            json!({"kind": "Environment", "name": "e", "runtime": "python",
            "poolsize": 65}),
        );
        assert!(errors[0].contains("above the limit of 64"), "{errors:?}");
    }

    #[test]
    fn an_objects_mistakes_name_its_fields_and_its_references_are_not_looked_for() {
        let doc = |spec: Value| {
            Document::object(json!({"apiVersion": "fission.io/v1", "kind": "Function",
                "metadata": {"name": "f", "namespace": "team"}, "spec": spec}))
        };
        let specs = Specs::read_object(
            &doc(json!({"environment": {"name": "py"}, "package": {"functionName": "main"}})),
            "default",
        );
        assert_eq!(specs.resources.len(), 0);
        assert!(
            specs.errors[0].starts_with("spec.package"),
            "{:?}",
            specs.errors
        );
        // Its package is not among other documents: not an error here.
        let specs = Specs::read_object(
            &doc(json!({"environment": {"name": "py"},
                        "package": {"packageref": {"name": "p"}, "functionName": "main"}})),
            "default",
        );
        assert!(specs.errors.is_empty(), "{:?}", specs.errors);
        let r = &specs.resources[0];
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("team", "f"));
        assert!(r
            .refs
            .iter()
            .any(|(k, ns, n, _)| *k == Kind::Package && ns == "team" && n == "p"));
    }

    #[test]
    fn a_field_of_the_wrong_type_is_refused_where_it_is_written() {
        let function = |spec: Value| {
            Document::object(json!({"apiVersion": "fission.io/v1", "kind": "Function",
                "metadata": {"name": "f"}, "spec": spec}))
        };
        let base = json!({"environment": {"name": "py"},
            "package": {"packageref": {"name": "p"}, "functionName": "main"}});
        for (field, value) in [
            ("functionTimeout", json!("sixty")),
            ("requestsPerPod", json!(-3)),
            ("idletimeout", json!(-5)),
            ("concurrency", json!(1.5)),
        ] {
            let mut spec = base.clone();
            spec[field] = value;
            let specs = Specs::read_object(&function(spec), "default");
            assert!(
                specs
                    .errors
                    .iter()
                    .any(|e| e.contains(&format!("spec.{field}` must be a whole number"))),
                "{field}: {:?}",
                specs.errors
            );
        }
        let env = Document::object(json!({"apiVersion": "fission.io/v1", "kind": "Environment",
            "metadata": {"name": "py"}, "spec": {"runtime": {"image": "fission/python-env"},
            "version": 3, "poolsize": "three"}}));
        let specs = Specs::read_object(&env, "default");
        assert!(
            specs
                .errors
                .iter()
                .any(|e| e.contains("spec.poolsize` must be a whole number")),
            "{:?}",
            specs.errors
        );
        let trigger =
            Document::object(json!({"apiVersion": "fission.io/v1", "kind": "HTTPTrigger",
            "metadata": {"name": "t"}, "spec": {"relativeurl": 42, "functionref": {"name": "f"}}}));
        let specs = Specs::read_object(&trigger, "default");
        assert!(
            specs
                .errors
                .iter()
                .any(|e| e.contains("spec.relativeurl` must be a string")),
            "{:?}",
            specs.errors
        );
    }

    /// A trigger with both a `prefix` and a `relativeurl` serves the prefix,
    /// as Fission's router does, and says that the URL goes unused.
    #[test]
    fn a_trigger_with_a_prefix_and_a_url_says_the_url_goes_unused() {
        let trigger =
            Document::object(json!({"apiVersion": "fission.io/v1", "kind": "HTTPTrigger",
            "metadata": {"name": "t"}, "spec": {"relativeurl": "/one", "prefix": "/api",
            "functionref": {"name": "f"}}}));
        let specs = Specs::read_object(&trigger, "default");
        assert!(specs.errors.is_empty(), "{:?}", specs.errors);
        assert!(
            specs.warnings.iter().any(|w| w.contains("spec.relativeurl")
                && w.contains("serves that prefix")
                && w.contains("/one")),
            "{:?}",
            specs.warnings
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_mib(&json!("256Mi")), Some(256));
        assert_eq!(quantity_mib(&json!("1Gi")), Some(1024));
        assert_eq!(quantity_mib(&json!("500M")), Some(477));
        assert_eq!(quantity_mib(&json!("lots")), None);
        assert_eq!(quantity_millicores(&json!("500m")), Some(500));
        assert_eq!(quantity_millicores(&json!(2)), Some(2000));
        assert_eq!(quantity_millicores(&json!("0.25")), Some(250));
        assert_eq!(quantity_millicores(&json!("-1")), None);
    }
}
