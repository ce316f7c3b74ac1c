//! Block device names for the device numbers the kernel reports, as sysfs
//! names them (`/sys/dev/block/MAJ:MIN/uevent`, `DEVNAME=`): `sda`,
//! `nvme0n1`, `sda1` for a partition. Looked up when a label is first
//! rendered, off the event path, and remembered.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

/// Where the kernel lists block devices by number.
pub const SYSFS_DEV_BLOCK: &str = "/sys/dev/block";

/// The kernel's `dev_t` inside the kernel: the minor number takes the low
/// 20 bits (`MINORBITS`), the major the rest.
const MINOR_BITS: u32 = 20;

pub struct DiskNames {
    dir: PathBuf,
    /// Only names that resolved: a device that appears later (hot-plugged)
    /// is looked up again.
    known: Mutex<HashMap<u32, String>>,
}

impl DiskNames {
    /// Names from `dir` (normally `SYSFS_DEV_BLOCK`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DiskNames { dir: dir.into(), known: Mutex::default() }
    }

    /// The name of the device numbered `dev` (as the kernel encodes it), or
    /// `MAJOR:MINOR` when sysfs does not name it.
    pub fn name(&self, dev: u32) -> String {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = known.get(&dev) {
            return name.clone();
        }
        let number = format!("{}:{}", dev >> MINOR_BITS, dev & ((1 << MINOR_BITS) - 1));
        let uevent = std::fs::read_to_string(self.dir.join(&number).join("uevent")).unwrap_or_default();
        match devname(&uevent) {
            Some(name) => {
                known.insert(dev, name.to_string());
                name.to_string()
            }
            None => number,
        }
    }
}

/// The `DEVNAME=` of a uevent file's `KEY=value` lines.
fn devname(uevent: &str) -> Option<&str> {
    uevent.lines().find_map(|line| line.strip_prefix("DEVNAME=")).filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(major: u32, minor: u32) -> u32 {
        major << MINOR_BITS | minor
    }

    #[test]
    fn names_devices_from_uevent_and_numbers_the_rest() {
        let dir = std::env::temp_dir().join(format!("sonde-disk-names-{}", std::process::id()));
        for (number, uevent) in [
            ("8:0", "MAJOR=8\nMINOR=0\nDEVNAME=sda\nDEVTYPE=disk\n"),
            ("8:1", "MAJOR=8\nMINOR=1\nDEVNAME=sda1\nDEVTYPE=partition\nPARTN=1\n"),
            ("259:1048575", "MAJOR=259\nMINOR=1048575\nDEVNAME=nvme9n9\n"),
            ("7:0", "MAJOR=7\nMINOR=0\nDEVNAME=\n"),
        ] {
            std::fs::create_dir_all(dir.join(number)).expect("mkdir");
            std::fs::write(dir.join(number).join("uevent"), uevent).expect("write uevent");
        }
        let names = DiskNames::new(&dir);
        assert_eq!(names.name(dev(8, 0)), "sda");
        assert_eq!(names.name(dev(8, 1)), "sda1");
        assert_eq!(names.name(dev(259, 1_048_575)), "nvme9n9");
        // an empty name and a device sysfs does not list keep their numbers
        assert_eq!(names.name(dev(7, 0)), "7:0");
        assert_eq!(names.name(dev(254, 16)), "254:16");
        // remembered: the name outlives the device
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(names.name(dev(8, 0)), "sda");
    }
}
