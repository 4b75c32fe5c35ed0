//! The hvagent gRPC API, generated from `proto/hvagent/v1/*.proto`.

pub mod v1 {
    tonic::include_proto!("hvagent.v1");
}

/// Encoded `FileDescriptorSet` of every hvagent proto, served through gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/hvagent_descriptor.bin"));
