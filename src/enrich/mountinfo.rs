//! Finding the cgroup2 mount in `/proc/self/mountinfo`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// A mounted cgroup2 filesystem.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Cgroup2Mount {
    /// Where it is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on v1/v2 hybrids).
    pub mount_point: PathBuf,
    /// The directory of the cgroup hierarchy that the mount shows at its top: `/` unless only a
    /// subtree was bind-mounted. Resolved paths start with it, so they name cgroups as the kernel does.
    pub root: Vec<u8>,
}

/// The cgroup2 mount to read, from the text of a mountinfo file: the first one that shows the whole
/// hierarchy, else the first one at all.
pub(crate) fn find_cgroup2(mountinfo: &[u8]) -> Option<Cgroup2Mount> {
    let mut mounts = mountinfo.split(|&b| b == b'\n').filter_map(parse_cgroup2_line);
    let first = mounts.next()?;
    if first.root == b"/" {
        return Some(first);
    }
    Some(mounts.find(|m| m.root == b"/").unwrap_or(first))
}

/// A mountinfo line is `id parent major:minor root mount-point options [optional fields] - fstype
/// source super-options`; the optional fields vary in number, so the file system type is found after
/// the lone `-`.
fn parse_cgroup2_line(line: &[u8]) -> Option<Cgroup2Mount> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let separator = fields.iter().position(|f| *f == b"-")?;
    if separator < 6 || fields.get(separator + 1) != Some(&&b"cgroup2"[..]) {
        return None;
    }
    Some(Cgroup2Mount {
        mount_point: PathBuf::from(OsString::from_vec(unescape_octal(fields[4]))),
        root: unescape_octal(fields[3]),
    })
}

/// The kernel writes space, tab, newline and backslash in mountinfo paths as `\` and three octal
/// digits (`\040` for a space).
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if let Some(byte) = octal_escape(&field[i..]) {
            out.push(byte);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

fn octal_escape(s: &[u8]) -> Option<u8> {
    match s {
        [b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', ..] => {
            Some((a - b'0') * 64 + (b - b'0') * 8 + (c - b'0'))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PURE_V2: &str = "\
22 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
25 28 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
28 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const NO_CGROUP2: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
";

    #[test]
    fn pure_v2_mount_is_found() {
        let mount = find_cgroup2(PURE_V2.as_bytes()).unwrap();
        assert_eq!(mount, Cgroup2Mount { mount_point: "/sys/fs/cgroup".into(), root: b"/".to_vec() });
    }

    #[test]
    fn hybrid_mount_is_the_unified_one() {
        let mount = find_cgroup2(HYBRID.as_bytes()).unwrap();
        assert_eq!(mount.mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(mount.root, b"/");
    }

    #[test]
    fn no_cgroup2_mount_is_none() {
        assert_eq!(find_cgroup2(NO_CGROUP2.as_bytes()), None);
        assert_eq!(find_cgroup2(b""), None);
    }

    #[test]
    fn escaped_spaces_and_backslashes_are_decoded() {
        let text = "50 1 0:40 / /host\\040root/sys\\011fs/a\\134b rw - cgroup2 cgroup2 rw\n";
        let mount = find_cgroup2(text.as_bytes()).unwrap();
        assert_eq!(mount.mount_point, PathBuf::from("/host root/sys\tfs/a\\b"));
    }

    #[test]
    fn a_cgroup2_mount_of_the_whole_hierarchy_wins_over_a_subtree() {
        let text = "\
60 1 0:40 /kubepods/pod\\0401 /mnt/sub rw - cgroup2 cgroup2 rw
61 1 0:40 / /mnt/all rw shared:9 master:3 - cgroup2 cgroup2 rw
";
        let mount = find_cgroup2(text.as_bytes()).unwrap();
        assert_eq!(mount.mount_point, PathBuf::from("/mnt/all"));
        let only_subtree = find_cgroup2(text.lines().next().unwrap().as_bytes()).unwrap();
        assert_eq!(only_subtree.root, b"/kubepods/pod 1");
    }

    #[test]
    fn a_source_or_option_named_cgroup2_before_the_separator_is_not_a_match() {
        let text = "70 1 0:40 / /cgroup2 rw - tmpfs cgroup2 rw\n";
        assert_eq!(find_cgroup2(text.as_bytes()), None);
    }
}
