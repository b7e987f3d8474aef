//! Fuzzes the Authorization header parser: no input may panic, and a parsed Basic credential
//! always has a non-empty user name.
#![no_main]

use guard_config::credential::{parse_credential, Credential};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(Credential::Basic { user, .. }) = parse_credential(data) {
        assert!(!user.is_empty());
    }
});
