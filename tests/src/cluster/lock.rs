//! [`ClusterLock`]: one cluster test at a time, within a test binary and across test binaries.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The lock file every cluster test takes, shared by all test binaries of the user.
const CLUSTER_LOCK_FILE: &str = "shoal-cluster-tests.lock";
/// A lock file whose holder has not touched it for this long is stale (its holder died).
const CLUSTER_LOCK_STALE_AFTER: Duration = Duration::from_secs(600);
/// How often the holder touches the lock file to show it is alive.
const CLUSTER_LOCK_HEARTBEAT: Duration = Duration::from_secs(30);
/// How long a test waits for the lock before it gives up (other binaries' whole suites).
const CLUSTER_LOCK_WITHIN: Duration = Duration::from_secs(3600);

/// The right to run one cluster: each is several processes on a small machine, so cluster
/// tests run one at a time, within a test binary (a mutex) and across test binaries (an
/// exclusive lock file in the system temp dir). Released on drop.
///
/// The lock file is created with `create_new` and holds the holder's pid; a background thread
/// touches it every [`CLUSTER_LOCK_HEARTBEAT`]. A waiter removes it as stale when its holder's
/// pid is gone from `/proc` or it was not touched for [`CLUSTER_LOCK_STALE_AFTER`] (a holder
/// killed with SIGKILL never removes it).
pub struct ClusterLock {
    path: PathBuf,
    heartbeat_stop_tx: Option<std::sync::mpsc::Sender<()>>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
    _in_process: MutexGuard<'static, ()>,
}

impl ClusterLock {
    /// Waits (up to an hour, then panics saying who holds it) until this test may run a cluster.
    pub fn acquire() -> Self {
        static IN_PROCESS: Mutex<()> = Mutex::new(());
        let in_process = IN_PROCESS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = std::env::temp_dir().join(CLUSTER_LOCK_FILE);
        let file = Self::create_lock_file(&path);
        let (heartbeat_stop_tx, heartbeat_stop_rx) = std::sync::mpsc::channel::<()>();
        let heartbeat = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                heartbeat_stop_rx.recv_timeout(CLUSTER_LOCK_HEARTBEAT)
            {
                let _ = file.set_modified(std::time::SystemTime::now());
            }
        });
        Self {
            path,
            heartbeat_stop_tx: Some(heartbeat_stop_tx),
            heartbeat: Some(heartbeat),
            _in_process: in_process,
        }
    }

    fn create_lock_file(path: &Path) -> std::fs::File {
        use std::io::Write;
        let began = Instant::now();
        let mut announced = false;
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut file) => {
                    let _ = writeln!(file, "{}", std::process::id());
                    return file;
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => panic!("cannot create the lock file {}: {error}", path.display()),
            }
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            if lock_is_stale(path, holder.trim()) {
                // Look again right before removing: a new holder may have just replaced it.
                if std::fs::read_to_string(path).unwrap_or_default() == holder {
                    eprintln!("removing the stale cluster lock of pid {}", holder.trim());
                    let _ = std::fs::remove_file(path);
                }
                continue;
            }
            if !announced {
                eprintln!(
                    "waiting for the cluster lock {} held by pid {}",
                    path.display(),
                    holder.trim()
                );
                announced = true;
            }
            assert!(
                began.elapsed() < CLUSTER_LOCK_WITHIN,
                "waited {CLUSTER_LOCK_WITHIN:?} for the cluster lock {} held by pid {}",
                path.display(),
                holder.trim()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        drop(self.heartbeat_stop_tx.take());
        if let Some(heartbeat) = self.heartbeat.take() {
            let _ = heartbeat.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the lock file at `path`, held by `holder` (a pid, or empty while being written), is
/// left over by a dead holder.
fn lock_is_stale(path: &Path, holder: &str) -> bool {
    let holder_gone = holder.parse::<u32>().is_ok_and(|pid| {
        Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists()
    });
    let untouched = std::fs::metadata(path)
        .and_then(|metadata| metadata.modified())
        .ok()
        .and_then(|modified| modified.elapsed().ok())
        .is_some_and(|age| age > CLUSTER_LOCK_STALE_AFTER);
    holder_gone || untouched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_file_is_stale_when_its_holder_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        std::fs::write(&path, "1\n").unwrap();
        let ours = std::process::id().to_string();
        assert!(!lock_is_stale(&path, &ours), "a live holder's fresh lock");
        assert!(!lock_is_stale(&path, ""), "a lock being written");
        if Path::new("/proc/self").exists() {
            assert!(lock_is_stale(&path, "4294967295"), "a holder that is gone");
        }
        let long_ago = std::time::SystemTime::now() - CLUSTER_LOCK_STALE_AFTER * 2;
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(long_ago).unwrap();
        assert!(
            lock_is_stale(&path, &ours),
            "a lock nobody touched for long"
        );
    }
}
