//! The `swaps` scenario: while CON load runs through a rule package, two or more packages are
//! copied in turn into the gateway's rules folder under one file name (write to a dotfile,
//! then rename, as an operator should), so that every swap replaces the serving rule. Any
//! request lost or answered other than 2.04 is a failure of hot reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::put::{Load, Phase};
use crate::report::Report;
use crate::stop::Stop;

/// What `swaps` swaps.
#[derive(Clone, Debug)]
pub struct SwapsConfig {
    /// The gateway's watched rules folder.
    pub rules_dir: PathBuf,
    /// The packages, copied in turn (at least two).
    pub packages: Vec<PathBuf>,
    /// Number of swaps during the load.
    pub swaps: u32,
    /// The file name in the rules folder.
    pub file_name: String,
    /// Wait after the first copy before the load starts (the gateway loads it).
    pub settle: Duration,
    /// Leave the last package in the rules folder at the end.
    pub keep: bool,
}

/// Copies `package` to `dir/name` atomically (a dotfile in the same folder, then rename).
pub fn install(package: &Path, dir: &Path, name: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.sluice-bench.tmp"));
    std::fs::copy(package, &tmp)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Installs the first package, runs `phase` on `load` while swapping, and reports.
pub async fn run(load: &mut Load, phase: &Phase, cfg: &SwapsConfig, stop: &Stop) -> anyhow::Result<Report> {
    if cfg.packages.len() < 2 {
        bail!("swaps needs at least two --package files");
    }
    if cfg.swaps == 0 || cfg.swaps > 100_000 {
        bail!("--swaps must be 1 … 100 000");
    }
    if !cfg.rules_dir.is_dir() {
        bail!("{} is not a folder: pass the gateway's rules folder (rules_dir / --rules-dir)", cfg.rules_dir.display());
    }
    for p in &cfg.packages {
        if !p.is_file() {
            bail!("package {} not found (build one with `sluice rule build`)", p.display());
        }
    }
    install(&cfg.packages[0], &cfg.rules_dir, &cfg.file_name)
        .with_context(|| format!("copying {} into {}", cfg.packages[0].display(), cfg.rules_dir.display()))?;
    tokio::time::sleep(cfg.settle).await;

    let interval = phase.duration / (cfg.swaps + 1);
    let (dir, packages, name, swaps) = (cfg.rules_dir.clone(), cfg.packages.clone(), cfg.file_name.clone(), cfg.swaps);
    let swap_stop = stop.clone();
    let swapper = tokio::spawn(async move {
        let (mut done, mut errors) = (0u64, 0u64);
        for k in 1..=swaps {
            tokio::time::sleep(interval).await;
            if swap_stop.raised() {
                break;
            }
            let p = packages[k as usize % packages.len()].clone();
            let (d, n) = (dir.clone(), name.clone());
            match tokio::task::spawn_blocking(move || install(&p, &d, &n)).await {
                Ok(Ok(())) => done += 1,
                _ => errors += 1,
            }
        }
        (done, errors)
    });
    let result = load.run(phase, stop).await;
    // The swapper ends by itself (bounded by `swaps`); if the load ended early, stop it.
    swapper.abort();
    let (done, errors) = swapper.await.unwrap_or((u64::from(cfg.swaps), 0));
    if !cfg.keep {
        let _ = std::fs::remove_file(cfg.rules_dir.join(&cfg.file_name));
    }
    let mut r = result?;
    let mut out = Report::new("swaps");
    out.set("swaps_asked", u64::from(cfg.swaps));
    out.set("swaps_done", done);
    out.set("swap_errors", errors);
    out.set("swap_interval_ms", interval.as_millis() as u64);
    out.set("packages", cfg.packages.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
    r.set("loadavg_1m", crate::procfs::loadavg());
    for key in [
        "mode",
        "sent",
        "answered_2_04",
        "failed",
        "failed_codes",
        "timeouts",
        "delivered",
        "lost",
        "loss_pct",
        "rate_sent",
        "acks_per_s",
        "rtt",
        "delivery_latency",
        "gateway_cpu_us_per_msg",
        "broker_cpu_s",
        "broker_cpu_us_per_msg",
        "generator_cpu_s",
        "generator_cpu_us_per_msg",
        "machine_cpu_busy_pct",
        "machine_cores",
        "interrupted",
    ] {
        if let Some(v) = r.get(key) {
            out.set(key, v.clone());
        }
    }
    Ok(out)
}
