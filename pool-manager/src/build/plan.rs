//! Which builder builds a source: the package's own build command; else its
//! environment's (python with `requirements.txt`: pip into the deployment;
//! nodejs with `package.json`: npm, `ci` with a lock file); else `./build.sh`
//! when the source has one (Fission's convention); else the source is the
//! deployment as it is. The answer is a shell script run in the source
//! directory with `SRC_PKG`, `DEPLOY_PKG`, `PYTHON` and `NODE` set.

use crate::resources::{Environment, Runtime};

/// What a build will do, and the script that does it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One line for the build log.
    pub summary: String,
    pub script: String,
}

/// Copies the source into the deployment (the builders install beside it);
/// `DEPLOY_PKG` is not there before the build, as in Fission.
const COPY_SOURCE: &str = r#"mkdir -p "$DEPLOY_PKG" && cp -R "$SRC_PKG"/. "$DEPLOY_PKG"/"#;

/// The plan for a source whose top-level files `has` tells, built by `env`'s
/// builder, or by `buildcmd` when given, else by the environment's own.
pub fn plan(env: &Environment, buildcmd: Option<&str>, has: impl Fn(&str) -> bool) -> Plan {
    // Every command is shown in the log as it runs, and the first failure stops it.
    let script = |body: String| format!("exec 2>&1\nset -eux\n{body}\n");
    if let Some(cmd) = buildcmd {
        return Plan {
            summary: format!("the package's build command: {cmd}"),
            script: script(cmd.to_string()),
        };
    }
    if let Some(cmd) = &env.buildcmd {
        return Plan {
            summary: format!("the environment's build command: {cmd}"),
            script: script(cmd.to_string()),
        };
    }
    match env.runtime {
        Some(Runtime::Python) if has("requirements.txt") => {
            return Plan {
                summary: "python: pip install -r requirements.txt into the deployment".into(),
                script: script(format!(
                    "{COPY_SOURCE}\n\"$PYTHON\" -m pip install --no-warn-script-location -r requirements.txt --target \"$DEPLOY_PKG\""
                )),
            }
        }
        Some(Runtime::Nodejs) if has("package.json") => {
            let (summary, npm) = if has("package-lock.json") || has("npm-shrinkwrap.json") {
                ("nodejs: npm ci (the lock file is present)", "npm ci")
            } else {
                ("nodejs: npm install (no lock file)", "npm install")
            };
            return Plan {
                summary: summary.into(),
                script: script(format!(
                    "{COPY_SOURCE}\ncd \"$DEPLOY_PKG\"\n{npm} --no-audit --no-fund"
                )),
            };
        }
        _ => {}
    }
    if has("build.sh") {
        return Plan {
            summary: "the source's ./build.sh".into(),
            script: script("if [ -x ./build.sh ]; then ./build.sh; else sh ./build.sh; fi".into()),
        };
    }
    Plan {
        summary: "nothing to build: the source is the deployment".into(),
        script: script(COPY_SOURCE.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Network;

    fn env(runtime: Runtime) -> Environment {
        Environment {
            name: "e".into(),
            namespace: "default".into(),
            runtime: Some(runtime),
            command: None,
            image: None,
            poolsize: 1,
            memory_mb: None,
            cpu_millis: None,
            network: Network::Host,
            buildcmd: None,
        }
    }

    fn files<'a>(names: &'a [&'a str]) -> impl Fn(&str) -> bool + 'a {
        move |n| names.contains(&n)
    }

    #[test]
    fn a_package_without_a_command_uses_its_environments() {
        let mut e = env(Runtime::Python);
        e.buildcmd = Some("./envbuild.sh".into());
        let p = plan(&e, None, files(&["requirements.txt"]));
        assert_eq!(p.summary, "the environment's build command: ./envbuild.sh");
        assert!(p.script.contains("./envbuild.sh"));
        let p = plan(&e, Some("make"), files(&[]));
        assert_eq!(p.summary, "the package's build command: make");
    }

    #[test]
    fn each_environment_has_its_builder() {
        let py = plan(
            &env(Runtime::Python),
            None,
            files(&["requirements.txt", "build.sh"]),
        );
        assert!(py.script.contains("-m pip install"), "{}", py.script);
        assert!(
            py.script.contains("--target \"$DEPLOY_PKG\""),
            "{}",
            py.script
        );
        let js = plan(&env(Runtime::Nodejs), None, files(&["package.json"]));
        assert!(js.script.contains("npm install"), "{}", js.script);
        let js = plan(
            &env(Runtime::Nodejs),
            None,
            files(&["package.json", "package-lock.json"]),
        );
        assert!(js.script.contains("npm ci"), "{}", js.script);
        // Another environment's manifest means nothing to this one's builder.
        let sh = plan(
            &env(Runtime::Nodejs),
            None,
            files(&["requirements.txt", "build.sh"]),
        );
        assert!(sh.script.contains("./build.sh"), "{}", sh.script);
        let copy = plan(&env(Runtime::Binary), None, files(&["main.sh"]));
        assert!(copy.summary.starts_with("nothing to build"));
    }

    #[test]
    fn a_build_command_comes_first() {
        let p = plan(
            &env(Runtime::Python),
            Some("make deploy"),
            files(&["requirements.txt"]),
        );
        assert!(p.script.ends_with("make deploy\n"), "{}", p.script);
        assert!(!p.script.contains("pip"));
        assert!(p.script.starts_with("exec 2>&1\nset -eux\n"));
    }
}
