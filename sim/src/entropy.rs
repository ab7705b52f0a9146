//! Deterministic entropy for the simulator's process.
//!
//! std's `HashMap` keys, chitchat's RNG (rand 0.10 through getrandom 0.4) and tokio's
//! `select!` fairness all draw their seeds from libc's `getrandom`. This binary defines that
//! symbol itself, so they draw from a counter-based stream instead: the same command line gives
//! the same draws in the same order, and so the same run. (rand 0.8's `thread_rng`, which
//! openraft uses for its election timeout, makes a raw system call and is not caught: the
//! harness pins that draw instead, see `cluster::run::timing`.)
//!
//! This is why each seed runs in a fresh process: std caches its hash keys per thread.

use std::sync::atomic::{AtomicU64, Ordering};

static STATE: AtomicU64 = AtomicU64::new(0x5EED_0F5E_ED0F_5EED);

/// Set when the environment asks for the operating system's entropy instead.
static FROM_OS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The environment variable that turns the interception off (`SHOAL_SIM_OS_ENTROPY=1`): runs
/// then draw real randomness and stop being reproducible, which shows what the interception
/// is for (the determinism check fails).
pub const OS_ENTROPY_VAR: &str = "SHOAL_SIM_OS_ENTROPY";

/// Mixes `seed` into the stream; call it before the run builds anything.
pub fn reseed(seed: u64) {
    STATE.store(splitmix(seed ^ 0x9E37_79B9_7F4A_7C15), Ordering::SeqCst);
    let from_os = std::env::var_os(OS_ENTROPY_VAR).is_some_and(|value| value == "1");
    FROM_OS.store(from_os, Ordering::SeqCst);
}

/// Fills `buf` from `/dev/urandom` (only when the interception is turned off).
fn fill_from_os(buf: &mut [u8]) -> bool {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(buf))
        .is_ok()
}

/// How many bytes were handed out (a run that drew none was not intercepted).
pub fn drawn() -> u64 {
    DRAWN.load(Ordering::Relaxed)
}

static DRAWN: AtomicU64 = AtomicU64::new(0);

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// libc's `getrandom(2)` wrapper, replaced for this process.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes, as for the libc function.
#[no_mangle]
pub unsafe extern "C" fn getrandom(buf: *mut u8, len: usize, _flags: u32) -> isize {
    DRAWN.fetch_add(len as u64, Ordering::Relaxed);
    if FROM_OS.load(Ordering::Relaxed) && len > 0 {
        // SAFETY: the caller guarantees `buf..buf+len` is writable.
        let slice = unsafe { std::slice::from_raw_parts_mut(buf, len) };
        if fill_from_os(slice) {
            return isize::try_from(len).unwrap_or(isize::MAX);
        }
    }
    let mut written = 0;
    while written < len {
        let word = splitmix(STATE.fetch_add(1, Ordering::SeqCst)).to_le_bytes();
        let take = (len - written).min(word.len());
        // SAFETY: the caller guarantees `buf..buf+len` is writable; `written + take <= len`.
        unsafe { std::ptr::copy_nonoverlapping(word.as_ptr(), buf.add(written), take) };
        written += take;
    }
    isize::try_from(len).unwrap_or(isize::MAX)
}
