//! Dependencies a test vendors into a package's source, made here with no
//! network: a python wheel written by hand (a zip with the module and its
//! dist-info: METADATA, WHEEL, RECORD with each file's hash) and an npm tarball
//! packed as `npm pack` packs (a gzipped tar with `package/` at its root).

use std::io::Write;
use std::path::Path;

use base64::Engine;
use sha2::Digest;

/// Writes `<dir>/<name>-1.0-py3-none-any.whl`: the module `name` holding `module`.
pub fn wheel(dir: &Path, name: &str, module: &str) {
    let dist = format!("{name}-1.0.dist-info");
    let files: Vec<(String, String)> = vec![
        (format!("{name}/__init__.py"), module.to_string()),
        (
            format!("{dist}/METADATA"),
            format!("Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"),
        ),
        (
            format!("{dist}/WHEEL"),
            "Wheel-Version: 1.0\nGenerator: fusion-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .into(),
        ),
    ];
    let mut record = String::new();
    for (file, text) in &files {
        let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(text.as_bytes()));
        record.push_str(&format!("{file},sha256={hash},{}\n", text.len()));
    }
    record.push_str(&format!("{dist}/RECORD,,\n"));
    std::fs::create_dir_all(dir).unwrap();
    let out = std::fs::File::create(dir.join(format!("{name}-1.0-py3-none-any.whl"))).unwrap();
    let mut zip = zip::ZipWriter::new(out);
    let options = zip::write::SimpleFileOptions::default();
    for (file, text) in files
        .into_iter()
        .chain(std::iter::once((format!("{dist}/RECORD"), record)))
    {
        zip.start_file(file, options).unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    zip.finish().unwrap();
}

/// Writes `<into>/<name>-1.0.0.tgz`, an npm package whose `index.js` is `index`;
/// `scratch` holds the files it is packed from.
pub fn tarball(scratch: &Path, into: &Path, name: &str, index: &str) {
    let pkg = scratch.join(name).join("package");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("package.json"),
        format!(r#"{{"name": "{name}", "version": "1.0.0", "main": "index.js"}}"#),
    )
    .unwrap();
    std::fs::write(pkg.join("index.js"), index).unwrap();
    std::fs::create_dir_all(into).unwrap();
    let ok = std::process::Command::new("tar")
        .arg("czf")
        .arg(into.join(format!("{name}-1.0.0.tgz")))
        .arg("-C")
        .arg(scratch.join(name))
        .arg("package")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar");
}
