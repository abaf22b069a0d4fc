//! Pick the driver and VBIOS RIMs that describe a report out of a set of
//! candidate files (an operator-filled directory or cache): by the RIM's own
//! identity fields (product, `colloquialVersion`), then verify the chosen
//! ones' signatures.
//!
//! The selection never trusts a file name to accept a RIM: a name following
//! NVIDIA's RIM ID layout (`{project}_{project SKU}_{chip SKU}_{VBIOS}_…`)
//! can only rule a RIM out, for a board that is not the report's. Two
//! different RIMs (different `tagId`s) left for the same version are refused
//! as ambiguous rather than guessed between.

use super::report::Report;
use super::rim::{MAX_RIM_BYTES, Rim};
use crate::error::{Error, Result};

/// Most candidate files one selection looks at.
pub const MAX_CANDIDATES: usize = 4096;
/// Check named by every selection refusal.
pub const CHECK: &str = "nvidia.rim_select";

/// A candidate RIM file: its name (for messages and the board hint) and bytes.
#[derive(Debug, Clone)]
pub struct RimFile {
    /// File name (no directory).
    pub name: String,
    /// Content.
    pub bytes: Vec<u8>,
}

/// What the report needs: its versions and board identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// RIM product name for the GPU's architecture (`GH100`).
    pub product: String,
    /// The report's driver version (`550.90.07`).
    pub driver_version: String,
    /// The report's VBIOS version (`96.00.9f.00.01`).
    pub vbios_version: String,
    /// Board identity from the report's opaque data, when present:
    /// project, project SKU, chip SKU (`1010`, `0200`, `882`).
    pub board: Option<(String, String, String)>,
}

impl Wanted {
    /// What a Hopper report needs.
    pub fn for_report(report: &Report) -> Result<Self> {
        use super::report::{opaque, text};
        let field = |id| {
            report
                .opaque
                .iter()
                .find(|f| f.id == id)
                .map(|f| text(&f.value))
        };
        let board = match (
            field(opaque::PROJECT),
            field(opaque::PROJECT_SKU),
            field(opaque::CHIP_SKU),
        ) {
            (Some(p), Some(s), Some(c)) => Some((p, s, c)),
            _ => None,
        };
        Ok(Wanted {
            product: "GH100".into(),
            driver_version: report.driver_version()?,
            vbios_version: report.vbios_version()?,
            board,
        })
    }
}

/// The RIMs chosen for a report, signature-verified, and where they came from.
#[derive(Debug, Clone)]
pub struct Selected {
    /// Driver RIM.
    pub driver: Rim,
    /// File the driver RIM came from.
    pub driver_file: String,
    /// VBIOS RIM.
    pub vbios: Rim,
    /// File the VBIOS RIM came from.
    pub vbios_file: String,
}

/// The board a file name claims, when it follows NVIDIA's VBIOS RIM ID
/// layout and names this VBIOS version.
fn board_in_name(name: &str, vbios_version: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = name.split(['_', '.']).collect();
    let compact: String = vbios_version.split('.').collect();
    match parts.as_slice() {
        [p, s, c, v, ..] if v.eq_ignore_ascii_case(&compact) => {
            Some((p.to_string(), s.to_string(), c.to_string()))
        }
        _ => None,
    }
}

fn same_board(a: &(String, String, String), b: &(String, String, String)) -> bool {
    a.0.eq_ignore_ascii_case(&b.0)
        && a.1.eq_ignore_ascii_case(&b.1)
        && a.2.eq_ignore_ascii_case(&b.2)
}

struct Parsed<'a> {
    file: &'a RimFile,
    rim: Rim,
}

/// Choose one RIM of `kind` (`driver`/`VBIOS`) with `version` among `parsed`.
fn choose<'a>(
    kind: &str,
    version: &str,
    want: &Wanted,
    parsed: &'a [Parsed<'a>],
    source: &str,
) -> std::result::Result<&'a Parsed<'a>, Choice> {
    let mut other_board = Vec::new();
    let mut found: Vec<&Parsed<'_>> = Vec::new();
    for p in parsed {
        if !p.rim.version.eq_ignore_ascii_case(version) {
            continue;
        }
        if kind == "VBIOS" {
            if let (Some(board), Some(named)) = (&want.board, board_in_name(&p.file.name, version))
            {
                if !same_board(board, &named) {
                    other_board.push(p.file.name.as_str());
                    continue;
                }
            }
        }
        if !found.iter().any(|f| f.rim.tag_id == p.rim.tag_id) {
            found.push(p);
        }
    }
    let board = want
        .board
        .as_ref()
        .filter(|_| kind == "VBIOS")
        .map(|(p, s, c)| format!(" (project {p}, project SKU {s}, chip SKU {c})"))
        .unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(one),
        [] => {
            let boards = if other_board.is_empty() {
                String::new()
            } else {
                format!(
                    "; for this version but another board: {}",
                    other_board.join(", ")
                )
            };
            Err(Choice::Absent(format!(
                "no RIM for {kind} {version}{board} in {source}{boards} \
                 (NVIDIA's RIM service ID NV_GPU_{})",
                if kind == "VBIOS" {
                    "VBIOS_<project>_<project sku>_<chip sku>_<version without dots>".to_string()
                } else {
                    format!("DRIVER_{}_{version}", want.product)
                }
            )))
        }
        many => Err(Choice::Refused(Error::refused(
            CHECK,
            format!(
                "{} different RIMs for {kind} {version}{board} in {source}: {}; keep only the one for this board",
                many.len(),
                many.iter()
                    .map(|p| format!("{} (tagId {})", p.file.name, p.rim.tag_id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))),
    }
}

/// Why [`choose`] found nothing: absent (message without the inventory) or
/// a refusal.
enum Choice {
    Absent(String),
    Refused(Error),
}

/// Select the driver and VBIOS RIMs for `want` among `files` (named
/// `source` in messages) and verify their signatures at `now_unix`
/// ([`Rim::verify`]). Files that are not RIMs for `want.product` are
/// skipped; a refusal lists the versions that were found.
pub fn select(want: &Wanted, files: &[RimFile], source: &str, now_unix: u64) -> Result<Selected> {
    if files.len() > MAX_CANDIDATES {
        return Err(Error::refused(
            CHECK,
            format!(
                "{source} holds {} candidate files, at most {MAX_CANDIDATES} are read",
                files.len()
            ),
        ));
    }
    let mut parsed = Vec::new();
    let mut unreadable = Vec::new();
    let mut versions = Vec::new();
    for f in files {
        if f.bytes.len() > MAX_RIM_BYTES {
            unreadable.push(format!("{} (larger than {MAX_RIM_BYTES} bytes)", f.name));
            continue;
        }
        match Rim::parse(&f.bytes) {
            Ok(rim) if rim.name == want.product => {
                if !versions.contains(&rim.version) {
                    versions.push(rim.version.clone());
                }
                parsed.push(Parsed { file: f, rim });
            }
            Ok(rim) => unreadable.push(format!("{} (a RIM for {})", f.name, rim.name)),
            Err(e) => unreadable.push(format!("{} ({e})", f.name)),
        }
    }
    versions.sort();
    let mut inventory: String = if versions.is_empty() {
        format!("no {} RIM", want.product)
    } else {
        versions.join(", ")
    };
    if !unreadable.is_empty() {
        let shown: Vec<_> = unreadable.iter().take(3).map(String::as_str).collect();
        inventory.push_str(&format!(
            "; {} file(s) skipped: {}{}",
            unreadable.len(),
            shown.join(", "),
            if unreadable.len() > 3 { ", …" } else { "" }
        ));
    }
    let vbios = choose("VBIOS", &want.vbios_version, want, &parsed, source);
    let driver = choose("driver", &want.driver_version, want, &parsed, source);
    let (driver, vbios) = match (driver, vbios) {
        (Ok(d), Ok(v)) => (d, v),
        (Err(Choice::Refused(e)), _) | (_, Err(Choice::Refused(e))) => return Err(e),
        (d, v) => {
            // Name every absent RIM in one refusal, then what the source holds.
            let absent: Vec<String> = [v.err(), d.err()]
                .into_iter()
                .flatten()
                .filter_map(|c| match c {
                    Choice::Absent(m) => Some(m),
                    Choice::Refused(_) => None,
                })
                .collect();
            return Err(Error::refused(
                CHECK,
                format!(
                    "{} (have: {inventory}); add the missing RIM(s) to {source}",
                    absent.join("; ")
                ),
            ));
        }
    };
    Ok(Selected {
        driver: Rim::verify(&driver.file.bytes, now_unix)?,
        driver_file: driver.file.name.clone(),
        vbios: Rim::verify(&vbios.file.bytes, now_unix)?,
        vbios_file: vbios.file.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_hint_is_read_only_from_nvidia_style_names_for_this_version() {
        assert_eq!(
            board_in_name("1010_0200_882_96005E0001_PROD.swidtag", "96.00.5e.00.01"),
            Some(("1010".into(), "0200".into(), "882".into()))
        );
        assert_eq!(
            board_in_name("1010_0200_882_96005E0001_PROD.swidtag", "96.00.5E.00.02"),
            None
        );
        assert_eq!(board_in_name("driver.swidtag", "96.00.5E.00.01"), None);
    }
}
