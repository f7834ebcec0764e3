//! What a function pod is, as data: the pod Fusion creates for an environment
//! (containers `runtime` and `fetcher`, the shared `userfunc` volume, resources,
//! labels, the owner), the labels that find a server's pods again, and what a
//! pod's status means for the instance (pending, ready at an address, ended and
//! why). No I/O: the backend (`mod.rs`) and the watch (`watch.rs`) use these.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use pool_manager::backend::Exit;
use pool_manager::{Environment, Runtime};
use sha2::{Digest, Sha256};

use super::PodConfig;

/// Which server's pool a pod belongs to (several Fusions may share a namespace).
pub const LABEL_POOL: &str = "fusion.dev/pool";
/// The environment's namespace and name.
pub const LABEL_ENV_NAMESPACE: &str = "fusion.dev/env-namespace";
pub const LABEL_ENV: &str = "fusion.dev/env";
/// A digest of what the pod runs (the environment's spec, images, ports): a
/// pod of a changed environment is never adopted.
pub const LABEL_ENV_DIGEST: &str = "fusion.dev/env-digest";
/// `generic` (in the pool, adoptable after a restart) or `specialized` (has
/// loaded a function: never reused).
pub const LABEL_STATE: &str = "fusion.dev/state";
pub const GENERIC: &str = "generic";
pub const SPECIALIZED: &str = "specialized";
/// The sha256 of the fetcher's credential: all Fusion keeps of it, so that a
/// server that adopts the pod can check it.
pub const ANNOTATION_CREDENTIAL: &str = "fusion.dev/fetch-credential-sha256";

/// The fetcher's environment: the file holding its credential and where
/// Fusion's API is.
pub const ENV_FETCH_TOKEN_FILE: &str = "FUSION_FETCH_TOKEN_FILE";
pub const ENV_API_URL: &str = "FUSION_API_URL";
/// Where the pod's Secret (key `token`: the credential) is mounted, in the
/// fetcher only.
pub const CREDENTIAL_DIR: &str = "/var/run/fusion";
pub const CREDENTIAL_KEY: &str = "token";

/// Where the code volume is mounted in both containers.
pub const USERFUNC: &str = "/userfunc";

/// The label selector of every pod of this server's pool.
pub fn pool_selector(pool: &str) -> String {
    format!("{LABEL_POOL}={pool}")
}

/// The image `env` runs on the cluster: its own, or the configured image of its
/// bundled runtime. `None` for a command-only environment.
pub fn image_of(env: &Environment, cfg: &PodConfig) -> Option<String> {
    if let Some(image) = &env.image {
        return Some(image.clone());
    }
    match (env.runtime, &env.command) {
        (Some(Runtime::Python), _) => Some(cfg.images.python.clone()),
        (Some(Runtime::Nodejs), _) => Some(cfg.images.nodejs.clone()),
        (Some(Runtime::Binary), _) => Some(cfg.images.binary.clone()),
        _ => None,
    }
}

/// A short digest of everything that makes a pod of `env` what it is.
pub fn env_digest(env: &Environment, cfg: &PodConfig) -> String {
    let what = serde_json::json!({
        "image": image_of(env, cfg),
        "memory_mb": env.memory_mb,
        "cpu_millis": env.cpu_millis,
        "network": env.network,
        "fetcher": cfg.fetcher_image,
        "api": cfg.api_url,
        "ports": [cfg.runtime_port, cfg.fetcher_port],
    });
    let hash = Sha256::digest(what.to_string().as_bytes());
    pool_manager::package::hex(&hash)[..16].to_string()
}

/// A pod name for `env`: `<pool>-<env>-<suffix>`, a DNS-1123 label.
pub fn pod_name(pool: &str, env: &str, suffix: &str) -> String {
    let mut base: String = format!("{pool}-{env}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    base.truncate(63 - suffix.len() - 1);
    format!("{}-{suffix}", base.trim_end_matches('-'))
}

/// The labels of a new pod of `env`.
pub fn labels(env: &Environment, cfg: &PodConfig, digest: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/managed-by".into(), "fusion".into()),
        ("app.kubernetes.io/part-of".into(), "fusion".into()),
        ("app.kubernetes.io/component".into(), "function".into()),
        (LABEL_POOL.into(), cfg.pool.clone()),
        (LABEL_ENV_NAMESPACE.into(), env.namespace.clone()),
        (LABEL_ENV.into(), env.name.clone()),
        (LABEL_ENV_DIGEST.into(), digest.into()),
        (LABEL_STATE.into(), GENERIC.into()),
    ])
}

/// The Secret holding pod `name`'s credential: same name, same namespace,
/// owned by the pod (uid `pod_uid`) so that it goes when the pod does. Not in
/// the pod spec: anyone (or any trigger) that may read pods does not see it.
pub fn credential_secret(
    name: &str,
    cfg: &PodConfig,
    pod_uid: &str,
    credential: &str,
) -> k8s_openapi::api::core::v1::Secret {
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": cfg.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "fusion",
                "app.kubernetes.io/part-of": "fusion",
                LABEL_POOL: cfg.pool,
            },
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod_uid,
                "controller": false, "blockOwnerDeletion": false,
            }],
        },
        "type": "Opaque",
        "stringData": {CREDENTIAL_KEY: credential},
    });
    serde_json::from_value(value).expect("a credential secret is a valid Secret")
}

/// The pod Fusion creates for a generic instance of `env`. Its fetcher reads
/// the credential from the pod's Secret (`credential_secret`), mounted as a
/// file; the kubelet starts the pod once that exists.
pub fn pod(
    name: &str,
    env: &Environment,
    cfg: &PodConfig,
    image: &str,
    credential_digest: &str,
) -> Pod {
    let digest = env_digest(env, cfg);
    let mut resources = serde_json::Map::new();
    if let Some(mb) = env.memory_mb {
        resources.insert("memory".into(), format!("{mb}Mi").into());
    }
    if let Some(m) = env.cpu_millis {
        resources.insert("cpu".into(), format!("{m}m").into());
    }
    let resources = if resources.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({"requests": resources, "limits": resources})
    };
    let owners: Vec<&OwnerReference> = cfg.owner.iter().collect();
    let tcp_probe = |port: u16| {
        serde_json::json!({
            "tcpSocket": {"port": port},
            "periodSeconds": 1,
            "failureThreshold": 3,
        })
    };
    let locked_down = serde_json::json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
    });
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": cfg.namespace,
            "labels": labels(env, cfg, &digest),
            "annotations": {ANNOTATION_CREDENTIAL: credential_digest},
            "ownerReferences": owners,
        },
        "spec": {
            // An instance that ends is replaced by the pool, never restarted.
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 5,
            // The code, and the function's secrets and configmaps at Fission's
            // paths: written by the fetcher, read-only to the runtime.
            "volumes": [
                {"name": "userfunc", "emptyDir": {}},
                {"name": "secrets", "emptyDir": {"medium": "Memory"}},
                {"name": "configs", "emptyDir": {}},
                {"name": "credential", "secret": {
                    "secretName": name,
                    "items": [{"key": CREDENTIAL_KEY, "path": CREDENTIAL_KEY}],
                }},
            ],
            "containers": [
                {
                    "name": "runtime",
                    "image": image,
                    "ports": [{"name": "http", "containerPort": cfg.runtime_port}],
                    "env": [
                        {"name": "RUNTIME_PORT", "value": cfg.runtime_port.to_string()},
                        {"name": "RUNTIME_HOST", "value": "0.0.0.0"},
                    ],
                    "readinessProbe": tcp_probe(cfg.runtime_port),
                    "resources": resources,
                    "volumeMounts": [
                        {"name": "userfunc", "mountPath": USERFUNC},
                        {"name": "secrets", "mountPath": "/secrets", "readOnly": true},
                        {"name": "configs", "mountPath": "/configs", "readOnly": true},
                    ],
                    "securityContext": locked_down,
                },
                {
                    "name": "fetcher",
                    "image": cfg.fetcher_image,
                    "command": ["/usr/local/bin/fusion", "fetcher"],
                    "args": ["--listen", format!("0.0.0.0:{}", cfg.fetcher_port), "--dir", USERFUNC],
                    "ports": [{"name": "fetcher", "containerPort": cfg.fetcher_port}],
                    "env": [
                        {"name": ENV_FETCH_TOKEN_FILE, "value": format!("{CREDENTIAL_DIR}/{CREDENTIAL_KEY}")},
                        {"name": ENV_API_URL, "value": cfg.api_url},
                    ],
                    "readinessProbe": tcp_probe(cfg.fetcher_port),
                    "resources": {
                        "requests": {"memory": "16Mi", "cpu": "10m"},
                        "limits": {"memory": "128Mi"},
                    },
                    "volumeMounts": [
                        {"name": "userfunc", "mountPath": USERFUNC},
                        {"name": "secrets", "mountPath": "/secrets"},
                        {"name": "configs", "mountPath": "/configs"},
                        {"name": "credential", "mountPath": CREDENTIAL_DIR, "readOnly": true},
                    ],
                    "securityContext": locked_down,
                },
            ],
        },
    });
    // The JSON above is fixed in shape; only its values vary.
    serde_json::from_value(value).expect("a function pod is a valid Pod")
}

/// Waiting reasons of a container that will not start without a change (an
/// image that cannot be pulled after retrying, or a bad container spec).
const CANNOT_START: [&str; 4] = [
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// What a pod's status means for its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodView {
    /// Not ready yet (scheduled, pulling, starting).
    Pending,
    /// Every container ready; the pod's IP.
    Ready(IpAddr),
    /// It has ended (a container terminated, the pod failed or was evicted, or
    /// it is being deleted).
    Ended(Exit),
}

/// Reads a pod's status. `restartPolicy: Never`, so any terminated container
/// ends the instance: out of memory when the kubelet says `OOMKilled`.
pub fn view(pod: &Pod) -> PodView {
    let Some(status) = &pod.status else {
        return PodView::Pending;
    };
    let terminated = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            Some((c.name.clone(), t))
        })
        .collect::<Vec<_>>();
    // Only the runtime's memory is the function's. The fetcher killed for its
    // own is not the function needing more memory: the instance is gone for a
    // reason of Fusion's, said as such.
    let oom_killed = |name: Option<&str>| {
        terminated.iter().find(|(n, t)| {
            name.is_none_or(|want| n == want) && t.reason.as_deref() == Some("OOMKilled")
        })
    };
    if oom_killed(Some("runtime")).is_some() {
        return PodView::Ended(Exit::OutOfMemory);
    }
    if let Some((name, _)) = oom_killed(None) {
        return PodView::Ended(Exit::Vanished(format!(
            "the {name} container ran out of memory (its own limit in the pod spec, \
             not the function's memory)"
        )));
    }
    let phase = status.phase.as_deref().unwrap_or("Pending");
    if phase == "Failed" && status.reason.is_some() {
        // Evicted (node pressure), preempted, node lost, ...
        let reason = status.reason.clone().unwrap_or_default();
        let message = status.message.clone().unwrap_or_default();
        return PodView::Ended(Exit::Vanished(
            format!("its pod failed: {reason} {message}")
                .trim()
                .to_string(),
        ));
    }
    // The runtime's own status first: the fetcher ends only because the pod does.
    let first = terminated
        .iter()
        .find(|(name, _)| name == "runtime")
        .or(terminated.first());
    if let Some((_, t)) = first {
        return PodView::Ended(Exit::Exited {
            code: Some(t.exit_code),
            signal: t.signal,
        });
    }
    // A container that cannot start at all: retrying the same pod is no use,
    // and the reason is what the user needs (a wrong image name, say).
    let stuck = status.container_statuses.iter().flatten().find_map(|c| {
        let w = c.state.as_ref()?.waiting.as_ref()?;
        let reason = w.reason.as_deref()?;
        CANNOT_START.contains(&reason).then(|| {
            format!(
                "container {} cannot start: {reason}: {}",
                c.name,
                w.message.as_deref().unwrap_or_default()
            )
        })
    });
    if let Some(why) = stuck {
        return PodView::Ended(Exit::Vanished(why.trim_end_matches([' ', ':']).to_string()));
    }
    if matches!(phase, "Failed" | "Succeeded") {
        return PodView::Ended(Exit::Vanished(format!("its pod is {phase}")));
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return PodView::Ended(Exit::Vanished("its pod is being deleted".into()));
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    match status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()) {
        Some(ip) if ready && phase == "Running" => PodView::Ready(ip),
        _ => PodView::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_with(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_status_says_pending_ready_or_how_the_instance_ended() {
        assert_eq!(
            view(&pod_with(serde_json::json!({"phase": "Pending"}))),
            PodView::Pending
        );
        let running = |ready: &str| {
            pod_with(serde_json::json!({
                "phase": "Running", "podIP": "10.1.2.3",
                "conditions": [{"type": "Ready", "status": ready}],
            }))
        };
        assert_eq!(view(&running("False")), PodView::Pending);
        assert_eq!(
            view(&running("True")),
            PodView::Ready("10.1.2.3".parse().unwrap())
        );
        let terminated = |name: &str, reason: &str, code: i32| {
            pod_with(serde_json::json!({
                "phase": "Running",
                "containerStatuses": [{
                    "name": name, "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": code, "reason": reason}},
                }],
            }))
        };
        assert_eq!(
            view(&terminated("runtime", "OOMKilled", 137)),
            PodView::Ended(Exit::OutOfMemory)
        );
        assert_eq!(
            view(&terminated("runtime", "Error", 3)),
            PodView::Ended(Exit::Exited {
                code: Some(3),
                signal: None
            })
        );
        let pulling = |reason: &str| {
            pod_with(serde_json::json!({
                "phase": "Pending",
                "containerStatuses": [{
                    "name": "runtime", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": "pull access denied for nope/python"}},
                }],
            }))
        };
        assert_eq!(
            view(&pulling("ErrImagePull")),
            PodView::Pending,
            "retried by the kubelet"
        );
        match view(&pulling("ImagePullBackOff")) {
            PodView::Ended(Exit::Vanished(why)) => assert!(
                why.contains(
                    "container runtime cannot start: ImagePullBackOff: pull access denied"
                ),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        let evicted = pod_with(serde_json::json!({
            "phase": "Failed", "reason": "Evicted",
            "message": "The node was low on resource: memory.",
        }));
        match view(&evicted) {
            PodView::Ended(Exit::Vanished(why)) => assert!(why.contains("Evicted"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_the_runtime_running_out_of_memory_is_the_functions() {
        let oom = |names: &[&str]| {
            let statuses: Vec<_> = names
                .iter()
                .map(|name| {
                    serde_json::json!({
                        "name": name, "image": "i", "imageID": "", "ready": false,
                        "restartCount": 0,
                        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                    })
                })
                .collect();
            view(&pod_with(serde_json::json!({
                "phase": "Failed", "containerStatuses": statuses,
            })))
        };
        match oom(&["fetcher"]) {
            PodView::Ended(Exit::Vanished(why)) => {
                assert!(why.contains("fetcher container ran out of memory"), "{why}")
            }
            other => panic!("the fetcher's kill is blamed on the function: {other:?}"),
        }
        assert_eq!(oom(&["runtime"]), PodView::Ended(Exit::OutOfMemory));
        assert_eq!(
            oom(&["fetcher", "runtime"]),
            PodView::Ended(Exit::OutOfMemory)
        );
    }

    #[test]
    fn pod_names_are_dns_labels() {
        let name = pod_name("fusion", &"x".repeat(80), "abcde");
        assert!(name.len() <= 63, "{name}");
        assert!(name.ends_with("-abcde"));
        assert_eq!(pod_name("Fusion", "py_env", "a1b2c"), "fusion-py-env-a1b2c");
    }
}
