//! The `guard.yaml` file as written: serde structs that mirror its keys, with no logic (the
//! sections of `guard serve` settings come from the table in [`crate::settings`]). Every
//! value is checked and given its meaning in [`crate::validate`]; here a duration or a size is
//! still the string the operator typed. Unknown keys are refused (`deny_unknown_fields`), so a
//! typo is never silently ignored.
//!
//! Durations are strings with a unit: `ms`, `s`, `m`, `h` or `d` (`30s`, `5m`, `90d`); sizes
//! take `K`, `M`, `G` or `T` (binary multiples: `64K`, `5G`). Relative paths are resolved against
//! the directory of the file. An empty value or `null` leaves a setting at its default.
//! Anchors and aliases (`&auth`, `*auth`) work; merge keys (`<<:`) do not.

pub use crate::check::HeaderChoice;
pub use crate::check::UpstreamList;
pub use crate::settings::{Acme, Auth, Balancing, Config, Limits, Lockout, SessionLimits, Site, Tls};
use crate::yaml::{fields_of, normalize_key};

/// The nested sections of each struct: `(key, fields)`.
fn sections(name: &str) -> Vec<(&'static str, &'static [&'static str])> {
    match name {
        "Config" => vec![
            ("tls", fields_of::<Tls>()),
            ("tls.acme", fields_of::<Acme>()),
            ("limits", fields_of::<Limits>()),
            ("balance", fields_of::<Balancing>()),
            ("auth", fields_of::<Auth>()),
            ("auth.lockout", fields_of::<Lockout>()),
            ("auth.session", fields_of::<SessionLimits>()),
        ],
        "Site" => vec![
            ("auth", fields_of::<Auth>()),
            ("auth.lockout", fields_of::<Lockout>()),
            ("auth.session", fields_of::<SessionLimits>()),
        ],
        "Tls" => vec![("acme", fields_of::<Acme>())],
        "Auth" => vec![
            ("lockout", fields_of::<Lockout>()),
            ("session", fields_of::<SessionLimits>()),
        ],
        _ => Vec::new(),
    }
}

/// For an unknown key that belongs in a nested section (`users` at a site, `tls_cert` at the
/// top), the key path it belongs at, relative to where it was written.
pub(crate) fn moved_key(name: &'static str, key: &str) -> Option<String> {
    let key = normalize_key(key);
    for (section, fields) in sections(name) {
        for f in fields {
            if key == *f || key == format!("{}_{f}", section.rsplit('.').next().unwrap_or(section)) {
                return Some(format!("{section}.{f}"));
            }
        }
    }
    None
}

/// Every key path the schema knows, list items as `[]`: `sites[].auth.lockout.window`.
pub fn schema_keys() -> Vec<String> {
    fn walk(prefix: &str, name: &str, fields: &[&str], out: &mut Vec<String>) {
        for f in fields {
            let path = if prefix.is_empty() {
                (*f).to_owned()
            } else {
                format!("{prefix}.{f}")
            };
            out.push(path.clone());
            let child = match (name, *f) {
                ("Config", "tls") => Some(("Tls", fields_of::<Tls>())),
                ("Config" | "Site", "limits") => Some(("Limits", fields_of::<Limits>())),
                ("Config", "balance") => Some(("Balancing", fields_of::<Balancing>())),
                ("Config" | "Site", "auth") => Some(("Auth", fields_of::<Auth>())),
                ("Config", "sites") => Some(("Site", fields_of::<Site>())),
                ("Tls", "acme") => Some(("Acme", fields_of::<Acme>())),
                ("Auth", "lockout") => Some(("Lockout", fields_of::<Lockout>())),
                ("Auth", "session") => Some(("SessionLimits", fields_of::<SessionLimits>())),
                ("Auth", "jwt") => Some(("RawIssuer", fields_of::<crate::jwt::RawIssuer>())),
                ("Auth", "oidc") => Some(("RawOidc", fields_of::<crate::oidc::RawOidc>())),
                _ => None,
            };
            if let Some((child, fields)) = child {
                let path = if matches!(child, "Site" | "RawIssuer") {
                    format!("{path}[]")
                } else {
                    path
                };
                walk(&path, child, fields, out);
            }
        }
    }
    let mut out = Vec::new();
    walk("", "Config", fields_of::<Config>(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_the_wrong_section_are_pointed_to_the_right_one() {
        assert_eq!(moved_key("Config", "users").as_deref(), Some("auth.users"));
        assert_eq!(moved_key("Config", "tls-cert").as_deref(), Some("tls.cert"));
        assert_eq!(moved_key("Config", "email").as_deref(), Some("tls.acme.email"));
        assert_eq!(moved_key("Site", "realm").as_deref(), Some("auth.realm"));
        assert_eq!(moved_key("Config", "colour"), None);
    }

    #[test]
    fn the_schema_lists_nested_keys() {
        let keys = schema_keys();
        for k in [
            "listen",
            "tls.acme.ca_root",
            "limits.max_h2_streams",
            "sites[].auth.lockout.window",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
    }
}
