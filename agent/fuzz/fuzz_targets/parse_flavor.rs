//! Fuzzes the SCS flavor name parser: any input is either rejected with a position inside the
//! name, or it is a flavor whose canonical and short names parse back to the same flavor. A v3
//! name that parses is the one canonical spelling of its flavor; a v1 name is read as the SCS
//! reference tool reads it, loose spellings included, and its warning names the v3 name.
#![no_main]

use hvagent::flavor::{Syntax, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let name = String::from_utf8_lossy(data);
    match parse(&name) {
        Ok(parsed) => {
            let spec = parsed.spec;
            match parsed.syntax {
                // One spelling per flavor: whatever parses is exactly how hvagent writes it.
                Syntax::V3 => assert_eq!(spec.name(), name, "accepted a non-canonical spelling"),
                // The reference accepts "SCS-2V:4:1x20s" for SCS-2V:4:20s: say the v3 name.
                Syntax::V1 => assert!(
                    parsed.warnings[0].ends_with(&spec.name()),
                    "v1 warning of {name:?} without the v3 name: {:?}",
                    parsed.warnings
                ),
            }
            let again = parse(&spec.name()).expect("canonical name parses");
            assert_eq!(again.spec, spec, "canonical round trip of {name:?}");
            // Not every flavor has a v1 name (no "-chy"; nothing after a GPU without compute
            // units), but one that parses is the same flavor.
            if let Ok(v1) = parse(&spec.name_v1()) {
                assert_eq!(v1.spec, spec, "v1 round trip of {name:?}");
            }
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
