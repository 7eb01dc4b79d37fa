//! The deployment files against the binaries they run: every Dockerfile's and the systemd
//! unit's command line uses flags and subcommands the binary really has, and the edge
//! install script installs a tree whose config passes the installed binary's check.

use std::process::Command;

use sightline_tests::fixtures::workspace_binary;

use crate::repo;

/// The JSON array after `instruction` in a Dockerfile.
fn exec_form(dockerfile: &str, instruction: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .find(|l| l.starts_with(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("no {instruction}"));
    serde_json::from_str(&line[instruction.len()..])
        .unwrap_or_else(|e| panic!("{instruction} is not exec form: {e}"))
}

/// Checks a command line (binary path, then arguments) against the binary's `--help`:
/// every `--flag` must be an option, every bare word after a flag's value a subcommand.
fn check_command_line(name: &str, args: &[String], source: &str) {
    let help = |extra: &[&str]| {
        let out = Command::new(workspace_binary(name))
            .args(extra)
            .arg("--help")
            .output()
            .expect("run --help");
        assert!(out.status.success(), "{name} --help failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help(&[]);
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if let Some(flag) = arg.strip_prefix("--") {
            let flag = flag.split('=').next().unwrap_or(flag);
            let line = top
                .lines()
                .find(|l| {
                    l.contains(&format!("--{flag} "))
                        || l.trim_end().ends_with(&format!("--{flag}"))
                })
                .unwrap_or_else(|| panic!("{source}: {name} has no --{flag}:\n{top}"));
            // A flag that takes a value (`--config <CONFIG>`) swallows the next word.
            if line.contains(&format!("--{flag} <")) {
                i += 1;
            }
        } else {
            assert!(
                top.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{arg} "))),
                "{source}: {name} has no subcommand {arg}:\n{top}"
            );
            help(&[arg.as_str()]);
        }
        i += 1;
    }
}

#[test]
fn dockerfile_entrypoints_use_flags_the_binaries_have() {
    for (name, port) in [
        ("ingest-service", "8081"),
        ("query-service", "8080"),
        ("edge-agent", "9470"),
    ] {
        let path = repo().join(format!("deploy/docker/{name}.Dockerfile"));
        let text = std::fs::read_to_string(&path).unwrap();
        let entrypoint = exec_form(&text, "ENTRYPOINT");
        assert_eq!(
            entrypoint,
            [format!("/usr/bin/{name}")],
            "{}",
            path.display()
        );
        assert!(
            text.contains(&format!("/target/release/{name} /usr/bin/{name}")),
            "{}",
            path.display()
        );
        assert!(
            text.contains("USER 10001"),
            "{}: not non-root",
            path.display()
        );
        assert!(
            text.contains(&format!("EXPOSE {port}")),
            "{}",
            path.display()
        );
        let cmd = exec_form(&text, "CMD");
        check_command_line(name, &cmd, &path.display().to_string());
        if let Some(i) = cmd.iter().position(|a| a == "--listen") {
            assert!(
                cmd[i + 1].ends_with(&format!(":{port}")),
                "{}: listens elsewhere than it exposes",
                path.display()
            );
        }
    }
}

#[test]
fn the_systemd_unit_runs_a_command_the_agent_has() {
    let unit =
        std::fs::read_to_string(repo().join("deploy/edge/sightline-edge-agent.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let words: Vec<String> = exec.split_whitespace().map(String::from).collect();
    assert_eq!(words[0], "/usr/bin/edge-agent");
    check_command_line("edge-agent", &words[1..], "sightline-edge-agent.service");
    for needed in [
        "Restart=always",
        "StateDirectory=sightline",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "User=sightline",
    ] {
        assert!(unit.lines().any(|l| l == needed), "the unit lacks {needed}");
    }
}

#[test]
fn the_install_script_puts_everything_in_place_and_keeps_an_existing_config() {
    let root = tempfile::tempdir().unwrap();
    let ort = std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH (scripts/test.sh sets it)");
    let install = || {
        let out = Command::new(repo().join("deploy/edge/install.sh"))
            .arg("--root")
            .arg(root.path())
            .arg("--binary")
            .arg(workspace_binary("edge-agent"))
            .arg("--onnxruntime")
            .arg(&ort)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "install.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    install();
    let r = root.path();
    for file in [
        "usr/bin/edge-agent",
        "usr/lib/sightline/libonnxruntime.so",
        "usr/share/sightline/models/nanodet_coco_416.onnx",
        "usr/share/sightline/models/coco.names",
        "etc/systemd/system/sightline-edge-agent.service",
        "etc/sightline/edge-agent.toml",
    ] {
        assert!(r.join(file).is_file(), "{file} not installed");
    }
    assert!(r.join("var/lib/sightline").is_dir());
    // The example config names the installed model and library.
    let config = std::fs::read_to_string(r.join("etc/sightline/edge-agent.toml")).unwrap();
    for path in [
        "/usr/share/sightline/models/nanodet_coco_416.onnx",
        "/usr/share/sightline/models/coco.names",
        "/usr/lib/sightline/libonnxruntime.so",
    ] {
        assert!(
            config.contains(path),
            "the example config does not use {path}"
        );
    }
    // An upgrade keeps the operator's config.
    std::fs::write(
        r.join("etc/sightline/edge-agent.toml"),
        config.replace("site1-gate", "my-site"),
    )
    .unwrap();
    let said = install();
    assert!(said.contains("keeping the existing"), "{said}");
    let kept = std::fs::read_to_string(r.join("etc/sightline/edge-agent.toml")).unwrap();
    assert!(kept.contains("my-site"));

    // A bad binary path is refused with the reason.
    let out = Command::new(repo().join("deploy/edge/install.sh"))
        .args([
            "--root",
            &r.display().to_string(),
            "--binary",
            "/nonexistent/edge-agent",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no edge-agent binary at /nonexistent/edge-agent")
    );
}
