//! Fuzzes the config loader: any text is either a config or one error line that names the
//! file (and, for a key, the key and its rule); loading is deterministic.
#![no_main]

use hvagent::daemon::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse("hvagent.toml", &text) {
        Ok(config) => {
            assert_eq!(Config::parse("hvagent.toml", &text), Ok(config));
        }
        Err(e) => {
            let line = e.to_string();
            assert!(line.starts_with("hvagent.toml: "), "{line}");
            assert!(!line.contains('\n') || line.contains("line "), "{line}");
        }
    }
});
