//! The verdict of the KVM trial (the daemon runs it: `hvagent::host::kvm`), as the inventory
//! carries it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmState {
    Absent,
    Broken,
    Usable,
}

impl KvmState {
    pub fn as_str(self) -> &'static str {
        match self {
            KvmState::Absent => "absent",
            KvmState::Broken => "broken",
            KvmState::Usable => "usable",
        }
    }
}

/// The verdict with a reason an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmVerdict {
    pub state: KvmState,
    pub reason: String,
}
