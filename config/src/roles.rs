//! Roles: what a user may do through guard, kept in a groups file beside the users file in
//! Apache's `AuthGroupFile` format (`reader: alice bob`), so the htpasswd file itself stays
//! what Apache and nginx read. Group `reader` sees everything and changes nothing, `writer`
//! may do everything (a user in neither gets the site's default role), and `admin` marks the
//! users MLflow's own permission pages treat as admins. Other groups are left alone.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::file_error::{self, FileError};

/// The groups file's name beside the users file.
pub const GROUPS_FILE_NAME: &str = "groups";
/// Mode of the groups file: it says who may write, so only guard's user may change it.
pub const GROUPS_FILE_MODE: u32 = 0o600;
/// The group that marks admins.
pub const ADMIN_GROUP: &str = "admin";

/// What a signed-in user or token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees everything, changes nothing: reads, and the searches MLflow does with POST.
    Reader,
    /// Everything: the behaviour before roles, and the default.
    Writer,
}

impl Role {
    /// The role's name, as the groups file and the flags write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
        }
    }

    /// Parses `reader` or `writer`.
    pub fn parse(text: &str) -> Result<Role, String> {
        match text {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            other => Err(format!("{other:?} is not a role: use reader or writer")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::parse(s)
    }
}

/// The loaded groups file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    role: HashMap<String, Role>,
    admins: HashSet<String>,
}

/// A line of the groups file that guard reads differently from what its writer may have meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupsWarning {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What guard made of it.
    pub problem: String,
}

impl fmt::Display for GroupsWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.problem)
    }
}

/// One line: blank or comment, or a group and its members.
fn split_line(line: &str) -> Option<Result<(&str, std::str::SplitWhitespace<'_>), ()>> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    Some(
        trimmed
            .split_once(':')
            .map(|(group, members)| (group.trim(), members.split_whitespace()))
            .ok_or(()),
    )
}

impl Roles {
    /// Reads a groups file's text. A user in both `reader` and `writer` is a reader (the
    /// lesser right wins), with a warning; so is anything guard cannot read.
    pub fn parse(text: &str, path: &Path) -> (Roles, Vec<GroupsWarning>) {
        let mut roles = Roles::default();
        let mut warnings = Vec::new();
        let warn = |line, problem: String| GroupsWarning {
            path: path.to_path_buf(),
            line,
            problem,
        };
        for (i, line) in text.lines().enumerate() {
            let Some(parsed) = split_line(line) else { continue };
            let Ok((group, members)) = parsed else {
                warnings.push(warn(i + 1, "not `group: user user ...`; ignored".into()));
                continue;
            };
            let role = match group {
                "reader" => Some(Role::Reader),
                "writer" => Some(Role::Writer),
                ADMIN_GROUP => None,
                // Other groups are for other programs reading the same file.
                _ => continue,
            };
            for user in members {
                match role {
                    None => {
                        roles.admins.insert(user.to_owned());
                    }
                    Some(role) => {
                        let held = roles.role.entry(user.to_owned()).or_insert(role);
                        if *held != role {
                            *held = Role::Reader;
                            warnings.push(warn(
                                i + 1,
                                format!("user {user:?} is in both reader and writer: reader"),
                            ));
                        }
                    }
                }
            }
        }
        (roles, warnings)
    }

    /// The role the file gives `user`, if any.
    pub fn role_of(&self, user: &str) -> Option<Role> {
        self.role.get(user).copied()
    }

    /// Whether `user` is in the `admin` group.
    pub fn is_admin(&self, user: &str) -> bool {
        self.admins.contains(user)
    }
}

/// Loads the groups file; a missing file is [`FileError::NotFound`] (the caller decides that
/// this means "no roles given").
pub fn load(path: &Path) -> Result<(Roles, Vec<GroupsWarning>), FileError> {
    let text = read(path)?.ok_or_else(|| FileError::NotFound {
        path: path.to_path_buf(),
        what: "groups file",
    })?;
    Ok(Roles::parse(&text, path))
}

fn read(path: &Path) -> Result<Option<String>, FileError> {
    Ok(file_error::read_bytes(path)?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

/// Gives `user` the role `role` (`None`: the site's default), keeping every other line,
/// comment and group as it was. Locked and atomic like the users file.
pub fn set_role(path: &Path, user: &str, role: Option<Role>) -> Result<(), FileError> {
    let _lock = file_error::lock(path)?;
    let text = read(path)?.unwrap_or_default();
    file_error::write(path, with_role(&text, user, role).as_bytes(), GROUPS_FILE_MODE)
}

/// `text` with `user` taken out of `reader` and `writer` and put in `role`'s group.
fn with_role(text: &str, user: &str, role: Option<Role>) -> String {
    let mut out = Vec::new();
    let mut placed = role.is_none();
    for line in text.lines() {
        let (group, members) = match split_line(line) {
            Some(Ok((g @ ("reader" | "writer"), members))) => (g, members),
            _ => {
                out.push(line.to_owned());
                continue;
            }
        };
        let mut members: Vec<&str> = members.filter(|m| *m != user).collect();
        if !placed && role.is_some_and(|r| r.as_str() == group) {
            members.push(user);
            placed = true;
        }
        out.push(format!("{group}: {}", members.join(" ")).trim_end().to_owned());
    }
    if let (false, Some(role)) = (placed, role) {
        out.push(format!("{role}: {user}"));
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Roles, Vec<GroupsWarning>) {
        Roles::parse(text, Path::new("groups"))
    }

    #[test]
    fn the_groups_file_gives_roles_and_admins_and_leaves_other_groups_alone() {
        let (r, w) =
            parse("# who may write\nreader: alice bob\nwriter: ci\nadmin: ci\nstaff: alice ci\n\nreader: dave\n");
        assert_eq!(w, vec![]);
        assert_eq!(r.role_of("alice"), Some(Role::Reader));
        assert_eq!(r.role_of("dave"), Some(Role::Reader), "a group may take several lines");
        assert_eq!(r.role_of("ci"), Some(Role::Writer));
        assert_eq!(r.role_of("nobody"), None);
        assert!(r.is_admin("ci") && !r.is_admin("alice"));
    }

    #[test]
    fn a_user_in_both_roles_is_a_reader_and_a_bad_line_is_named() {
        let (r, w) = parse("writer: alice\nreader: alice\nnonsense line\n");
        assert_eq!(r.role_of("alice"), Some(Role::Reader));
        let text: Vec<String> = w.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "groups:2: user \"alice\" is in both reader and writer: reader",
                "groups:3: not `group: user user ...`; ignored"
            ]
        );
    }

    #[test]
    fn setting_a_role_moves_the_user_and_keeps_everything_else() {
        let text = "# roles\nreader: alice bob\nstaff: alice\nwriter: ci\n";
        assert_eq!(
            with_role(text, "alice", Some(Role::Writer)),
            "# roles\nreader: bob\nstaff: alice\nwriter: ci alice\n"
        );
        assert_eq!(
            with_role(text, "eve", Some(Role::Reader)),
            "# roles\nreader: alice bob eve\nstaff: alice\nwriter: ci\n"
        );
        assert_eq!(with_role("", "eve", Some(Role::Reader)), "reader: eve\n");
        assert_eq!(
            with_role(text, "ci", None),
            "# roles\nreader: alice bob\nstaff: alice\nwriter:\n"
        );
    }

    #[test]
    fn set_role_writes_a_private_file_the_loader_reads_back() {
        let dir = crate::testutil::TestDir::new();
        let path = dir.path().join(GROUPS_FILE_NAME);
        assert!(matches!(load(&path), Err(FileError::NotFound { .. })));
        set_role(&path, "alice", Some(Role::Reader)).unwrap();
        set_role(&path, "bob", Some(Role::Writer)).unwrap();
        set_role(&path, "alice", Some(Role::Writer)).unwrap();
        let (roles, warnings) = load(&path).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(roles.role_of("alice"), Some(Role::Writer));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, GROUPS_FILE_MODE);
    }
}
