//! Debian packages unpacked into a cache directory for a test: `apt-get download` and
//! `dpkg-deb -x`, nothing installed on the system.

use std::path::PathBuf;
use std::process::Command;

/// Where packages are unpacked: `$XDG_CACHE_HOME/sonde-service-tests` (or `~/.cache/...`).
fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("sonde-service-tests")
}

/// The packages unpacked into one root directory (fetched once, then reused), or an INFRA error
/// that says why they could not be had.
pub fn unpacked(packages: &[&str]) -> Result<PathBuf, String> {
    let cache = cache_dir();
    let root = cache.join(format!("root-{}", packages.join("-")));
    let done = root.join(".unpacked");
    if done.exists() {
        return Ok(root);
    }
    let download = cache.join("download");
    std::fs::create_dir_all(&download).map_err(|e| format!("INFRA: creating {}: {e}", download.display()))?;
    if !apt_download(&download, packages)? {
        // apt-get download needs package lists; refresh them only when it could not find a package.
        run(Command::new("apt-get").args(["update", "-qq"]), "apt-get update")?;
        if !apt_download(&download, packages)? {
            return Err(format!("INFRA: apt-get download {} failed after apt-get update", packages.join(" ")));
        }
    }
    for package in packages {
        let deb = newest_deb(&download, package)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root), "dpkg-deb -x")?;
    }
    std::fs::write(&done, b"").map_err(|e| format!("INFRA: writing {}: {e}", done.display()))?;
    Ok(root)
}

fn apt_download(dir: &PathBuf, packages: &[&str]) -> Result<bool, String> {
    let status = Command::new("apt-get")
        .args(["download", "-qq"])
        .args(packages)
        .current_dir(dir)
        .status()
        .map_err(|e| format!("INFRA: cannot run apt-get: {e}"))?;
    Ok(status.success())
}

/// The downloaded `.deb` of `package` (`<package>_<version>_<arch>.deb`).
fn newest_deb(dir: &PathBuf, package: &str) -> Result<PathBuf, String> {
    let prefix = format!("{package}_");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("INFRA: reading {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    debs.sort();
    debs.pop().ok_or_else(|| format!("INFRA: apt-get download left no {prefix}*.deb in {}", dir.display()))
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("INFRA: cannot run {what}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!("INFRA: {what} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim()))
}
