//! The command line containerd starts a shim v2 binary with (Go `flag`
//! syntax): `-namespace NS -address SOCK -publish-binary BIN [-debug]
//! -id ID [-bundle DIR] [-socket ADDR] start|delete`, or without an action
//! to serve (our own `start` re-executes the binary that way).

/// Parsed shim flags.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    pub namespace: String,
    pub id: String,
    pub address: String,
    pub publish_binary: String,
    pub bundle: String,
    pub socket: String,
    pub debug: bool,
    /// `start`, `delete`, or empty (serve).
    pub action: String,
}

/// A command line containerd would not produce.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error(
        "unknown flag {0:?} (containerd's shim v2 flags: -namespace -id -address -publish-binary -bundle -socket -debug -v)"
    )]
    Unknown(String),
    #[error("flag {0} needs a value")]
    MissingValue(String),
    #[error("unknown action {0:?}: expected start, delete, or none (serve)")]
    Action(String),
}

/// Parse `args` (without the program name).
pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Flags, ArgsError> {
    let mut f = Flags::default();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_ref();
        i += 1;
        let Some(flag) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            if !f.action.is_empty() || !matches!(a, "start" | "delete") {
                return Err(ArgsError::Action(a.into()));
            }
            f.action = a.into();
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        if name == "debug" || name == "v" {
            let on = inline.as_deref().is_none_or(|v| v == "true" || v == "1");
            if name == "debug" {
                f.debug = on;
            }
            continue;
        }
        let slot = match name {
            "namespace" => &mut f.namespace,
            "id" => &mut f.id,
            "address" => &mut f.address,
            "publish-binary" => &mut f.publish_binary,
            "bundle" => &mut f.bundle,
            "socket" => &mut f.socket,
            _ => return Err(ArgsError::Unknown(a.into())),
        };
        *slot = match inline {
            Some(v) => v,
            None => {
                let v = args
                    .get(i)
                    .ok_or_else(|| ArgsError::MissingValue(format!("-{name}")))?;
                i += 1;
                v.as_ref().to_string()
            }
        };
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_start_line() {
        let f = parse(&[
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-debug",
            "-id",
            "abc",
            "start",
        ])
        .unwrap();
        assert_eq!(f.namespace, "k8s.io");
        assert_eq!(f.id, "abc");
        assert!(f.debug);
        assert_eq!(f.action, "start");
    }

    #[test]
    fn delete_with_bundle_and_equals_form() {
        let f = parse(&["--namespace=default", "-id", "x", "-bundle=/b", "delete"]).unwrap();
        assert_eq!(
            (f.namespace.as_str(), f.bundle.as_str(), f.action.as_str()),
            ("default", "/b", "delete")
        );
    }

    #[test]
    fn refuses_what_containerd_never_sends() {
        assert_eq!(
            parse(&["-bogus", "1"]),
            Err(ArgsError::Unknown("-bogus".into()))
        );
        assert_eq!(parse(&["-id"]), Err(ArgsError::MissingValue("-id".into())));
        assert_eq!(parse(&["run"]), Err(ArgsError::Action("run".into())));
    }
}
