//! Bounded JSON parsing for request bodies: size is bounded by the HTTP
//! layer; nesting depth is checked here before serde sees the bytes.

use serde::de::DeserializeOwned;

/// Deepest nesting accepted in a request body.
pub const MAX_DEPTH: usize = 32;

/// Check that `bytes` nest arrays/objects at most `max` deep (strings are
/// skipped, escapes honoured). Does not validate the JSON otherwise.
pub fn check_depth(bytes: &[u8], max: usize) -> Result<(), String> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(format!(
                        "JSON nested deeper than {max} levels (at byte {i})"
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Parse a request body as `T`, with the depth limit.
pub fn parse<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    check_depth(bytes, MAX_DEPTH).map_err(|e| format!("{what}: {e}"))?;
    serde_json::from_slice(bytes)
        .map_err(|e| format!("{what} is not valid JSON of the expected shape: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn depth() {
        assert!(check_depth(br#"{"a":[1,{"b":"[[[[["}]}"#, 3).is_ok());
        assert!(check_depth(b"[[[[1]]]]", 3).is_err());
        assert!(check_depth(br#"["\"[[[["]"#, 1).is_ok());
        let deep = "[".repeat(10_000);
        assert!(
            parse::<serde_json::Value>("body", deep.as_bytes())
                .unwrap_err()
                .contains("deeper")
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse::<kbs_types::Attestation>("attestation", &bytes);
            let _ = parse::<veil_kbs_client::protocol::AuthRequest>("auth", &bytes);
        }
    }
}
