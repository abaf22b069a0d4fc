//! Semantic diff of two init-data documents: per container, per field.
//!
//! Lists whose order does not matter are compared as sets; lists of named
//! things (containers, env rules, mounts) are matched by name; argv is
//! compared in order. Whitespace, key order and quoting never show up.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use crate::initdata::{InitData, POLICY_KEY};
use crate::rego::{POLICY_DATA_MARKER, extract_policy_json};

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added {
        path: String,
        value: String,
    },
    Removed {
        path: String,
        value: String,
    },
    Changed {
        path: String,
        old: String,
        new: String,
    },
}

impl Change {
    /// The path of the changed field, e.g. `policy.containers["api"].env["DB_HOST"].value`.
    pub fn path(&self) -> &str {
        match self {
            Change::Added { path, .. }
            | Change::Removed { path, .. }
            | Change::Changed { path, .. } => path,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added { path, value } => write!(f, "+ {path}: {value}"),
            Change::Removed { path, value } => write!(f, "- {path}: {value}"),
            Change::Changed { path, old, new } => write!(f, "~ {path}: {old} -> {new}"),
        }
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// Field used to match elements of a list of objects, if all elements have it uniquely.
fn list_key(items: &[Value]) -> Option<&'static str> {
    for key in ["name", "destination"] {
        let keys: Option<Vec<&str>> = items
            .iter()
            .map(|i| i.get(key).and_then(Value::as_str))
            .collect();
        if let Some(keys) = keys {
            let unique: BTreeSet<&str> = keys.iter().copied().collect();
            if unique.len() == keys.len() && !keys.is_empty() {
                return Some(key);
            }
        }
    }
    None
}

/// One entry of an object or a keyed list, present on either side or both.
fn diff_entry(path: String, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<Change>) {
    match (a, b) {
        (Some(va), Some(vb)) => diff_value(&path, va, vb, out),
        (Some(va), None) => out.push(Change::Removed {
            path,
            value: show(va),
        }),
        (None, Some(vb)) => out.push(Change::Added {
            path,
            value: show(vb),
        }),
        (None, None) => {}
    }
}

fn diff_value(path: &str, a: &Value, b: &Value, out: &mut Vec<Change>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                diff_entry(format!("{path}.{k}"), x.get(k), y.get(k), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if !path.ends_with(".args") => {
            let key = match (list_key(x), list_key(y)) {
                (Some(a), Some(b)) if a == b => Some(a),
                (Some(a), None) if y.is_empty() => Some(a),
                (None, Some(b)) if x.is_empty() => Some(b),
                _ => None,
            };
            if let Some(key) = key {
                let index = |items: &[Value]| -> BTreeMap<String, Value> {
                    items
                        .iter()
                        .filter_map(|i| {
                            i.get(key)
                                .and_then(Value::as_str)
                                .map(|k| (k.to_string(), i.clone()))
                        })
                        .collect()
                };
                let (ix, iy) = (index(x), index(y));
                if ix.len() == x.len() && iy.len() == y.len() {
                    let keys: BTreeSet<&String> = ix.keys().chain(iy.keys()).collect();
                    for k in keys {
                        diff_entry(format!("{path}[{k:?}]"), ix.get(k), iy.get(k), out);
                    }
                    return;
                }
            }
            // Order-insensitive list: report removed and added elements.
            let sa: BTreeSet<String> = x.iter().map(show).collect();
            let sb: BTreeSet<String> = y.iter().map(show).collect();
            for v in sa.difference(&sb) {
                out.push(Change::Removed {
                    path: path.to_string(),
                    value: v.clone(),
                });
            }
            for v in sb.difference(&sa) {
                out.push(Change::Added {
                    path: path.to_string(),
                    value: v.clone(),
                });
            }
        }
        _ => {
            if a != b {
                out.push(Change::Changed {
                    path: path.to_string(),
                    old: show(a),
                    new: show(b),
                });
            }
        }
    }
}

fn rules_text(policy: &str) -> &str {
    match policy.rfind(POLICY_DATA_MARKER) {
        Some(i) => &policy[..i],
        None => policy,
    }
}

fn toml_json(text: &str) -> Option<Value> {
    let v: toml::Table = toml::from_str(text).ok()?;
    serde_json::to_value(v).ok()
}

/// The semantic differences from `a` to `b`.
pub fn diff_init_data(a: &InitData, b: &InitData) -> Vec<Change> {
    let mut out = Vec::new();
    if a.algorithm != b.algorithm {
        out.push(Change::Changed {
            path: "algorithm".into(),
            old: a.algorithm.to_string(),
            new: b.algorithm.to_string(),
        });
    }
    let keys: BTreeSet<&String> = a.data.keys().chain(b.data.keys()).collect();
    for k in keys {
        let p = format!("data[{k:?}]");
        let (va, vb) = match (a.data.get(k), b.data.get(k)) {
            (Some(va), Some(vb)) => (va, vb),
            (Some(_), None) => {
                out.push(Change::Removed {
                    path: p,
                    value: "(entry)".into(),
                });
                continue;
            }
            (None, Some(_)) => {
                out.push(Change::Added {
                    path: p,
                    value: "(entry)".into(),
                });
                continue;
            }
            (None, None) => continue,
        };
        if va == vb {
            continue;
        }
        if k == POLICY_KEY {
            if rules_text(va).trim() != rules_text(vb).trim() {
                out.push(Change::Changed {
                    path: "policy.rules".into(),
                    old: "(rules text)".into(),
                    new: "(different rules text)".into(),
                });
            }
            match (extract_policy_json(va), extract_policy_json(vb)) {
                (Ok(ja), Ok(jb)) => diff_value("policy", &ja, &jb, &mut out),
                _ => out.push(Change::Changed {
                    path: "policy".into(),
                    old: "(policy text)".into(),
                    new: "(different policy text)".into(),
                }),
            }
        } else if let (Some(ja), Some(jb)) = (toml_json(va), toml_json(vb)) {
            diff_value(&p, &ja, &jb, &mut out);
        } else {
            out.push(Change::Changed {
                path: p,
                old: "(text)".into(),
                new: "(different text)".into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keyed_lists_and_sets() {
        let a = json!({"containers": [{"name": "api", "args": ["a", "b"], "env": [{"name": "X", "value": "1"}], "signals": [9, 15]}]});
        let b = json!({"containers": [{"name": "api", "args": ["b", "a"], "env": [{"name": "X", "value": "2"}], "signals": [15, 9, 3]}]});
        let mut out = Vec::new();
        diff_value("policy", &a, &b, &mut out);
        let text: Vec<String> = out.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            text,
            vec![
                r#"~ policy.containers["api"].args: ["a","b"] -> ["b","a"]"#,
                r#"~ policy.containers["api"].env["X"].value: "1" -> "2""#,
                r#"+ policy.containers["api"].signals: 3"#,
            ]
        );
    }
}
