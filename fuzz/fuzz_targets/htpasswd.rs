//! Fuzzes the htpasswd parser and password verification: no input may panic, and every usable
//! entry verifies (or not) without panicking. Slow bcrypt costs are skipped to keep runs fast.
#![no_main]

use guard_config::htpasswd::{Htpasswd, Scheme};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (users, warnings) = Htpasswd::parse_bytes(data, std::path::Path::new("fuzz.htpasswd"));
    for w in &warnings {
        let _ = w.to_string();
    }
    for name in users.names().map(str::to_owned).collect::<Vec<_>>() {
        let entry = users.get(&name).expect("listed names resolve");
        if matches!(entry.scheme(), Scheme::Bcrypt { cost } if cost > 5) {
            continue;
        }
        let _ = entry.verify(data);
        let _ = entry.verify(b"password");
    }
});
