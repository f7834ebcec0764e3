//! The one interface every trigger calls its target through: a function (by
//! key, proxied to one of its instances by the pool manager) or a workflow
//! (run by the engine).

use axum::body::Body;
use axum::http::{Request, Response};
use pool_manager::PoolManager;

use crate::workflows::Workflows;

/// The methods a workflow's URL runs it on (HEAD and OPTIONS start no run).
const WORKFLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";

/// What a trigger starts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A function, by key (`name` in `default`, `namespace/name` elsewhere).
    Function(String),
    /// A workflow, by name.
    Workflow(String),
}

/// Calls functions and workflows for every kind of trigger.
#[derive(Clone)]
pub struct Invoker {
    pool: PoolManager,
    workflows: Workflows,
}

impl Invoker {
    pub fn new(pool: PoolManager, workflows: Workflows) -> Invoker {
        Invoker { pool, workflows }
    }

    pub fn pool(&self) -> &PoolManager {
        &self.pool
    }

    pub fn function_exists(&self, key: &str) -> bool {
        self.pool.function_exists(key)
    }

    pub fn workflow_exists(&self, name: &str) -> bool {
        self.workflows.exists(name)
    }

    /// A trigger that names as its function what is a workflow (no function
    /// of that name, a workflow of it) targets the workflow: Fission Workflows
    /// deployed a workflow as a function of its `workflow` environment, and
    /// Fission's triggers name it as a function (`functionref`). Functions
    /// and workflows share one name space; a workflow's name has no
    /// namespace, so the function's name alone is looked for.
    pub fn retarget_to_workflow(
        &self,
        namespace: &str,
        function: &mut Option<String>,
        workflow: &mut Option<String>,
    ) {
        let Some(f) = function.as_deref() else { return };
        if workflow.is_some()
            || self.function_exists(&pool_manager::resources::qualified(namespace, f))
            || !self.workflow_exists(f)
        {
            return;
        }
        *workflow = function.take();
    }

    /// The stored workflows that run `name` (a function's key or a workflow's
    /// name), by name, and that it does not run itself.
    pub fn workflows_running(&self, name: &str) -> pool_manager::error::Result<Vec<String>> {
        self.workflows
            .engine
            .workflows_keeping(name)
            .map_err(|e| pool_manager::Error::Storage(e.to_string()))
    }

    /// Runs in flight still to call `name` (a function's key or a workflow's
    /// name) as their own version of their workflow says, a few at most.
    pub fn runs_running(&self, name: &str) -> pool_manager::error::Result<Vec<String>> {
        self.workflows
            .engine
            .runs_in_flight_running(name, 3)
            .map_err(|e| pool_manager::Error::Storage(e.to_string()))
    }

    /// What a trigger's target is at the time of a call: a function that
    /// does not exist, where a workflow of its name does, is that workflow
    /// (made after the trigger; see `retarget_to_workflow`). Triggers may
    /// name targets not made yet, as Fission's resolve theirs at each call:
    /// the error names what does not exist (yet), `function "f"` or
    /// `workflow "w"`. One lookup for a function that exists (a route's
    /// every call).
    pub fn resolve(&self, target: Target) -> std::result::Result<Target, String> {
        match target {
            Target::Function(key) => {
                if self.function_exists(&key) {
                    return Ok(Target::Function(key));
                }
                let name = key.rsplit('/').next().unwrap_or(&key);
                if self.workflow_exists(name) {
                    Ok(Target::Workflow(name.to_string()))
                } else {
                    Err(format!("function {key:?}"))
                }
            }
            Target::Workflow(w) if !self.workflow_exists(&w) => Err(format!("workflow {w:?}")),
            t => Ok(t),
        }
    }

    pub fn exists(&self, target: &Target) -> bool {
        match target {
            Target::Function(f) => self.function_exists(f),
            Target::Workflow(w) => self.workflow_exists(w),
        }
    }

    /// Calls `target` with `req`. Both get each of `params` as
    /// `X-Fission-Params-<name>` (a workflow in its input's `headers`); a
    /// function sees `path` (plus the request's query).
    pub async fn call(
        &self,
        target: &Target,
        req: Request<Body>,
        path: &str,
        params: &[(String, String)],
    ) -> Response<Body> {
        let wait = Some(self.pool.config().lease_wait);
        self.call_within(target, req, path, params, wait).await
    }

    /// As `call`; a function at its max scale is waited for up to `wait`
    /// (`None`: its timeout) where `call` waits `--lease-wait-ms`: a
    /// message-queue trigger's delivery is not a caller to turn away.
    pub async fn call_within(
        &self,
        target: &Target,
        mut req: Request<Body>,
        path: &str,
        params: &[(String, String)],
        wait: Option<std::time::Duration>,
    ) -> Response<Body> {
        match target {
            Target::Function(f) => {
                pool_manager::forward_within(&self.pool, f, req, path, params, wait).await
            }
            // An OPTIONS request (a browser's CORS preflight, a probe) asks what
            // the URL takes; it starts no run.
            Target::Workflow(_) if req.method() == http::Method::OPTIONS => {
                let mut resp = Response::new(Body::empty());
                *resp.status_mut() = http::StatusCode::NO_CONTENT;
                resp.headers_mut().insert(
                    http::header::ALLOW,
                    http::HeaderValue::from_static(WORKFLOW_METHODS),
                );
                resp
            }
            // A HEAD request (a link checker, a monitor) must not have a run's
            // side effects, and a run's headers cannot be known without one.
            Target::Workflow(w) if req.method() == http::Method::HEAD => {
                let mut resp = pool_manager::error::error_response(
                    http::StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    &format!("workflow {w:?} runs on {WORKFLOW_METHODS}, never on HEAD"),
                );
                resp.headers_mut().insert(
                    http::header::ALLOW,
                    http::HeaderValue::from_static(WORKFLOW_METHODS),
                );
                resp
            }
            Target::Workflow(w) => {
                pool_manager::router::url_params(req.headers_mut(), params);
                self.workflows.invoke(w, req).await
            }
        }
    }
}
