//! The part of XML-DSig NVIDIA's RIMs use: one enveloped signature over the
//! whole document, Canonical XML 1.1 without comments (W3C
//! `xml-c14n11`), SHA-384 digest, ECDSA P-384 signature, the signer's
//! X.509 chain in `KeyInfo`. Anything else is refused, not interpreted.
//!
//! Canonicalization here covers what a RIM can contain (elements,
//! attributes, namespaces, text, processing instructions; no DTD, so no
//! entity or default-attribute processing, and no `xml:*` attribute
//! inheritance, which C14N 1.1 only changes for document subsets that
//! leave out an ancestor's `xml:*` attributes).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use der::Decode;
use p384::ecdsa::Signature;
use roxmltree::{Document, Node, NodeId};
use sha2::{Digest, Sha384};
use x509_cert::Certificate;

use super::certs;
use crate::error::{Error, Result};

/// Check named by every refusal of the signature itself.
const CHECK: &str = "nvidia.rim_signature";

/// W3C XML-DSig namespace.
pub const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
/// Canonical XML 1.1 (without comments).
pub const C14N11: &str = "http://www.w3.org/2006/12/xml-c14n11";
/// The enveloped-signature transform.
pub const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
/// ECDSA with SHA-384.
pub const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
/// SHA-384 digest.
pub const SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";

/// Namespace bindings already rendered by the nearest output ancestor:
/// prefix (`""` for the default namespace) → URI.
type Rendered<'a> = BTreeMap<&'a str, &'a str>;

/// The canonical form of the whole document, leaving out the subtree at
/// `skip` (the enveloped signature).
pub fn canonical_document(doc: &Document<'_>, skip: Option<NodeId>) -> String {
    let mut out = String::new();
    let root = doc.root();
    let mut seen_element = false;
    for child in root.children() {
        if child.is_element() {
            element(child, skip, &Rendered::new(), doc.input_text(), &mut out);
            seen_element = true;
        } else if child.is_pi() {
            // Processing instructions outside the document element are
            // separated from it by a line feed.
            if seen_element {
                out.push('\n');
            }
            pi(child, &mut out);
            if !seen_element {
                out.push('\n');
            }
        }
    }
    out
}

/// The canonical form of the subtree at `node` as a document subset (its
/// ancestors' namespace bindings are rendered on it).
pub fn canonical_subtree(node: Node<'_, '_>) -> String {
    let mut out = String::new();
    element(
        node,
        None,
        &Rendered::new(),
        node.document().input_text(),
        &mut out,
    );
    out
}

fn pi(node: Node<'_, '_>, out: &mut String) {
    if let Some(p) = node.pi() {
        out.push_str("<?");
        out.push_str(p.target);
        if let Some(v) = p.value {
            out.push(' ');
            out.push_str(v);
        }
        out.push_str("?>");
    }
}

/// The qualified name as written in the source: `<ns0:Resource ...` gives
/// `ns0:Resource`.
fn element_qname<'a>(node: Node<'_, '_>, src: &'a str) -> &'a str {
    let raw = src.get(node.range()).unwrap_or_default();
    let raw = raw.strip_prefix('<').unwrap_or(raw);
    let end = raw
        .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
        .unwrap_or(raw.len());
    &raw[..end]
}

fn element<'a>(
    node: Node<'a, 'a>,
    skip: Option<NodeId>,
    parent: &Rendered<'a>,
    src: &'a str,
    out: &mut String,
) {
    if Some(node.id()) == skip {
        return;
    }
    let qname = element_qname(node, src);
    out.push('<');
    out.push_str(qname);

    // Namespace bindings in scope here that the output ancestor did not
    // already render, default namespace first, then by prefix.
    let mut rendered = parent.clone();
    let in_scope: Rendered<'a> = node
        .namespaces()
        .filter(|ns| ns.name() != Some("xml"))
        .map(|ns| (ns.name().unwrap_or(""), ns.uri()))
        .collect();
    // The default namespace is rendered when it differs from the output
    // ancestor's (absent counts as empty, so `xmlns=""` only undoes one).
    let default = in_scope.get("").copied().unwrap_or("");
    if default != parent.get("").copied().unwrap_or("") {
        out.push_str(" xmlns=\"");
        escape_attr(default, out);
        out.push('"');
        rendered.insert("", default);
    }
    for (prefix, uri) in in_scope.iter().filter(|(p, _)| !p.is_empty()) {
        if parent.get(prefix) == Some(uri) {
            continue;
        }
        out.push_str(" xmlns:");
        out.push_str(prefix);
        out.push_str("=\"");
        escape_attr(uri, out);
        out.push('"');
        rendered.insert(prefix, uri);
    }

    let mut attrs: Vec<_> = node.attributes().collect();
    attrs.sort_by(|a, b| {
        (a.namespace().unwrap_or(""), a.name()).cmp(&(b.namespace().unwrap_or(""), b.name()))
    });
    for a in attrs {
        out.push(' ');
        out.push_str(src.get(a.range_qname()).unwrap_or(a.name()));
        out.push_str("=\"");
        escape_attr(a.value(), out);
        out.push('"');
    }
    out.push('>');

    for child in node.children() {
        if child.is_element() {
            element(child, skip, &rendered, src, out);
        } else if child.is_text() {
            escape_text(child.text().unwrap_or_default(), out);
        } else if child.is_pi() {
            pi(child, out);
        }
    }
    out.push_str("</");
    out.push_str(qname);
    out.push('>');
}

fn dsig<'a, 'i>(n: Node<'a, 'i>, local: &str) -> bool {
    n.is_element() && n.tag_name().name() == local && n.tag_name().namespace() == Some(DSIG_NS)
}

/// The only `ds:<local>` child of `parent`.
fn one<'a, 'i>(parent: Node<'a, 'i>, local: &str) -> Result<Node<'a, 'i>> {
    let mut it = parent.children().filter(|n| dsig(*n, local));
    match (it.next(), it.next()) {
        (Some(n), None) => Ok(n),
        (None, _) => Err(Error::refused(
            CHECK,
            format!("the signature has no ds:{local}"),
        )),
        (Some(_), Some(_)) => Err(Error::refused(
            CHECK,
            format!("the signature has more than one ds:{local}"),
        )),
    }
}

fn algorithm<'a>(n: Node<'a, '_>) -> &'a str {
    n.attribute("Algorithm").unwrap_or_default()
}

fn require_alg(what: &str, n: Node<'_, '_>, want: &str) -> Result<()> {
    let got = algorithm(n);
    if got == want {
        return Ok(());
    }
    Err(Error::mismatch(
        CHECK,
        format!("unsupported {what}"),
        want,
        got.to_string(),
    ))
}

fn base64_text(n: Node<'_, '_>, what: &str) -> Result<Vec<u8>> {
    let text: String = n
        .text()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    B64.decode(text)
        .map_err(|e| Error::malformed("NVIDIA RIM", format!("{what}: base64: {e}")))
}

/// Verify the document's enveloped signature: exactly one `ds:Signature`
/// child of the root element, C14N 1.1, one reference to the whole
/// document with the enveloped-signature and C14N 1.1 transforms, a
/// SHA-384 digest and an ECDSA P-384 signature by the first certificate in
/// `KeyInfo`. Returns the certificates of `KeyInfo` (signer first); their
/// chain is for the caller to verify.
pub fn verify_enveloped(doc: &Document<'_>) -> Result<Vec<Certificate>> {
    let root = doc.root_element();
    let sigs: Vec<Node<'_, '_>> = doc
        .descendants()
        .filter(|n| dsig(*n, "Signature"))
        .collect();
    let sig = match sigs.as_slice() {
        [s] if s.parent() == Some(root) => *s,
        [] => {
            return Err(Error::refused(
                CHECK,
                "the RIM is not signed (no ds:Signature)",
            ));
        }
        [_] => {
            return Err(Error::refused(
                CHECK,
                "ds:Signature is not a child of the document element",
            ));
        }
        _ => {
            return Err(Error::refused(
                CHECK,
                format!(
                    "the RIM has {} ds:Signature elements, expected one",
                    sigs.len()
                ),
            ));
        }
    };
    let signed_info = one(sig, "SignedInfo")?;
    require_alg(
        "canonicalization",
        one(signed_info, "CanonicalizationMethod")?,
        C14N11,
    )?;
    require_alg(
        "signature method",
        one(signed_info, "SignatureMethod")?,
        ECDSA_SHA384,
    )?;
    let reference = one(signed_info, "Reference")?;
    if reference.attribute("URI") != Some("") {
        return Err(Error::mismatch(
            CHECK,
            "the signature does not reference the whole document",
            "URI=\"\"",
            format!("URI={:?}", reference.attribute("URI")),
        ));
    }
    let transforms: Vec<&str> = one(reference, "Transforms")?
        .children()
        .filter(|n| dsig(*n, "Transform"))
        .map(algorithm)
        .collect();
    if transforms != [ENVELOPED, C14N11] {
        return Err(Error::mismatch(
            CHECK,
            "unsupported transforms",
            format!("{ENVELOPED}, {C14N11}"),
            transforms.join(", "),
        ));
    }
    require_alg("digest method", one(reference, "DigestMethod")?, SHA384)?;
    let signed_digest = base64_text(one(reference, "DigestValue")?, "DigestValue")?;
    let digest = Sha384::digest(canonical_document(doc, Some(sig.id())).as_bytes());
    if digest[..] != signed_digest[..] {
        return Err(Error::mismatch(
            CHECK,
            "the RIM's content does not match the digest its signature covers",
            hex::encode(&signed_digest),
            hex::encode(digest),
        ));
    }

    let certs_der: Vec<Vec<u8>> = one(one(sig, "KeyInfo")?, "X509Data")?
        .children()
        .filter(|n| dsig(*n, "X509Certificate"))
        .map(|n| base64_text(n, "X509Certificate"))
        .collect::<Result<_>>()?;
    let chain: Vec<Certificate> = certs_der
        .iter()
        .map(|d| {
            Certificate::from_der(d)
                .map_err(|e| Error::malformed("NVIDIA RIM", format!("X509Certificate: {e}")))
        })
        .collect::<Result<_>>()?;
    let signer = chain
        .first()
        .ok_or_else(|| Error::refused(CHECK, "KeyInfo holds no certificate"))?;
    let key = certs::p384_key(CHECK, signer)?;
    let value = base64_text(one(sig, "SignatureValue")?, "SignatureValue")?;
    let verified = Signature::from_slice(&value).is_ok_and(|s| {
        crate::ecdsa::EcdsaKey::p384(&key)
            .verify_p384(canonical_subtree(signed_info).as_bytes(), &s)
    });
    if !verified {
        return Err(Error::refused(
            CHECK,
            format!(
                "the RIM's ECDSA P-384 signature does not verify with the key of {:?}",
                certs::subject_cn(signer)
            ),
        ));
    }
    Ok(chain)
}

fn escape_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

fn escape_attr(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_c14n_reproduces_fixture_rim_digests() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/nvidia/rims/"
        );
        for name in [
            "Driver_RIM_test_no_gpu.swidtag",
            "1010_0200_882_96005E0001_PROD.swidtag",
        ] {
            let text = std::fs::read_to_string(format!("{dir}{name}")).unwrap();
            let doc = Document::parse(&text).unwrap();
            let sig = doc
                .descendants()
                .find(|n| {
                    n.tag_name().name() == "Signature" && n.tag_name().namespace() == Some(DSIG_NS)
                })
                .unwrap();
            let want = doc
                .descendants()
                .find(|n| n.tag_name().name() == "DigestValue")
                .and_then(|n| n.text())
                .unwrap();
            let got = B64.encode(Sha384::digest(
                canonical_document(&doc, Some(sig.id())).as_bytes(),
            ));
            assert_eq!(got, want.trim(), "{name}");
        }
    }
}
