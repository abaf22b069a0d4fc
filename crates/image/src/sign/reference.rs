//! Docker references (`registry.example/ns/app:tag@sha256:…`), parsed and
//! normalized as `containers/image` does (`docker.io/library/busybox` for
//! `busybox`), for signature identities and policy scopes.

use std::fmt;

use crate::digest::Digest;

use super::SignError;

/// Longest repository name accepted (the distribution spec's limit).
const MAX_NAME_LEN: usize = 255;
/// Longest tag accepted.
const MAX_TAG_LEN: usize = 128;

/// A normalized docker reference: a repository with an optional tag and an
/// optional digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerReference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl DockerReference {
    /// Parse and normalize (`busybox` → `docker.io/library/busybox`).
    pub fn parse(s: &str) -> Result<Self, SignError> {
        let bad = |reason: String| SignError::Reference {
            reference: s.chars().take(300).collect(),
            reason,
        };
        if s.is_empty() || s.len() > 4096 {
            return Err(bad("must be 1 to 4096 bytes".into()));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| bad(e.to_string()))?),
            ),
            None => (s, None),
        };
        // A tag follows the last ':' after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            validate_tag(t).map_err(bad)?;
        }
        let (domain, path) = split_domain(name);
        if domain.is_empty() {
            return Err(bad("empty registry name".into()));
        }
        validate_domain(&domain).map_err(bad)?;
        validate_path(&path).map_err(bad)?;
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(bad(format!(
                "repository name longer than {MAX_NAME_LEN} bytes"
            )));
        }
        Ok(DockerReference {
            domain,
            path,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// The registry host (`docker.io`, `registry.example:5000`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry (`library/busybox`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `domain/path`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// Only a repository: neither tag nor digest.
    pub fn is_name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }

    /// The same repository with `digest` instead of any tag.
    pub fn with_digest(&self, digest: &Digest) -> Self {
        DockerReference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest.clone()),
        }
    }

    /// Policy scopes for this reference, most specific first:
    /// `repo:tag` or `repo@digest`, `repo`, each parent namespace, the
    /// registry, then `*.domain` wildcards.
    pub fn policy_scopes(&self) -> Vec<String> {
        let mut out = Vec::new();
        let repo = self.repository();
        if let Some(d) = &self.digest {
            out.push(format!("{repo}@{d}"));
        } else if let Some(t) = &self.tag {
            out.push(format!("{repo}:{t}"));
        }
        out.push(repo.clone());
        let mut ns = repo.as_str();
        while let Some(i) = ns.rfind('/') {
            ns = &ns[..i];
            out.push(ns.to_owned());
        }
        // Wildcards match the host without a port, from the most specific.
        let host = self.domain.split(':').next().unwrap_or("");
        let mut h = host;
        while let Some(i) = h.find('.') {
            out.push(format!("*.{}", &h[i + 1..]));
            h = &h[i + 1..];
        }
        out
    }
}

impl fmt::Display for DockerReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Split `name` into registry and path, applying Docker Hub defaults.
fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io".to_owned()
    } else {
        domain
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    (domain, path)
}

fn validate_tag(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= MAX_TAG_LEN
        && t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {:?} must be 1 to {MAX_TAG_LEN} of [A-Za-z0-9_.-], not starting with . or -",
            t.chars().take(200).collect::<String>()
        ))
    }
}

fn validate_domain(d: &str) -> Result<(), String> {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("registry port {p:?} is not a number"));
        }
    }
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if host_ok {
        Ok(())
    } else {
        Err(format!("registry {d:?} is not a host name"))
    }
}

fn validate_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("empty repository path".into());
    }
    for comp in p.split('/') {
        // [a-z0-9]+ separated by ".", "_", "__" or runs of "-".
        let bytes = comp.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let ok = bytes.first().copied().is_some_and(alnum)
            && bytes.last().copied().is_some_and(alnum)
            && bytes.iter().all(|&b| alnum(b) || b"._-".contains(&b))
            && !comp.contains("..")
            && !comp.contains("___")
            && !comp.contains("._")
            && !comp.contains("_.")
            && !comp.contains(".-")
            && !comp.contains("-.")
            && !comp.contains("_-")
            && !comp.contains("-_");
        if !ok {
            return Err(format!(
                "repository path component {:?} must be lowercase letters and digits separated by . _ __ or -",
                comp.chars().take(200).collect::<String>()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalizes_like_containers_image() {
        let r = DockerReference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox");
        assert!(r.is_name_only());
        let r = DockerReference::parse("ns/app:v1").unwrap();
        assert_eq!(r.to_string(), "docker.io/ns/app:v1");
        let r = DockerReference::parse("localhost:5000/app:v1").unwrap();
        assert_eq!(r.domain(), "localhost:5000");
        assert_eq!(r.path(), "app");
        assert_eq!(r.tag(), Some("v1"));
        let d = Digest::sha256(b"x");
        let r = DockerReference::parse(&format!("registry.example/a/b@{d}")).unwrap();
        assert_eq!(r.digest(), Some(&d));
        assert_eq!(r.repository(), "registry.example/a/b");
        assert_eq!(
            r.policy_scopes(),
            vec![
                format!("registry.example/a/b@{d}"),
                "registry.example/a/b".into(),
                "registry.example/a".into(),
                "registry.example".into(),
                "*.example".into(),
            ]
        );
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "UPPER/Case",
            "registry.example/App",
            "a//b",
            "a/b:",
            "a/b:-x",
            "a@sha256:abc",
            "host:port/x",
            "a/../b",
            "a/b c",
        ] {
            assert!(DockerReference::parse(bad).is_err(), "{bad} accepted");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,300}") {
            if let Ok(r) = DockerReference::parse(&s) {
                // Normalization is idempotent.
                let again = DockerReference::parse(&r.to_string()).unwrap();
                prop_assert_eq!(again, r);
            }
        }
    }
}
