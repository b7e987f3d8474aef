//! Fuzzes the guard.yaml loader: any bytes parse to settings or to errors with positions, and
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match guard_config::parse_str(text, "/nonexistent/guard.yaml") {
        Ok(overlay) => {
            if let Err(errors) = guard_config::finish(overlay) {
                let _ = errors.to_string();
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error result carries at least one error");
            let _ = errors.to_string();
        }
    }
});
