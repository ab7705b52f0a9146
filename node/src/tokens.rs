//! The admin token: created once per cluster, kept in `<data-dir>/tokens/admin` (mode 0600).

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

/// Where the admin token lives inside a data dir.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tokens").join("admin")
}

/// A secret that grants the whole admin API.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Loads the token from `data_dir`, creating it on first start. The flag says whether it was
    /// created now (and so should be shown to the operator this once).
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<(Self, bool)> {
        let path = admin_token_path(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => {
                return Ok((Self(text.trim().to_owned()), false))
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let token = format!("shoal_{}", hex::encode(secret));
        std::fs::create_dir_all(path.parent().expect("token path has a parent"))?;
        write_private(&path, &token)?;
        Ok((Self(token), true))
    }

    /// Stores a token received from the cluster (a joining node), replacing any other.
    pub fn store(data_dir: &Path, token: &str) -> std::io::Result<Self> {
        let path = admin_token_path(data_dir);
        std::fs::create_dir_all(path.parent().expect("token path has a parent"))?;
        write_private(&path, token.trim())?;
        Ok(Self(token.trim().to_owned()))
    }

    /// The token text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the inputs differ.
    pub fn matches(&self, presented: &str) -> bool {
        let expected = self.0.as_bytes();
        let presented = presented.as_bytes();
        if expected.len() != presented.len() {
            return false;
        }
        expected
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_created_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = AdminToken::load_or_create(dir.path()).unwrap();
        assert!(created);
        let (second, created) = AdminToken::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(first.expose(), second.expose());
        assert!(first.matches(second.expose()));
        assert!(!first.matches("shoal_wrong"));
        assert!(!first.matches(""));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(admin_token_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
