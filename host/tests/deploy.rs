//! The deployment files of `deploy/` as an operator uses them: the configs they ship pass
//! `sluice check`, and the systemd unit passes `systemd-analyze verify` with no warning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

fn check(path: &Path) {
    let out = Command::new(SLUICE).args(["check", "--config", path.to_str().unwrap()]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sluice check {}:\n{text}", path.display());
}

/// What `openssl rand -hex 32` prints.
fn hex_secret() -> String {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n"
}

#[test]
fn the_container_config_and_the_kubernetes_config_map_pass_sluice_check() {
    check(&deploy("container.yaml"));
    let manifests = std::fs::read_to_string(deploy("kubernetes/sluice.yaml")).unwrap();
    let mut found = false;
    for document in serde_yaml::Deserializer::from_str(&manifests) {
        let value = serde_yaml::Value::deserialize(document).unwrap();
        if value["kind"] == "ConfigMap" {
            let text = value["data"]["sluice.yaml"].as_str().expect("the config map holds sluice.yaml");
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("sluice.yaml");
            std::fs::write(&file, text).unwrap();
            // What Kubernetes mounts from the Secret the manifest's comment creates.
            std::fs::create_dir(dir.path().join("secrets")).unwrap();
            std::fs::write(dir.path().join("secrets/sessions.key"), hex_secret()).unwrap();
            check(&file);
            found = true;
        }
    }
    assert!(found, "no ConfigMap in deploy/kubernetes/sluice.yaml");
}

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    let unit = std::fs::read_to_string(deploy("sluice.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/sluice run"), "{unit}");
    // verify wants the binaries to exist: point them at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.service");
    std::fs::write(&file, unit.replace("/usr/local/bin/sluice", SLUICE)).unwrap();
    let out =
        Command::new("systemd-analyze").arg("verify").arg(&file).output().expect(
            "systemd-analyze is missing: run scripts/test.sh, which installs systemd (apt-get install systemd)",
        );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify:\n{stderr}");
}
