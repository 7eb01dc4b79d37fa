//! Compiles the console's built assets (`console/dist`, committed) into the binary: one
//! table of `(path, content type, bytes)` that `src/console.rs` serves. The site needs no
//! Node.js to build the service, and no network to serve the console.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let dist = manifest.join("../console/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut files = Vec::new();
    collect(&dist, &dist, &mut files);
    assert!(
        files.iter().any(|(path, _)| path == "/"),
        "{} has no index.html: build the console first (cd console && npm ci && npm run build)",
        dist.display()
    );
    files.sort();
    let mut table = String::from("&[\n");
    for (path, file) in &files {
        let kind = content_type(file).unwrap_or_else(|| {
            panic!(
                "{}: no content type known for this kind of file",
                file.display()
            )
        });
        let file = file.canonicalize().expect("a file just listed");
        writeln!(
            table,
            "    ({path:?}, {kind:?}, include_bytes!({:?})),",
            file.display()
        )
        .expect("writing to a String");
    }
    table.push(']');
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out.join("console_assets.rs"), table).expect("OUT_DIR is writable");
}

/// Every file under `dir` as (URL path, file): `index.html` is `/`.
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the console first (cd console && npm ci && npm run build)",
            dir.display()
        )
    });
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(root, &path, files);
            continue;
        }
        let relative = path.strip_prefix(root).expect("under the root");
        let url = format!("/{}", relative.to_string_lossy().replace('\\', "/"));
        files.push((
            if url == "/index.html" {
                "/".into()
            } else {
                url
            },
            path,
        ));
    }
}

fn content_type(file: &Path) -> Option<&'static str> {
    Some(match file.extension()?.to_str()? {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        _ => return None,
    })
}
