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

/// Checks that `hash` is a password hash this node can verify.
pub fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash)
        .map_err(|_| "a password hash must be an Argon2 PHC string (`$argon2id$v=19$...`)")?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "password hashes must be Argon2, not `{}`",
            parsed.algorithm
        ));
    }
    Ok(())
}

/// Whether `password` matches `hash`. Slow on purpose (tens of milliseconds): call it off the
/// async threads.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}
