//! Configuration files as `tollgate check` and `tollgate serve` read them: TOML through
//! `Config::from_toml_str` (parse, validation), then the route table; the redacted TOML that
//! `tollgate check` prints must be TOML.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match tollgate::fuzzing::config(text) {
        Ok(redacted) => {
            if let Err(e) = redacted.parse::<toml::Table>() {
                panic!("the redacted config is not TOML: {e}\n{redacted}");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
