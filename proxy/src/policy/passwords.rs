//! Basic-auth passwords, stored as Argon2id hashes in PHC form (`$argon2id$v=19$...`).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Hashes `password` with Argon2id (OWASP's parameters: 19 MiB, 2 passes) and a fresh salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| format!("cannot hash the password: {error}"))
}

/// Most memory one password check may take (KiB): the ingress verifies with the costs written
/// in the hash, so an unbounded one would let whoever sets a policy stall every node.
const MAX_MEMORY_KIB: u32 = 64 * 1024;
/// Most passes one check may take.
const MAX_PASSES: u32 = 10;
/// Most lanes one check may take.
const MAX_LANES: u32 = 8;

/// Checks that `hash` is an Argon2 hash this node can verify at a bounded cost (at most
/// 64 MiB, 10 passes, 8 lanes; OWASP's recommendation is 19 MiB and 2 passes).
pub fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash)
        .map_err(|_| "a password hash must be an Argon2 PHC string (`$argon2id$v=19$...`)")?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "password hashes must be Argon2, not `{}`",
            parsed.algorithm
        ));
    }
    // Every occurrence counts: a repeated parameter must not slip a second value past us.
    for (name, value) in parsed.params.iter() {
        let (limit, what) = match name.as_str() {
            "m" => (MAX_MEMORY_KIB, "memory (KiB)"),
            "t" => (MAX_PASSES, "passes"),
            "p" => (MAX_LANES, "lanes"),
            _ => continue,
        };
        let value = value
            .decimal()
            .map_err(|_| format!("the hash's `{name}` is not a number"))?;
        if value > limit {
            return Err(format!(
                "the hash's {what} `{name}={value}` is over {limit}: every login would cost that \
                 much on every node"
            ));
        }
    }
    Ok(())
}

/// Whether `password` matches `hash`. Slow on purpose (tens of milliseconds): call it off the
/// async threads.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if check_hash(hash).is_err() {
        return false;
    }
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}
