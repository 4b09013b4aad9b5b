//! Rule packages in a real OCI registry: Debian's `docker-registry` (the reference distribution
//! registry) on a loopback port, driven through `sluice rule push`, `pull` and `inspect` as a
//! user runs them. Packages come from `target/rules/` (`scripts/build-rules.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::cli::{SLUICE, failed, ok, rule_package as package, text, workspace};
use common::free_tcp_port as free_port;

/// A `docker-registry` on a free loopback port, its storage in a temporary folder.
struct Registry {
    child: Child,
    storage: tempfile::TempDir,
    addr: String,
}

impl Registry {
    fn start() -> Registry {
        Registry::start_with("")
    }

    /// A registry that asks for user `fleet`, password `s3cret` (htpasswd, bcrypt).
    fn start_with_login() -> Registry {
        Registry::start_with("auth:\n  htpasswd: {realm: sluice-test, path: HTPASSWD}\n")
    }

    fn start_with(extra: &str) -> Registry {
        let storage = tempfile::tempdir().unwrap();
        let htpasswd = storage.path().join("htpasswd");
        // bcrypt of "s3cret" (cost 5), as `htpasswd -B` writes it.
        std::fs::write(&htpasswd, "fleet:$2b$05$abcdefghijklmnopqrstuuLK7U1u6pVRmL7L1BBM2aS35PSZnDXlK\n").unwrap();
        let extra = extra.replace("HTPASSWD", htpasswd.to_str().unwrap());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: {addr}\n{extra}",
                storage.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(storage.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let registry = Registry { child, storage, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen on {}", registry.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn reference(&self, path: &str) -> String {
        format!("{}/{path}", self.addr)
    }

    /// The file holding blob `digest` (`sha256:…`) in the registry's storage.
    fn blob(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage.path().join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `key:` in a command's output.
fn field<'a>(output: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}:");
    output
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key}: in\n{output}"))
}

#[test]
fn a_package_is_pushed_inspected_by_reference_and_pulled_byte_for_byte() {
    let registry = Registry::start();
    let file = package("senml");
    let reference = registry.reference("team/senml:0.2.0");
    let pushed = ok(&["rule", "push", file.to_str().unwrap(), &reference, "--insecure"]);
    let local = ok(&["rule", "inspect", file.to_str().unwrap()]);
    assert_eq!(field(&pushed, "sha256").split(' ').next(), Some(field(&local, "sha256")));
    let digest = field(&pushed, "digest").to_string();
    assert!(digest.starts_with("sha256:"), "{pushed}");

    // Inspect by reference: the manifest's annotations, without the module.
    let remote = ok(&["rule", "inspect", &reference, "--insecure"]);
    for key in ["name", "version", "abi", "hooks"] {
        assert_eq!(field(&remote, key).split(" (").next(), field(&local, key).split(" (").next(), "{key}:\n{remote}");
    }
    assert_eq!(field(&remote, "digest"), digest);
    // Pinned by digest, too.
    let pinned = format!("{}/team/senml@{digest}", registry.addr);
    assert_eq!(field(&ok(&["rule", "inspect", &pinned, "--insecure"]), "name"), field(&local, "name"));

    let out = tempfile::tempdir().unwrap();
    let pulled = ok(&["rule", "pull", &pinned, "--insecure", "--out", out.path().to_str().unwrap()]);
    let written = PathBuf::from(field(&pulled, "wrote"));
    assert_eq!(std::fs::read(&written).unwrap(), std::fs::read(&file).unwrap(), "{pulled}");
    // The pulled file is a package like any other.
    ok(&["rule", "test", written.to_str().unwrap()]);

    // A signed package keeps its signature through the registry (it is inside the layer).
    let keys = tempfile::tempdir().unwrap();
    ok(&["rule", "keygen", "--signer", "acme", "--out", keys.path().to_str().unwrap()]);
    let signed = out.path().join("signed.wasm");
    let key = keys.path().join("acme.key");
    ok(&["rule", "sign", file.to_str().unwrap(), "--key", key.to_str().unwrap(), "--out", signed.to_str().unwrap()]);
    let tag = registry.reference("acme/senml:0.2.1");
    ok(&["rule", "push", signed.to_str().unwrap(), &tag, "--insecure"]);
    let again = tempfile::tempdir().unwrap();
    let pulled = ok(&["rule", "pull", &tag, "--insecure", "--out", again.path().to_str().unwrap()]);
    let shown = ok(&["rule", "inspect", field(&pulled, "wrote")]);
    assert!(shown.contains("signed:    by acme") && shown.contains("valid"), "{shown}");
}

#[test]
fn a_layer_changed_in_the_registry_is_refused() {
    let registry = Registry::start();
    let file = package("senml");
    let reference = registry.reference("team/senml:0.2.0");
    let pushed = ok(&["rule", "push", file.to_str().unwrap(), &reference, "--insecure"]);
    let blob = registry.blob(&format!("sha256:{}", field(&pushed, "sha256").split(' ').next().unwrap()));
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&blob, bytes).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = failed(&["rule", "pull", &reference, "--insecure", "--out", out.path().to_str().unwrap()]);
    assert!(err.to_lowercase().contains("digest"), "{err}");
    assert!(std::fs::read_dir(out.path()).unwrap().next().is_none(), "a refused package was written");
}

#[test]
fn registry_mistakes_are_answered_with_the_fix() {
    let registry = Registry::start();
    let file = package("senml");
    // Plain HTTP without --insecure.
    let err = failed(&["rule", "push", file.to_str().unwrap(), &registry.reference("team/senml:0.2.0")]);
    assert!(err.contains("--insecure"), "{err}");
    // A tag nobody pushed.
    let err = failed(&["rule", "inspect", &registry.reference("team/none:1.0.0"), "--insecure"]);
    assert!(err.contains("team/none") && err.contains("check the repository and tag"), "{err}");
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = failed(&["rule", "pull", &format!("127.0.0.1:{port}/team/senml:0.2.0"), "--insecure"]);
    assert!(err.contains("registry is running"), "{err}");
    // A reference that is not one.
    let err = failed(&["rule", "pull", "oci://Not A Reference"]);
    assert!(err.contains("registry.example.com/team/senml:0.2.0"), "{err}");
    // Not a package: a file that is not one is refused before anything is sent.
    let not = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not.path(), b"not wasm").unwrap();
    let err = failed(&["rule", "push", not.path().to_str().unwrap(), &registry.reference("team/x:1"), "--insecure"]);
    assert!(err.contains("not a WebAssembly module"), "{err}");
}

/// `sluice run` with its log in a file, killed on drop.
struct Gateway {
    child: Child,
    log: PathBuf,
}

impl Gateway {
    fn start(config: &Path) -> Gateway {
        let log = config.with_extension(format!("{}.log", rand::random::<u32>()));
        let child = Command::new(SLUICE)
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let gateway = Gateway { child, log };
        gateway.wait_log("Sluice is serving.", 1);
        gateway
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `count` lines with `needle`; returns the last of them.
    fn wait_log(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
            if lines.len() >= count {
                return lines[count - 1].to_string();
            }
            assert!(Instant::now() < deadline, "no {count}× {needle:?} in the log:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_gateway_runs_a_rule_by_reference_swaps_a_moved_tag_and_starts_from_its_cache() {
    let mut registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let file = package("senml");
    let tag = registry.reference("team/senml:stable");
    let first = ok(&["rule", "push", file.to_str().unwrap(), &tag, "--insecure"]);
    let config = dir.path().join("sluice.yaml");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        &config,
        format!(
            "coap:\n  bind: 127.0.0.1:{udp}\nmqtt:\n  embedded_bind: 127.0.0.1:{}\nadmin:\n  bind: 127.0.0.1:{}\n\
             rules:\n  - rule: builtin:emqx\n    config: {{anonymous: true}}\n  - rule: oci://{tag}\n\
             registry:\n  insecure: [{}]\n  cache_dir: cache\n  poll: 1s\n",
            free_port(),
            free_port(),
            registry.addr
        ),
    )
    .unwrap();
    let gateway = Gateway::start(&config);
    let loaded = gateway.wait_log("rule=senml", 1);
    assert!(loaded.contains(field(&first, "sha256").split(' ').next().unwrap()), "{loaded}");

    // The tag moves (a signed build of the same rule): the next poll pulls, tests and swaps it.
    let keys = tempfile::tempdir().unwrap();
    ok(&["rule", "keygen", "--signer", "acme", "--out", keys.path().to_str().unwrap()]);
    let signed = dir.path().join("senml-signed.wasm");
    let key = keys.path().join("acme.key");
    ok(&["rule", "sign", file.to_str().unwrap(), "--key", key.to_str().unwrap(), "--out", signed.to_str().unwrap()]);
    let moved = ok(&["rule", "push", signed.to_str().unwrap(), &tag, "--insecure"]);
    let swapped = gateway.wait_log("Rule swapped.", 1);
    assert!(
        swapped.contains(field(&moved, "sha256").split(' ').next().unwrap()) && swapped.contains("acme"),
        "{swapped}"
    );
    drop(gateway);

    // The registry is away: a gateway starting now runs what the tag named last, from the cache.
    let _ = registry.child.kill();
    let _ = registry.child.wait();
    let gateway = Gateway::start(&config);
    let cached = gateway.wait_log("running the package cached", 1);
    assert!(cached.contains(&tag), "{cached}");
    let loaded = gateway.wait_log("rule=senml", 1);
    assert!(loaded.contains(field(&moved, "sha256").split(' ').next().unwrap()), "{loaded}");
}

/// The README's "Share a rule" commands, run as one bash script with the binary under test on
/// PATH. Only the ports move (the registry's 5000, the gateway's 5683, 1883 and 9184), which
/// other services here may hold.
#[test]
fn the_readmes_share_a_rule_commands_work_as_written() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let from = readme.find("### Share a rule").expect("the README's Share a rule section");
    let block = &readme[from..];
    let start = block.find("```sh\n").unwrap() + "```sh\n".len();
    let commands = &block[start..start + block[start..].find("\n```\n").unwrap()];
    assert!(commands.contains("sluice rule push") && commands.contains("rule: oci://"), "{commands}");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = commands
        .replace("127.0.0.1:5000", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:5683", &format!("127.0.0.1:{udp}"))
        .replace("127.0.0.1:1883", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:9184", &format!("127.0.0.1:{}", free_port()));
    // Whatever happens, the registry and the gateway the commands start in the background stop.
    let script = format!("trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}");
    let bin = Path::new(SLUICE).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let home = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .args(["-e", "-c", &script])
        .env("PATH", path)
        .env("HOME", home.path())
        .env_remove("DOCKER_CONFIG")
        .output()
        .unwrap();
    let text = text(&out);
    assert!(out.status.success(), "the README's commands failed:\n{text}");
    assert!(text.contains("name:      hello") && text.contains("version:   0.1.0"), "{text}");
    let loaded = text.lines().find(|l| l.contains("Rule loaded.") && l.contains("rule=hello")).unwrap_or_default();
    assert!(loaded.contains("version=0.1.0") && loaded.contains("signer=\"acme (key "), "{text}");
    let swapped = text.lines().find(|l| l.contains("Rule swapped.")).unwrap_or_default();
    assert!(swapped.contains("old_version=0.1.0") && swapped.contains("new_version=0.2.0"), "{text}");
    assert!(swapped.contains("signer=\"acme (key "), "{text}");
}

/// A package already in the registry is signed beside it (an OCI referrer, here through the
/// referrers tag: docker-registry 2.8 has no referrers API); gateways under `trust:` run it on
/// that signature, also from their cache, and a pulled copy carries it in its file.
#[test]
fn a_package_in_the_registry_is_signed_beside_it_and_gateways_trust_that_signature() {
    let mut registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let file = package("senml");
    let tag = registry.reference("team/senml:1.0");
    let pushed = ok(&["rule", "push", file.to_str().unwrap(), &tag, "--insecure"]);
    let shown = ok(&["rule", "inspect", &tag, "--insecure"]);
    assert!(shown.contains(&format!("signed:    no (sign it with `sluice rule sign {tag} --key KEY.key`)")), "{shown}");

    let keys = dir.path().join("keys");
    ok(&["rule", "keygen", "--signer", "acme", "--out", keys.to_str().unwrap()]);
    ok(&["rule", "keygen", "--signer", "mallory", "--out", keys.to_str().unwrap()]);
    let config = dir.path().join("sluice.yaml");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        &config,
        format!(
            "coap:\n  bind: 127.0.0.1:{udp}\nmqtt:\n  embedded_bind: 127.0.0.1:{}\nadmin:\n  bind: 127.0.0.1:{}\n\
             rules:\n  - rule: builtin:emqx\n    config: {{anonymous: true}}\n  - rule: oci://{tag}\n\
             registry:\n  insecure: [{}]\n  cache_dir: cache\n\
             trust:\n  keys: [keys/acme.pub]\n  require_signature: true\n",
            free_port(),
            free_port(),
            registry.addr
        ),
    )
    .unwrap();
    // Unsigned: refused, with the command that signs it where it is.
    let refused = failed(&["check", "--config", config.to_str().unwrap()]);
    assert!(refused.contains("not signed") && refused.contains(&format!("sluice rule sign oci://{tag}")), "{refused}");

    // Mallory's signature alone is not trusted; acme's, added beside it, is.
    let signed = ok(&["rule", "sign", &tag, "--key", keys.join("mallory.key").to_str().unwrap(), "--insecure"]);
    assert!(signed.contains("referrers tag") || signed.contains("the tag sha256-"), "{signed}");
    let refused = failed(&["check", "--config", config.to_str().unwrap()]);
    assert!(refused.contains("signed by mallory") && refused.contains("trust.keys"), "{refused}");
    let signed = ok(&["rule", "sign", &tag, "--key", keys.join("acme.key").to_str().unwrap(), "--insecure"]);
    assert_eq!(field(&signed, "package").rsplit('(').next().unwrap().trim_end_matches(')'), field(&pushed, "digest"));
    let shown = ok(&["rule", "inspect", &tag, "--insecure"]);
    assert!(shown.contains("by acme (key") && shown.contains("by mallory (key"), "{shown}");
    assert_eq!(shown.matches("registry signature, valid").count(), 2, "{shown}");
    // The package itself did not change: same digest, same bytes.
    assert_eq!(field(&shown, "digest"), field(&pushed, "digest"));

    let gateway = Gateway::start(&config);
    let loaded = gateway.wait_log("rule=senml", 1);
    assert!(loaded.contains("signer=\"acme (key ") && loaded.contains("registry signature"), "{loaded}");
    drop(gateway);

    // A pulled copy carries acme's or mallory's signature in its file; it runs in a rules_dir.
    let out = dir.path().join("pulled");
    let pulled = ok(&["rule", "pull", &tag, "--insecure", "--out", out.to_str().unwrap()]);
    assert!(pulled.contains("is now in the file"), "{pulled}");
    let copy = ok(&["rule", "inspect", field(&pulled, "wrote")]);
    assert!(copy.contains("signed:    by") && copy.contains("valid"), "{copy}");

    // The registry is away: the gateway starts from its cache, the signatures cached with it.
    let _ = registry.child.kill();
    let _ = registry.child.wait();
    let gateway = Gateway::start(&config);
    gateway.wait_log("running the package cached", 1);
    let loaded = gateway.wait_log("rule=senml", 1);
    assert!(loaded.contains("signer=\"acme (key ") && loaded.contains("registry signature"), "{loaded}");
}

/// A registry that asks for a login: the CLI logs in with flags or the Docker credential file,
/// a gateway with the credential file `registry.docker_config` names.
#[test]
fn a_registry_that_asks_for_a_login_gets_one_from_the_flags_or_the_credential_file() {
    let registry = Registry::start_with_login();
    let dir = tempfile::tempdir().unwrap();
    let file = package("senml");
    let tag = registry.reference("team/senml:1.0");
    let refused = failed(&["rule", "push", file.to_str().unwrap(), &tag, "--insecure"]);
    assert!(refused.contains("docker login") && refused.contains("--username"), "{refused}");
    let login = ["--insecure", "--username", "fleet", "--password", "s3cret"];
    ok(&[&["rule", "push", file.to_str().unwrap(), &tag][..], &login[..]].concat());
    let wrong = failed(&["rule", "inspect", &tag, "--insecure", "--username", "fleet", "--password", "nope"]);
    assert!(wrong.contains("docker login"), "{wrong}");

    // The credential file as `docker login` writes it (fleet:s3cret).
    let docker = dir.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    let auths = format!("{{\"auths\": {{\"{}\": {{\"auth\": \"ZmxlZXQ6czNjcmV0\"}}}}}}", registry.addr);
    std::fs::write(docker.join("config.json"), auths).unwrap();
    let out = Command::new(SLUICE)
        .args(["rule", "inspect", &tag, "--insecure"])
        .env("DOCKER_CONFIG", &docker)
        .output()
        .unwrap();
    assert!(out.status.success() && text(&out).contains("name:      senml"), "{}", text(&out));

    let config = dir.path().join("sluice.yaml");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let yaml = format!(
        "coap:\n  bind: 127.0.0.1:{udp}\nmqtt:\n  embedded_bind: 127.0.0.1:{}\nadmin:\n  bind: 127.0.0.1:{}\n\
         rules:\n  - rule: builtin:emqx\n    config: {{anonymous: true}}\n  - rule: oci://{tag}\n\
         registry:\n  insecure: [{}]\n  cache_dir: cache\n",
        free_port(),
        free_port(),
        registry.addr
    );
    std::fs::write(&config, &yaml).unwrap();
    let refused = failed(&["check", "--config", config.to_str().unwrap()]);
    assert!(refused.contains("registry.docker_config"), "{refused}");
    std::fs::write(&config, format!("{yaml}  docker_config: docker\n")).unwrap();
    ok(&["check", "--config", config.to_str().unwrap()]);
    let gateway = Gateway::start(&config);
    let loaded = gateway.wait_log("rule=senml", 1);
    assert!(loaded.contains("Rule loaded."), "{loaded}");
}
