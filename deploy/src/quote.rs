//! Quoting for each format the renderers write, so every value stays one token and nothing is
//! read as a boolean, a number or an interpolation: YAML double-quoted scalars, systemd
//! command lines and assignments, supervisord's shlex-split commands, and POSIX sh words.

use std::fmt::Write as _;

/// Characters that mean nothing special in any of the formats below.
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | ':' | ',' | '@' | '=')
}

/// A YAML double-quoted scalar. Every string the compose renderer writes goes through this:
/// unquoted `no`, `on` or `5000` would be read as a boolean or a number (docker-compose 1.29
/// rejects a boolean in `environment`).
pub(crate) fn yaml(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A YAML flow sequence of quoted strings: `["CMD", "guard", "healthcheck"]`.
pub(crate) fn yaml_flow<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| yaml(s.as_ref())).collect();
    format!("[{}]", quoted.join(", "))
}

/// One word of a systemd command line (`ExecStart=`). `%` starts a specifier and `$` an
/// environment substitution, so both are doubled; words with other special characters are
/// double-quoted with C escapes (systemd.service(5), "Command lines").
pub(crate) fn systemd_word(s: &str) -> String {
    let escaped = s.replace('%', "%%").replace('$', "$$");
    if !s.is_empty() && s.chars().all(|c| is_plain(c) || c == '%' || c == '$') {
        return escaped;
    }
    format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A whole command line for `ExecStart=` and friends.
pub(crate) fn systemd_command<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| systemd_word(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `Environment="KEY=value"`'s quoted assignment. Environment= expands `%` specifiers but not
/// `$`, and takes C escapes inside the quotes.
pub(crate) fn systemd_env(key: &str, value: &str) -> String {
    let v = value.replace('\\', "\\\\").replace('"', "\\\"").replace('%', "%%");
    format!("\"{key}={v}\"")
}

/// One POSIX sh word: bare when plain, else single-quoted.
pub(crate) fn sh(s: &str) -> String {
    if !s.is_empty() && s.chars().all(is_plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// One word of a supervisord `command=` (split with Python's `shlex.split`, after `%(name)s`
/// expansion): bare when plain, else double-quoted with `\` and `"` escaped. The caller has
/// already doubled any literal `%`; `%(here)s` is quoted because the directory it expands to
/// may hold spaces.
pub(crate) fn shlex(s: &str) -> String {
    if !s.is_empty() && s.chars().all(is_plain) {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// A literal for a supervisord value, where `%` starts an interpolation.
pub(crate) fn supervisor_literal(s: &str) -> String {
    s.replace('%', "%%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_scalars_are_always_quoted_and_escaped() {
        assert_eq!(yaml("no"), "\"no\"");
        assert_eq!(yaml("5000"), "\"5000\"");
        assert_eq!(yaml("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        assert_eq!(yaml_flow(&["CMD", "x y"]), "[\"CMD\", \"x y\"]");
    }

    #[test]
    fn systemd_words_escape_specifiers_and_substitutions() {
        assert_eq!(systemd_word("/usr/bin/guard"), "/usr/bin/guard");
        assert_eq!(systemd_word("100%"), "100%%");
        assert_eq!(systemd_word("$HOME"), "$$HOME");
        assert_eq!(systemd_word("a b\"c"), "\"a b\\\"c\"");
        assert_eq!(systemd_env("K", "a,b%"), "\"K=a,b%%\"");
    }

    #[test]
    fn shell_and_shlex_words_quote_only_when_needed() {
        assert_eq!(sh("/opt/mlflow/bin/mlflow"), "/opt/mlflow/bin/mlflow");
        assert_eq!(sh("it's"), "'it'\\''s'");
        assert_eq!(shlex("%(here)s/guard"), "\"%(here)s/guard\"");
        assert_eq!(shlex("a\"b"), "\"a\\\"b\"");
        assert_eq!(supervisor_literal("/tmp/50%"), "/tmp/50%%");
    }
}
