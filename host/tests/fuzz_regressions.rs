//! The fuzz targets' inputs replayed on stable Rust: every file under `fuzz/regressions/<target>/`
//! (inputs that once crashed a target, kept after the fix) and the seed corpora under
//! `fuzz/corpus/<target>/` go through the same entry points the targets use
//! (`sluice::fuzzing`), so a fixed crash cannot come back unnoticed and the harnesses stay
//! working without nightly or cargo-fuzz. See fuzz/README.md.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted; none when the folder does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// Runs `entry` on every regression and seed of `target`; names the file that fails.
fn replay(target: &str, entry: fn(&[u8]), min_seeds: usize) {
    let seeds = inputs("corpus", target);
    assert!(seeds.len() >= min_seeds, "fuzz/corpus/{target} has {} seeds, expected {min_seeds}", seeds.len());
    for file in inputs("regressions", target).iter().chain(&seeds) {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        if std::panic::catch_unwind(|| entry(&data)).is_err() {
            panic!(
                "{} fails target {target}; reproduce with `cargo +nightly fuzz run {target} {}` in fuzz/",
                file.display(),
                file.display()
            );
        }
    }
}

#[test]
fn coap_message_inputs_round_trip() {
    replay("coap_message", sluice::fuzzing::coap_message, 20);
}

#[test]
fn endpoint_conversations_stay_within_limits() {
    replay("endpoint", sluice::fuzzing::endpoint, 10);
}

#[test]
fn config_inputs_parse_or_list_problems() {
    replay("config", sluice::fuzzing::config, 3);
}

#[test]
fn rule_abi_inputs_give_verdicts_or_the_fail_policy() {
    replay("rule_abi", sluice::fuzzing::rule_abi, 1);
}

/// Finding 1 of fuzz/README.md: a duration beyond `u64::MAX` seconds panics in
/// `config::duration::parse` instead of being a problem (fixed: `Duration::try_from_secs_f64`).
#[test]
fn duration_over_u64_seconds_is_a_problem_not_a_panic() {
    let text = std::fs::read_to_string(fuzz_dir().join("regressions/config/duration-over-u64-seconds.yaml")).unwrap();
    let problems = sluice::config::Config::parse(&text, "gw.yaml").unwrap_err().0;
    assert_eq!(problems[0].key, "coap");
}

/// Finding 1 reaches rule packages too: a package's manifest `limits.timeout` goes through the
/// same parser, so a shared `.wasm` file can panic the loader (`sluice rule inspect`, a hot
/// reload) instead of being refused with a reason.
#[test]
fn package_timeout_over_u64_seconds_is_refused_not_a_panic() {
    let manifest = sluice::config::RuleLimitsConfig {
        memory: None,
        timeout: Some("99999999999999999999s".into()),
        recycle_after_calls: None,
    };
    let error = sluice::rules::Limits::resolve(None, &manifest).unwrap_err().to_string();
    assert!(error.contains("limits.timeout"), "{error}");
}

/// Finding 3 of fuzz/README.md: tracing-subscriber 0.3.23 panics on a log directive with
/// leading whitespace and a multi-byte character, and `Config::parse` hands it `log.level` as
/// written (fixed: `config::log_filter` trims each directive).
#[test]
fn log_level_with_spaces_and_unicode_is_checked_not_a_panic() {
    let path = fuzz_dir().join("regressions/config/log-level-directive-with-leading-space.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let _ = sluice::config::Config::parse(&text, "gw.yaml");
}

/// The cause of finding 3, and that trimming each directive avoids it.
#[test]
fn log_filter_panics_on_untrimmed_directives_only() {
    let untrimmed = std::panic::catch_unwind(|| tracing_subscriber::EnvFilter::try_new("info, \u{65e5}=debug").is_ok());
    assert!(untrimmed.is_err(), "tracing-subscriber no longer panics: finding 3 is fixed upstream");
    assert!(tracing_subscriber::EnvFilter::try_new("info,\u{65e5}=debug").is_ok());
}

/// Finding 6 of fuzz/README.md: a `log.level` with a field filter (`span{field=value}`) makes
/// tracing-subscriber compile the value into a regex DFA, which took over two minutes for
/// `fuzz/regressions/config/log-level-field-filter-regex-blowup.yaml`. With regexes off the same
/// text is parsed at once (fixed: `config::log_filter`, used by `Config::parse` and `sluice run`).
#[test]
fn log_filter_without_regexes_parses_the_blowup_input() {
    let path = fuzz_dir().join("regressions/config/log-level-field-filter-regex-blowup.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let level = text.lines().find_map(|l| l.trim().strip_prefix("level: ")).unwrap();
    let _ = sluice::config::log_filter(level);
    let _ = sluice::config::Config::parse(&text, "gw.yaml");
}
