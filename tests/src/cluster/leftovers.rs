//! What a cluster's nodes leave behind once they are killed: app instances. A SIGKILLed node
//! runs no clean-up, so its Docker containers stay (they carry the node's name in a label), and
//! so do its `--runtime process` instances (each runs in a process group of its own, in a
//! release directory under the node's data dir). [`super::TestCluster`]'s drop removes both.

use std::path::Path;
use std::process::{Command, Stdio};

use super::options::Runtime;
use crate::remove_containers;

/// Removes what the nodes named `names`, whose data dirs are under `dir`, left running: every
/// process working under `dir` (killed by pid) and, with Docker, every container labelled with
/// one of the names.
pub(super) fn remove_leftovers(runtime: Runtime, dir: &Path, names: &[&str]) {
    for pid in processes_working_under(dir) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    if runtime == Runtime::Docker {
        for name in names {
            remove_containers(name);
        }
    }
}

/// The ids of the processes (not this one) whose working directory is `dir` or below it.
pub(super) fn processes_working_under(dir: &Path) -> Vec<u32> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_working_under_a_directory_is_found_and_removed() {
        if !Path::new("/proc/self/cwd").exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("node/bundles/release");
        std::fs::create_dir_all(&inner).unwrap();
        let mut child = Command::new("sleep")
            .arg("30")
            .current_dir(&inner)
            .spawn()
            .unwrap();
        let other = tempfile::tempdir().unwrap();
        assert_eq!(processes_working_under(dir.path()), vec![child.id()]);
        assert!(processes_working_under(other.path()).is_empty());
        remove_leftovers(Runtime::Process, dir.path(), &[]);
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed, not exited: {status}");
        assert!(processes_working_under(dir.path()).is_empty());
    }
}
