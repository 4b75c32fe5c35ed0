//! Fuzzes the SCS flavor name parser: any input is either rejected with a position inside the
//! name, or it is the one canonical spelling of its flavor (v3, or v1 when written in v1 syntax)
//! and its canonical, v1 and short names parse back to the same flavor.
#![no_main]

use hvagent::flavor::{Syntax, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let name = String::from_utf8_lossy(data);
    match parse(&name) {
        Ok(parsed) => {
            let spec = parsed.spec;
            // One spelling per flavor: whatever parses is exactly how hvagent writes it.
            let written = match parsed.syntax {
                Syntax::V3 => spec.name(),
                Syntax::V1 => spec.name_v1(),
            };
            assert_eq!(written, name, "accepted a non-canonical spelling");
            let again = parse(&spec.name()).expect("canonical name parses");
            assert_eq!(again.spec, spec, "canonical round trip of {name:?}");
            let v1 = parse(&spec.name_v1()).expect("v1 name parses");
            assert_eq!(v1.spec, spec, "v1 round trip of {name:?}");
            let short = spec.short();
            let parsed_short = parse(&short.name()).expect("short name parses");
            assert_eq!(parsed_short.spec, short, "short round trip of {name:?}");
        }
        Err(e) => assert!(
            e.position <= name.chars().count(),
            "position outside {name:?}: {e}"
        ),
    }
});
