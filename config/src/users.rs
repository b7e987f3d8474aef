//! The users file as guard's commands change it: add a user, set a password, delete, list, and
//! load for the proxy. Every change is a read-modify-write under the file's lock, written
//! atomically with mode 0600, so concurrent commands never lose an entry.

use std::path::{Path, PathBuf};

use crate::file_error::{self, FileError};
use crate::htpasswd::{
    hash_password, named_users, remove_entry, set_entry, validate_username, Htpasswd, InvalidName, LoadWarning,
    PasswordError,
};
use crate::secret::Secret;

/// Mode of the users file: it holds password hashes.
pub const USERS_FILE_MODE: u32 = 0o600;

/// Why a users-file command or load failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsersError {
    /// Reading, writing or locking the file failed, or it does not exist
    /// ([`FileError::NotFound`]: callers may treat that as "no users yet").
    #[error(transparent)]
    File(#[from] FileError),
    /// The file has bytes that are not UTF-8, which the commands will not rewrite.
    #[error("{}:{line}: line is not valid UTF-8; fix it by hand first", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// First bad line, 1-based.
        line: usize,
    },
    /// `add_user` for a name already in the file.
    #[error("{}: user {name:?} already exists; use `guard passwd {name}` to change the password", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
        /// The user.
        name: String,
    },
    /// `set_password` or `delete_user` for a name not in the file.
    #[error("{}: no user {name:?}", path.display())]
    UnknownUser {
        /// The file.
        path: PathBuf,
        /// The user.
        name: String,
    },
    /// The new user's name breaks the naming rules.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The new password cannot be hashed.
    #[error("cannot set the password of user {name:?}")]
    Password {
        /// The user.
        name: String,
        /// Why.
        source: PasswordError,
    },
}

impl UsersError {
    /// Whether the operator can fix this by changing the command or the file (a refused name or
    /// password, a missing or hand-damaged file: exit 2), rather than I/O failing (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            UsersError::Exists { .. }
                | UsersError::UnknownUser { .. }
                | UsersError::InvalidName(_)
                | UsersError::Password { .. }
                | UsersError::File(FileError::NotFound { .. })
                | UsersError::NotUtf8 { .. }
        )
    }
}

/// Adds `name` with a bcrypt hash of `password`, creating the file if needed. Refuses a name
/// that already has a line, usable or not.
pub fn add_user(path: &Path, name: &str, password: &Secret, cost: u32) -> Result<(), UsersError> {
    validate_username(name)?;
    // Hash before taking the lock: bcrypt is the slow part, and concurrent commands should
    // wait for each other only for the short read-modify-write.
    let hash = hash(name, password, cost)?;
    let _lock = lock(path)?;
    let text = read_text(path, true)?;
    if named_users(&text).contains(&name) {
        return Err(UsersError::Exists {
            path: path.to_path_buf(),
            name: name.to_owned(),
        });
    }
    write(path, &set_entry(&text, name, &format!("{name}:{hash}")))
}

/// Replaces the password of `name`, which must have a line in the file. This also repairs an
/// entry guard cannot check (an unsupported or damaged hash).
pub fn set_password(path: &Path, name: &str, password: &Secret, cost: u32) -> Result<(), UsersError> {
    let hash = hash(name, password, cost)?;
    let _lock = lock(path)?;
    let text = read_text(path, false)?;
    if !named_users(&text).contains(&name) {
        return Err(unknown(path, name));
    }
    write(path, &set_entry(&text, name, &format!("{name}:{hash}")))
}

/// Deletes every line of `name`, which must have one.
pub fn delete_user(path: &Path, name: &str) -> Result<(), UsersError> {
    let _lock = lock(path)?;
    let text = read_text(path, false)?;
    let new_text = remove_entry(&text, name).ok_or_else(|| unknown(path, name))?;
    write(path, &new_text)
}

/// Every user name with a line in the file, in file order, including users whose entry guard
/// cannot check ([`load`] reports those as warnings).
pub fn list_users(path: &Path) -> Result<Vec<String>, UsersError> {
    let bytes = read_bytes(path)?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(named_users(&text).into_iter().map(str::to_owned).collect())
}

/// Loads the file for checking logins. Takes no lock: writers replace the file atomically, so
/// a reader always sees a complete version.
pub fn load(path: &Path) -> Result<(Htpasswd, Vec<LoadWarning>), UsersError> {
    let bytes = read_bytes(path)?;
    Ok(Htpasswd::parse_bytes(&bytes, path))
}

fn hash(name: &str, password: &Secret, cost: u32) -> Result<String, UsersError> {
    hash_password(password.expose(), cost).map_err(|source| UsersError::Password {
        name: name.to_owned(),
        source,
    })
}

fn lock(path: &Path) -> Result<crate::fsutil::FileLockGuard, UsersError> {
    Ok(file_error::lock(path)?)
}

fn unknown(path: &Path, name: &str) -> UsersError {
    UsersError::UnknownUser {
        path: path.to_path_buf(),
        name: name.to_owned(),
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, UsersError> {
    file_error::read_bytes(path)?.ok_or_else(|| {
        UsersError::File(FileError::NotFound {
            path: path.to_path_buf(),
            what: "users file",
        })
    })
}

/// The file as text for editing; a missing file reads as empty when `missing_ok`.
fn read_text(path: &Path, missing_ok: bool) -> Result<String, UsersError> {
    let bytes = match read_bytes(path) {
        Err(UsersError::File(FileError::NotFound { .. })) if missing_ok => return Ok(String::new()),
        other => other?,
    };
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        UsersError::NotUtf8 {
            path: path.to_path_buf(),
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
        }
    })
}

fn write(path: &Path, text: &str) -> Result<(), UsersError> {
    Ok(file_error::write(path, text.as_bytes(), USERS_FILE_MODE)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;
    use std::os::unix::fs::PermissionsExt;

    const COST: u32 = 4;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn pw(s: &str) -> Secret {
        Secret::new(s)
    }

    #[test]
    fn add_user_creates_a_private_file_that_verifies() {
        let dir = TestDir::new();
        let path = dir.path().join("conf/users.htpasswd");
        add_user(&path, "alice", &pw("wonderland"), COST).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let (users, warnings) = load(&path).unwrap();
        assert!(warnings.is_empty());
        assert!(users.verify_user("alice", b"wonderland"));
        assert!(!users.verify_user("alice", b"looking-glass"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("alice:$2y$04$") && text.ends_with('\n'), "{text}");
    }

    #[test]
    fn add_user_refuses_an_existing_name_and_points_to_passwd() {
        let dir = TestDir::new();
        let path = dir.path().join("users");
        add_user(&path, "alice", &pw("one"), COST).unwrap();
        let err = add_user(&path, "alice", &pw("two"), COST).unwrap_err();
        assert!(matches!(err, UsersError::Exists { .. }));
        assert!(
            err.to_string()
                .ends_with("user \"alice\" already exists; use `guard passwd alice` to change the password"),
            "{err}"
        );
        assert!(load(&path).unwrap().0.verify_user("alice", b"one"));
    }

    #[test]
    fn add_user_refuses_a_name_whose_line_guard_cannot_use() {
        let dir = TestDir::new();
        let path = dir.path().join("users");
        std::fs::write(&path, "bob:$6$salt$hash\n").unwrap();
        let err = add_user(&path, "bob", &pw("x"), COST).unwrap_err();
        assert!(matches!(err, UsersError::Exists { .. }), "{err}");
    }

    #[test]
    fn add_user_refuses_bad_names_and_passwords_without_touching_the_file() {
        let dir = TestDir::new();
        let path = dir.path().join("users");
        let err = add_user(&path, "a:b", &pw("x"), COST).unwrap_err();
        assert!(matches!(err, UsersError::InvalidName(_)), "{err}");
        let err = add_user(&path, "carol", &pw(""), COST).unwrap_err();
        assert!(matches!(err, UsersError::Password { .. }), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn set_password_changes_only_that_users_line_and_keeps_comments_and_crlf() {
        let dir = TestDir::new();
        let path = dir.path().join("users");
        let before = "# ops team\r\nalice:$6$old$x\r\n\r\nbob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\r\n";
        std::fs::write(&path, before).unwrap();
        set_password(&path, "alice", &pw("new pass"), COST).unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = after.split("\r\n").collect();
        assert_eq!(lines[0], "# ops team");
        assert!(lines[1].starts_with("alice:$2y$04$"), "{after}");
        assert_eq!(&lines[2..], ["", "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", ""]);
        let (users, warnings) = load(&path).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(users.verify_user("alice", b"new pass"));
        assert!(users.verify_user("bob", b"password"));
    }

    #[test]
    fn set_password_refuses_an_unknown_user_or_a_missing_file() {
        let dir = TestDir::new();
        let path = dir.path().join("users");
        let err = set_password(&path, "ghost", &pw("x"), COST).unwrap_err();
        assert!(matches!(err, UsersError::File(FileError::NotFound { .. })), "{err}");
        add_user(&path, "alice", &pw("x"), COST).unwrap();
        let err = set_password(&path, "ghost", &pw("x"), COST).unwrap_err();
        assert!(err.to_string().ends_with(": no user \"ghost\""), "{err}");
    }

    #[test]
    fn delete_user_removes_the_user_and_refuses_unknown_names() {
        let dir = TestDir::new();
        let path = dir.path().join("users");
        add_user(&path, "alice", &pw("a"), COST).unwrap();
        add_user(&path, "bob", &pw("b"), COST).unwrap();
        delete_user(&path, "alice").unwrap();
        assert_eq!(list_users(&path).unwrap(), ["bob"]);
        let err = delete_user(&path, "alice").unwrap_err();
        assert!(matches!(err, UsersError::UnknownUser { .. }), "{err}");
        assert_eq!(mode_of(&path), 0o600);
    }

    #[test]
    fn writes_reset_a_too_open_file_to_0600() {
        let dir = TestDir::new();
        let path = dir.path().join("users");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        add_user(&path, "alice", &pw("a"), COST).unwrap();
        assert_eq!(mode_of(&path), 0o600);
    }

    #[test]
    fn list_users_includes_unusable_entries_and_a_missing_file_is_detectable() {
        let dir = TestDir::new();
        let path = dir.path().join("users");
        assert!(matches!(
            list_users(&path),
            Err(UsersError::File(FileError::NotFound { .. }))
        ));
        assert!(matches!(load(&path), Err(UsersError::File(FileError::NotFound { .. }))));
        std::fs::write(&path, "# c\nalice:$2y$garbage\nbob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
        assert_eq!(list_users(&path).unwrap(), ["alice", "bob"]);
        let (users, warnings) = load(&path).unwrap();
        assert_eq!(users.names().collect::<Vec<_>>(), ["bob"]);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].to_string().contains("users:2: user \"alice\""));
    }

    #[test]
    fn commands_refuse_to_rewrite_a_file_that_is_not_utf8() {
        let dir = TestDir::new();
        let path = dir.path().join("users");
        std::fs::write(&path, b"alice:x\nj\xfcrgen:y\n").unwrap();
        let err = delete_user(&path, "alice").unwrap_err();
        assert!(
            err.to_string()
                .ends_with("users:2: line is not valid UTF-8; fix it by hand first"),
            "{err}"
        );
    }

    #[test]
    fn twenty_concurrent_add_user_calls_lose_no_entry() {
        let dir = TestDir::new();
        let path = std::sync::Arc::new(dir.path().join("users"));
        let start = std::sync::Arc::new(std::sync::Barrier::new(20));
        let threads: Vec<_> = (0..20)
            .map(|i| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    add_user(&path, &format!("user{i}"), &pw(&format!("pw{i}")), COST)
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let (users, warnings) = load(&path).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(users.len(), 20);
        for i in 0..20 {
            assert!(users.verify_user(&format!("user{i}"), format!("pw{i}").as_bytes()));
        }
        assert_eq!(mode_of(&path), 0o600);
    }
}
