//! OCI images for veil: read them from layouts and registries with every
//! blob checked against its digest, and (in later modules) encrypt, sign,
//! measure and unpack them.
//!
//! Start with [`layout::OciLayout`] (an `oci:DIR[:TAG]` directory) and
//! [`source::resolve`], which turn a reference into a [`ResolvedImage`]:
//! manifest digest, typed [`spec::ImageConfig`] (Entrypoint, Cmd, Env,
//! WorkingDir, User…) and layer descriptors. [`builder::ImageBuilder`] makes
//! test images from a directory or tar stream.
//!
//! Not for: running containers (that is the agent), deciding which images
//! are allowed (that is `veil-policy`).

pub mod bench;
pub mod builder;
pub mod crypt;
pub mod digest;
pub mod layout;
pub mod progress;
pub mod registry;
pub mod rootfs;
pub mod sign;
pub mod source;
pub mod spec;
pub mod unpack;
pub mod verity;
pub mod zstd;

pub use digest::{Digest, DigestAlgorithm};
pub use layout::{OciLayout, OciRef};
pub use source::{BlobSource, ResolvedImage, SourceError};
pub use spec::{ContainerConfig, Descriptor, ImageConfig, Manifest, Platform};
