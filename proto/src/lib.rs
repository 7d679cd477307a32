//! The wire contract of Switchyard: protobuf package `switchyard.v1`.
//!
//! Client stubs come with the default `client` feature; server traits with `server`.

#![allow(clippy::doc_markdown, clippy::large_enum_variant)]

/// Generated messages and services of `switchyard.v1`.
pub mod v1 {
    tonic::include_proto!("switchyard.v1");
}

/// The encoded `FileDescriptorSet` of every `.proto` (imports included), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));

pub mod text;

pub use prost_types::{Duration, Timestamp};
