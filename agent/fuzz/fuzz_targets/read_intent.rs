//! Fuzzes the reader of the agent's domain metadata (XML that comes back from libvirt, which
//! anyone with libvirt access can edit): any input is either refused with an error or gives an
//! intent that the agent's own writer writes back to exactly that intent.
#![no_main]

use hvagent::domain::xml::{metadata_xml, read_intent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(intent) = read_intent(&text) {
        let written = metadata_xml(&intent).expect("an intent read can be written");
        let again = read_intent(&written).expect("what the agent writes reads back");
        assert_eq!(again, intent, "round trip of {written}");
    }
});
