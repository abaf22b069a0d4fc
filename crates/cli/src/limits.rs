//! Command-line bounds on image unpacking (decompression bombs), shared by
//! `veil run` (into the generated policy, where the guest enforces them)
//! and `veil image unpack`.

use clap::Args;
use serde::{Deserialize, Serialize};
use veil_image::unpack::UnpackLimits;
use veil_policy::model::UnpackBounds;

fn size(s: &str) -> Result<u64, String> {
    UnpackLimits::parse_size(s).map_err(|e| e.to_string())
}

/// `--max-image-size`, `--max-image-entries`, `--max-image-ratio`,
/// `--max-image-file-size`.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageLimitArgs {
    /// Most uncompressed bytes one image may unpack to (e.g. 512M, 20G; default 8G).
    #[arg(long, value_name = "SIZE", value_parser = size)]
    pub max_image_size: Option<u64>,
    /// Most tar entries one image may hold (default 1000000).
    #[arg(long, value_name = "N")]
    pub max_image_entries: Option<u64>,
    /// Largest uncompressed/compressed ratio of a layer past its first 64 MiB (default 100).
    #[arg(long, value_name = "N")]
    pub max_image_ratio: Option<u64>,
    /// Largest single file in an image (e.g. 4G; default 4G).
    #[arg(long, value_name = "SIZE", value_parser = size)]
    pub max_image_file_size: Option<u64>,
}

impl ImageLimitArgs {
    /// The bounds as the policy carries them (unset: the guest's defaults).
    pub fn bounds(&self) -> UnpackBounds {
        UnpackBounds {
            max_bytes: self.max_image_size,
            max_entries: self.max_image_entries,
            max_ratio: self.max_image_ratio,
            ratio_floor_bytes: None,
            max_file_bytes: self.max_image_file_size,
        }
    }

    /// The limits for unpacking here: the defaults with these overrides.
    pub fn limits(&self) -> UnpackLimits {
        let d = UnpackLimits::default();
        UnpackLimits {
            max_bytes: self.max_image_size.unwrap_or(d.max_bytes),
            max_entries: self.max_image_entries.unwrap_or(d.max_entries),
            max_ratio: self.max_image_ratio.unwrap_or(d.max_ratio),
            max_file_bytes: self.max_image_file_size.unwrap_or(d.max_file_bytes),
            ..d
        }
    }

    /// Whether any bound was given.
    pub fn any(&self) -> bool {
        !self.bounds().is_unset()
    }
}
