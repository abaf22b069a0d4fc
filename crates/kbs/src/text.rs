//! Client text made safe to log and print: control characters escaped, so
//! that an unauthenticated request cannot forge audit or log lines (raw
//! newlines), drive a terminal (ANSI/OSC escapes) or reorder what a reader
//! sees (Unicode bidi and other format controls).

use std::fmt::Write;

/// True for the characters [`escape_controls`] escapes: C0, DEL, C1, the
/// line and paragraph separators, and the Unicode format controls
/// (general category Cf: bidi embeddings, overrides and isolates,
/// zero-width characters, the BOM, soft hyphen, tags, …).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control() // C0, DEL, C1
        || matches!(
            c,
            '\u{00ad}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061c}'
                | '\u{06dd}'
                | '\u{070f}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08e2}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{110bd}'
                | '\u{110cd}'
                | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
        )
}

/// `s` with every [`is_unsafe_char`] character escaped: `\n`, `\r`, `\t`;
/// other C0, DEL and C1 as `\x1b`; the rest as `\u{202e}`. Printable text,
/// backslashes included, is unchanged.
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(is_unsafe_char) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x100 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if is_unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// A JSON value with [`escape_controls`] applied to every string in it,
/// object keys included.
pub fn escape_json(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(escape_controls(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(escape_json).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (escape_controls(&k), escape_json(v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forged_lines_and_escapes_are_rendered_visibly() {
        assert_eq!(
            escape_controls("nonce\n2026-01-01 ALLOW forged\x1b[2J\r\t\0\x7f\u{9b}"),
            "nonce\\n2026-01-01 ALLOW forged\\x1b[2J\\r\\t\\x00\\x7f\\x9b"
        );
        assert_eq!(
            escape_controls("a\u{202e}b\u{2066}c\u{200b}d\u{feff}\u{2028}"),
            "a\\u{202e}b\\u{2066}c\\u{200b}d\\u{feff}\\u{2028}"
        );
        // OSC 8 hyperlink / title set, terminated by BEL or ST.
        assert_eq!(escape_controls("\x1b]0;pwned\x07"), "\\x1b]0;pwned\\x07");
        let plain = "ordinary text: é, 日本, emoji 🦀, a \\n that was typed";
        assert_eq!(escape_controls(plain), plain);
    }

    #[test]
    fn json_strings_and_keys_are_escaped() {
        let v = serde_json::json!({"k\n": ["\x1b[31m", 5, {"x": "\u{202e}"}], "n": null});
        assert_eq!(
            escape_json(v),
            serde_json::json!({"k\\n": ["\\x1b[31m", 5, {"x": "\\u{202e}"}], "n": null})
        );
    }

    proptest! {
        #[test]
        fn output_never_holds_an_unsafe_char(s in any::<String>()) {
            let e = escape_controls(&s);
            prop_assert!(!e.chars().any(is_unsafe_char), "{:?}", e);
            // Nothing but unsafe characters is rewritten.
            let kept: String = s.chars().filter(|c| !is_unsafe_char(*c)).collect();
            let mut rest = e.as_str();
            for c in kept.chars() {
                let i = rest.find(c);
                prop_assert!(i.is_some());
                rest = &rest[i.unwrap_or(0) + c.len_utf8()..];
            }
        }

        #[test]
        fn printable_text_is_unchanged(s in "[^\\p{Cc}\\p{Cf}\\p{Zl}\\p{Zp}]*") {
            prop_assert_eq!(escape_controls(&s), s);
        }
    }
}
