//! ocicrypt layer encryption, interoperable with `skopeo copy
//! --encryption-key / --decryption-key` (Go `containers/ocicrypt`) and with
//! CoCo's ocicrypt-rs.
//!
//! Each layer gets a fresh 32-byte key and 16-byte nonce; the blob is
//! encrypted with AES-256-CTR (128-bit big-endian counter) and an
//! HMAC-SHA256 over the ciphertext, keyed with the same key, goes into the
//! public options. The private options (key, nonce, plaintext digest) are
//! wrapped for each recipient scheme ([`jwe`], [`kbs`]) into
//! `org.opencontainers.image.enc.keys.<scheme>` annotations.
//!
//! Decryption streams with bounded memory. Nothing decrypted is committed
//! before the HMAC and the plaintext digest have been checked at end of
//! stream: [`DecryptingReader`] fails at EOF otherwise, and the layout
//! writer only renames a finished blob into place after that.

pub mod jwe;
pub mod kbs;
pub mod keys;

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::mpsc;

use aes::cipher::{KeyIvInit, StreamCipher};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::digest::{Digest, DigestAlgorithm, Hasher};
use crate::layout::{BlobWriter, OciLayout};
use crate::progress::{NoProgress, Progress};
use crate::source::{BlobSource, SourceError};
use crate::spec::{Compression, Descriptor, Manifest, Platform, layer_kind, media_type};

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// Annotation prefix of wrapped keys.
pub const ANNOTATION_KEYS_PREFIX: &str = "org.opencontainers.image.enc.keys.";
/// Annotation holding the public options (cipher, HMAC).
pub const ANNOTATION_PUBOPTS: &str = "org.opencontainers.image.enc.pubopts";
/// The only layer cipher ocicrypt defines.
pub const CIPHER_AES_CTR_HMAC: &str = "AES_256_CTR_HMAC_SHA256";
/// Largest wrapped-options annotation accepted (per layer, all schemes).
pub const MAX_ANNOTATION_BYTES: usize = 1 << 20;

/// Why encryption or decryption failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    /// Getting or writing blobs failed (includes digest checks).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A key file or recipient is unusable.
    #[error("key: {0}")]
    Key(String),
    /// None of the given keys can decrypt a layer.
    #[error("no matching key: {0}")]
    NoKey(String),
    /// A document (JWE, options, packet) is malformed.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being parsed.
        what: String,
        /// Why it is refused.
        reason: String,
    },
    /// An integrity check failed.
    #[error("{check} check failed: {reason}")]
    Refused {
        /// The check.
        check: &'static str,
        /// Expected and actual values, or why.
        reason: String,
    },
    /// A bug or an impossible state (never caused by input).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl CryptError {
    /// Whether this is a failed integrity/authorization check (exit 1).
    pub fn is_refusal(&self) -> bool {
        match self {
            CryptError::Source(e) => e.is_refusal(),
            CryptError::Refused { .. } | CryptError::NoKey(_) => true,
            _ => false,
        }
    }

    fn from_io(context: &str, e: io::Error) -> Self {
        if e.get_ref().is_some_and(|i| i.is::<CryptError>()) {
            if let Some(Ok(c)) = e.into_inner().map(|i| i.downcast::<CryptError>()) {
                return *c;
            }
            return CryptError::Internal("lost error");
        }
        CryptError::Source(SourceError::from_io(context, e))
    }
}

/// A recipient scheme that wraps the private options of a layer.
pub trait KeyWrapper {
    /// The annotation the wrapped blob goes under.
    fn annotation_key(&self) -> String;
    /// Wrap `private_opts` (JSON) into the annotation blob (before base64).
    fn wrap(&self, private_opts: &[u8]) -> Result<Vec<u8>, CryptError>;
}

/// A recipient scheme that unwraps private options.
pub trait KeyUnwrapper {
    /// The annotation it reads.
    fn annotation_key(&self) -> String;
    /// Unwrap one annotation blob (after base64); `None` when it is for
    /// someone else.
    fn unwrap(&self, blob: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, CryptError>;
}

/// The per-layer secret: what recipients wrap.
pub struct PrivateOptions {
    /// The AES-256 and HMAC key.
    pub symkey: Zeroizing<[u8; 32]>,
    /// The CTR nonce (initial counter block).
    pub nonce: [u8; 16],
    /// Digest of the plaintext blob.
    pub digest: Digest,
}

impl PrivateOptions {
    fn fresh(digest: Digest) -> Self {
        let mut symkey = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut symkey[..]);
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        PrivateOptions {
            symkey,
            nonce,
            digest,
        }
    }

    /// The layer cipher (AES-256-CTR from the nonce) and the HMAC-SHA256
    /// over the ciphertext, both keyed with `symkey`.
    fn cipher_and_mac(&self) -> Result<(Aes256Ctr, HmacSha256), CryptError> {
        let cipher = Aes256Ctr::new(&(*self.symkey).into(), &self.nonce.into());
        let mac = <HmacSha256 as Mac>::new_from_slice(&self.symkey[..])
            .map_err(|_| CryptError::Internal("HMAC key"))?;
        Ok((cipher, mac))
    }

    /// The JSON ocicrypt wraps: `{"symkey","digest","cipheroptions":{"nonce"}}`.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let key = Zeroizing::new(B64.encode(&self.symkey[..]));
        Zeroizing::new(
            format!(
                r#"{{"symkey":"{}","digest":"{}","cipheroptions":{{"nonce":"{}"}}}}"#,
                &*key,
                self.digest,
                B64.encode(self.nonce)
            )
            .into_bytes(),
        )
    }

    /// Parse unwrapped private options.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CryptError> {
        #[derive(serde::Deserialize)]
        struct Raw {
            symkey: String,
            digest: Digest,
            #[serde(default)]
            cipheroptions: BTreeMap<String, String>,
        }
        let bad = |r: String| CryptError::Malformed {
            what: "layer private options".into(),
            reason: r,
        };
        let mut raw: Raw = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let decoded = B64.decode(&raw.symkey);
        raw.symkey.zeroize();
        let key = Zeroizing::new(decoded.map_err(|e| bad(format!("symkey: {e}")))?);
        if key.len() != 32 {
            return Err(bad(format!("symkey of {} bytes (expected 32)", key.len())));
        }
        let nonce = raw
            .cipheroptions
            .get("nonce")
            .ok_or_else(|| bad("cipheroptions.nonce missing".into()))?;
        let nonce: [u8; 16] = B64
            .decode(nonce)
            .map_err(|e| bad(format!("nonce: {e}")))?
            .try_into()
            .map_err(|_| bad("nonce is not 16 bytes".into()))?;
        let mut symkey = Zeroizing::new([0u8; 32]);
        symkey.copy_from_slice(&key);
        Ok(PrivateOptions {
            symkey,
            nonce,
            digest: raw.digest,
        })
    }
}

/// Public options: cipher and HMAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicOptions {
    /// HMAC-SHA256 of the ciphertext.
    pub hmac: Vec<u8>,
}

impl PublicOptions {
    fn to_annotation(&self) -> String {
        B64.encode(format!(
            r#"{{"cipher":"{CIPHER_AES_CTR_HMAC}","hmac":"{}","cipheroptions":{{}}}}"#,
            B64.encode(&self.hmac)
        ))
    }

    /// The public options of the encrypted `layer` (its pubopts annotation).
    pub fn of_layer(layer: &Descriptor) -> Result<Self, CryptError> {
        let value =
            layer
                .annotations
                .get(ANNOTATION_PUBOPTS)
                .ok_or_else(|| CryptError::Malformed {
                    what: format!("layer {}", layer.digest),
                    reason: format!("encrypted layer without {ANNOTATION_PUBOPTS}"),
                })?;
        Self::from_annotation(value)
    }

    /// Check the HMAC over the whole ciphertext (in constant time).
    fn check_hmac(&self, mac: HmacSha256) -> Result<(), CryptError> {
        mac.verify_slice(&self.hmac).map_err(|_| CryptError::Refused {
            check: "layer HMAC",
            reason: "the ciphertext's HMAC-SHA256 differs from the one in pubopts (tampered layer or wrong key)".into(),
        })
    }

    /// Parse the `org.opencontainers.image.enc.pubopts` annotation (base64 JSON).
    pub fn from_annotation(value: &str) -> Result<Self, CryptError> {
        #[derive(serde::Deserialize)]
        struct Raw {
            cipher: String,
            hmac: String,
        }
        let bad = |r: String| CryptError::Malformed {
            what: "layer public options".into(),
            reason: r,
        };
        if value.len() > MAX_ANNOTATION_BYTES {
            return Err(bad("too large".into()));
        }
        let json = B64.decode(value).map_err(|e| bad(e.to_string()))?;
        let raw: Raw = serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
        if raw.cipher != CIPHER_AES_CTR_HMAC {
            return Err(bad(format!(
                "cipher {:?} (expected {CIPHER_AES_CTR_HMAC:?})",
                raw.cipher
            )));
        }
        let hmac = B64
            .decode(&raw.hmac)
            .map_err(|e| bad(format!("hmac: {e}")))?;
        if hmac.len() != 32 {
            return Err(bad(format!("hmac of {} bytes (expected 32)", hmac.len())));
        }
        Ok(PublicOptions { hmac })
    }
}

const CHUNK: usize = 1 << 20;

/// Encrypt one layer blob from `source` into `dst`; returns the encrypted
/// layer's descriptor (media type `…+encrypted`, key annotations).
pub fn encrypt_layer(
    source: &dyn BlobSource,
    layer: &Descriptor,
    dst: &OciLayout,
    wrappers: &[&dyn KeyWrapper],
) -> Result<Descriptor, CryptError> {
    let kind = layer_kind(&layer.media_type).ok_or_else(|| CryptError::Malformed {
        what: format!("layer {}", layer.digest),
        reason: format!("media type {:?} is not a tar layer", layer.media_type),
    })?;
    if kind.encrypted {
        return Err(CryptError::Malformed {
            what: format!("layer {}", layer.digest),
            reason: "already encrypted".into(),
        });
    }
    if wrappers.is_empty() {
        return Err(CryptError::Key("no recipients given".into()));
    }
    let opts = PrivateOptions::fresh(layer.digest.clone());
    let (mut cipher, mut mac) = opts.cipher_and_mac()?;
    let mut input = source.open_blob(layer)?;
    let mut out = dst.blob_writer()?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut input, &mut buf)
            .map_err(|e| CryptError::from_io(&format!("reading layer {}", layer.digest), e))?;
        if n == 0 {
            break;
        }
        cipher.apply_keystream(&mut buf[..n]);
        mac.update(&buf[..n]);
        io::Write::write_all(&mut out, &buf[..n])
            .map_err(|e| CryptError::from_io("writing encrypted layer", e))?;
    }
    let hmac = mac.finalize().into_bytes().to_vec();
    let mut desc = out.commit(&format!(
        "{}{}",
        layer.media_type,
        media_type::ENCRYPTED_SUFFIX
    ))?;
    desc.annotations = layer.annotations.clone();
    desc.extra = layer.extra.clone();
    let private = opts.to_json();
    for w in wrappers {
        let blob = w.wrap(&private)?;
        let key = w.annotation_key();
        let value = B64.encode(blob);
        let entry = desc.annotations.entry(key).or_default();
        if !entry.is_empty() {
            entry.push(',');
        }
        entry.push_str(&value);
    }
    desc.annotations.insert(
        ANNOTATION_PUBOPTS.into(),
        PublicOptions { hmac }.to_annotation(),
    );
    Ok(desc)
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Find and unwrap the private options of an encrypted layer.
pub fn unwrap_options(
    layer: &Descriptor,
    unwrappers: &[&dyn KeyUnwrapper],
) -> Result<PrivateOptions, CryptError> {
    let mut schemes = Vec::new();
    for (k, _) in layer
        .annotations
        .range(ANNOTATION_KEYS_PREFIX.to_string()..)
    {
        if !k.starts_with(ANNOTATION_KEYS_PREFIX) {
            break;
        }
        schemes.push(k.trim_start_matches(ANNOTATION_KEYS_PREFIX).to_string());
    }
    for u in unwrappers {
        let Some(value) = layer.annotations.get(&u.annotation_key()) else {
            continue;
        };
        if value.len() > MAX_ANNOTATION_BYTES {
            return Err(CryptError::Malformed {
                what: u.annotation_key(),
                reason: format!("{} bytes (at most {MAX_ANNOTATION_BYTES})", value.len()),
            });
        }
        for part in value.split(',') {
            let blob = B64.decode(part).map_err(|e| CryptError::Malformed {
                what: u.annotation_key(),
                reason: format!("base64: {e}"),
            })?;
            if let Some(opts) = u.unwrap(&blob)? {
                return PrivateOptions::from_json(&opts);
            }
        }
    }
    Err(CryptError::NoKey(format!(
        "layer {} is encrypted for schemes [{}] and none of the given keys unwraps it",
        layer.digest,
        schemes.join(", ")
    )))
}

/// Streams the plaintext of an encrypted layer. Fails with `InvalidData`
/// (carrying a [`CryptError`]) at end of stream unless the ciphertext
/// matches its descriptor, the HMAC matches the public options and the
/// plaintext matches the wrapped digest: treat every byte as untrusted
/// until `read` has returned 0.
pub struct DecryptingReader<'a> {
    inner: Box<dyn Read + 'a>,
    cipher: Aes256Ctr,
    mac: Option<HmacSha256>,
    public: PublicOptions,
    plain: Option<Hasher>,
    expected_plain: Digest,
    plain_len: u64,
}

impl<'a> DecryptingReader<'a> {
    /// Open `layer` from `source` and unwrap its key with `unwrappers`.
    pub fn open(
        source: &'a dyn BlobSource,
        layer: &Descriptor,
        unwrappers: &[&dyn KeyUnwrapper],
    ) -> Result<Self, CryptError> {
        let public = PublicOptions::of_layer(layer)?;
        let opts = unwrap_options(layer, unwrappers)?;
        let (cipher, mac) = opts.cipher_and_mac()?;
        let inner = source.open_blob(layer)?;
        Ok(DecryptingReader {
            inner,
            cipher,
            mac: Some(mac),
            public,
            plain: Some(Hasher::new(opts.digest.algorithm())),
            expected_plain: opts.digest,
            plain_len: 0,
        })
    }

    /// Digest of the plaintext the layer must decrypt to.
    pub fn plaintext_digest(&self) -> &Digest {
        &self.expected_plain
    }

    /// The caller checks the *uncompressed* stream of this (compressed)
    /// layer against `diff_id`. When the private options name that digest,
    /// as containers/image writes them after compressing a layer before
    /// encrypting it, the caller's check replaces the blob digest check.
    /// Any other digest keeps the blob check.
    pub fn uncompressed_digest_checked_by_caller(&mut self, diff_id: &Digest) {
        if *diff_id == self.expected_plain {
            self.plain = None;
        }
    }

    fn fail(e: CryptError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl Read for DecryptingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(mac) = self.mac.as_mut() else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            mac.update(&buf[..n]);
            self.cipher.apply_keystream(&mut buf[..n]);
            if let Some(h) = self.plain.as_mut() {
                h.update(&buf[..n]);
            }
            self.plain_len += n as u64;
            return Ok(n);
        }
        // End of stream: the inner reader has verified the ciphertext digest.
        let mac = self
            .mac
            .take()
            .ok_or_else(|| Self::fail(CryptError::Internal("mac")))?;
        self.public.check_hmac(mac).map_err(Self::fail)?;
        // No hasher: the caller checks the uncompressed stream instead.
        let Some(actual) = self.plain.take().map(Hasher::finish) else {
            return Ok(0);
        };
        if actual != self.expected_plain {
            return Err(Self::fail(CryptError::Refused {
                check: "decrypted layer digest",
                reason: format!("expected {}, got {actual}", self.expected_plain),
            }));
        }
        Ok(0)
    }
}

/// Chunks in flight between the two decryption stages (bounds memory to
/// `(PIPELINE_DEPTH + 2) × CHUNK`).
const PIPELINE_DEPTH: usize = 4;

/// Decrypt one layer into `dst`; returns the plaintext layer's descriptor.
/// The blob appears in `dst` only if every check passed: the ciphertext's
/// digest and size, the HMAC, then the plaintext digest.
///
/// Two stages on two threads, so both cores work: this thread reads the
/// ciphertext (hashing it against its descriptor) and feeds the HMAC; a
/// worker decrypts and writes the plaintext into a temporary blob (hashing
/// it). The temporary blob is discarded unless every check passes.
pub fn decrypt_layer(
    source: &dyn BlobSource,
    layer: &Descriptor,
    dst: &OciLayout,
    unwrappers: &[&dyn KeyUnwrapper],
) -> Result<Descriptor, CryptError> {
    let base_type = layer
        .media_type
        .strip_suffix(media_type::ENCRYPTED_SUFFIX)
        .ok_or_else(|| CryptError::Malformed {
            what: format!("layer {}", layer.digest),
            reason: format!("media type {:?} is not encrypted", layer.media_type),
        })?
        .to_string();
    let public = PublicOptions::of_layer(layer)?;
    let opts = unwrap_options(layer, unwrappers)?;
    if opts.digest.algorithm() != DigestAlgorithm::Sha256 {
        return Err(CryptError::Malformed {
            what: format!("layer {}", layer.digest),
            reason: "plaintext digest must be sha256".into(),
        });
    }
    let (mut cipher, mut mac) = opts.cipher_and_mac()?;
    let mut input = source.open_blob(layer)?;
    let out = dst.blob_writer()?;
    let context = format!("decrypting layer {}", layer.digest);

    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(PIPELINE_DEPTH);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..PIPELINE_DEPTH + 1 {
        let _ = empty_tx.send(vec![0u8; CHUNK]);
    }
    let (read, written) = std::thread::scope(|s| {
        let worker = s.spawn(move || -> io::Result<BlobWriter> {
            let mut out = out;
            for (mut buf, n) in full_rx {
                cipher.apply_keystream(&mut buf[..n]);
                io::Write::write_all(&mut out, &buf[..n])?;
                // The reader may have stopped already; the buffer is then dropped.
                let _ = empty_tx.send(buf);
            }
            Ok(out)
        });
        let read = (|| -> io::Result<()> {
            // A closed channel means the worker failed; its error is reported.
            while let Ok(mut buf) = empty_rx.recv() {
                let n = read_full(&mut input, &mut buf)?;
                if n == 0 {
                    break;
                }
                mac.update(&buf[..n]);
                if full_tx.send((buf, n)).is_err() {
                    break;
                }
            }
            Ok(())
        })();
        drop(full_tx);
        let written = worker
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("decryption worker panicked")));
        (read, written)
    });
    read.map_err(|e| CryptError::from_io(&context, e))?;
    let out = written.map_err(|e| CryptError::from_io(&context, e))?;
    public.check_hmac(mac)?;
    let compression = layer_kind(&base_type).map(|k| k.compression);
    let mut desc = out.commit_if(&base_type, |actual, file| {
        if *actual == opts.digest {
            return Ok(());
        }
        // containers/image compresses an uncompressed layer before
        // encrypting it and records the *uncompressed* digest: check that.
        let uncompressed = match compression {
            Some(c @ (Compression::Gzip | Compression::Zstd)) => {
                Some(uncompressed_digest(file, c, opts.digest.algorithm())?)
            }
            _ => None,
        };
        if uncompressed.as_ref() == Some(&opts.digest) {
            return Ok(());
        }
        Err(CryptError::Refused {
            check: "decrypted layer digest",
            reason: format!(
                "expected {}, got {actual}{}",
                opts.digest,
                uncompressed
                    .map(|u| format!(" ({u} uncompressed)"))
                    .unwrap_or_default()
            ),
        })
    })?;
    desc.annotations = layer
        .annotations
        .iter()
        .filter(|(k, _)| !k.starts_with(ANNOTATION_KEYS_PREFIX) && *k != ANNOTATION_PUBOPTS)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    desc.extra = layer.extra.clone();
    Ok(desc)
}

/// Digest of the decompressed content of a compressed blob.
fn uncompressed_digest(
    file: &mut std::fs::File,
    compression: Compression,
    algorithm: DigestAlgorithm,
) -> Result<Digest, CryptError> {
    let what = "decompressing the decrypted layer";
    let blob = io::BufReader::with_capacity(CHUNK, file);
    let mut r: Box<dyn Read> = match compression {
        // Several gzip members are one stream, as Go's gzip reader reads them.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(crate::zstd::ZstdReader::new(blob)),
        Compression::None => Box::new(blob),
    };
    let limit = crate::unpack::UnpackLimits::default().max_bytes;
    let mut h = Hasher::new(algorithm);
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(|e| CryptError::from_io(what, e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > limit {
            return Err(CryptError::Malformed {
                what: "decrypted layer".into(),
                reason: format!("decompresses to more than {limit} bytes"),
            });
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// Which layers to encrypt.
#[derive(Debug, Clone, Default)]
pub enum LayerSelection {
    /// Every layer (skopeo's default).
    #[default]
    All,
    /// Only these indexes (negative counts from the top, as skopeo's
    /// `--encrypt-layer`).
    Indexes(Vec<i64>),
}

impl LayerSelection {
    fn includes(&self, i: usize, n: usize) -> bool {
        match self {
            LayerSelection::All => true,
            LayerSelection::Indexes(list) => list.iter().any(|&x| {
                let idx = if x < 0 { n as i64 + x } else { x };
                idx == i as i64
            }),
        }
    }
}

fn copy_blob(src: &OciLayout, dst: &OciLayout, desc: &Descriptor) -> Result<(), CryptError> {
    if src.root() == dst.root() && dst.has_blob(&desc.digest) {
        return Ok(());
    }
    let mut r = src.open_blob(desc)?;
    let got = dst.write_blob_from(&mut r, &desc.media_type)?;
    if got.digest != desc.digest {
        return Err(CryptError::Internal("copied blob digest changed"));
    }
    Ok(())
}

fn write_manifest(
    src: &OciLayout,
    dst: &OciLayout,
    mut manifest: Manifest,
    layers: Vec<Descriptor>,
    tag: &str,
) -> Result<Descriptor, CryptError> {
    copy_blob(src, dst, &manifest.config)?;
    manifest.layers = layers;
    if manifest.media_type.is_none() {
        manifest.media_type = Some(media_type::OCI_MANIFEST.into());
    }
    let mt = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| media_type::OCI_MANIFEST.into());
    let bytes = serde_json::to_vec(&manifest).map_err(|e| CryptError::Malformed {
        what: "manifest".into(),
        reason: e.to_string(),
    })?;
    let desc = dst.write_blob(&bytes, &mt)?;
    dst.set_tag(tag, desc.clone())?;
    Ok(desc)
}

/// Encrypt the image `src_tag` of `src` into `dst` as `dst_tag`; returns
/// the new manifest's descriptor.
pub fn encrypt_image(
    src: &OciLayout,
    src_tag: Option<&str>,
    dst: &OciLayout,
    dst_tag: &str,
    wrappers: &[&dyn KeyWrapper],
    selection: &LayerSelection,
) -> Result<Descriptor, CryptError> {
    encrypt_image_with_progress(src, src_tag, dst, dst_tag, wrappers, selection, &NoProgress)
}

/// [`encrypt_image`], reporting each layer to `progress`.
pub fn encrypt_image_with_progress(
    src: &OciLayout,
    src_tag: Option<&str>,
    dst: &OciLayout,
    dst_tag: &str,
    wrappers: &[&dyn KeyWrapper],
    selection: &LayerSelection,
    progress: &dyn Progress,
) -> Result<Descriptor, CryptError> {
    let img = src.resolve(src_tag, &Platform::linux_amd64())?;
    let n = img.layers().len();
    progress.total(img.layers().iter().map(|l| l.size).sum());
    let mut layers = Vec::with_capacity(n);
    for (i, layer) in img.layers().iter().enumerate() {
        progress.step(&format!("layer {}/{n}", i + 1));
        let kind = layer_kind(&layer.media_type);
        if selection.includes(i, n) && kind.is_some_and(|k| !k.encrypted) {
            layers.push(encrypt_layer(src, layer, dst, wrappers)?);
        } else {
            copy_blob(src, dst, layer)?;
            layers.push(layer.clone());
        }
        progress.advance(layer.size);
    }
    write_manifest(src, dst, img.manifest, layers, dst_tag)
}

/// Decrypt every encrypted layer of `src_tag` into `dst` as `dst_tag`;
/// returns the new manifest's descriptor. Nothing is tagged unless every
/// layer decrypted and verified.
pub fn decrypt_image(
    src: &OciLayout,
    src_tag: Option<&str>,
    dst: &OciLayout,
    dst_tag: &str,
    unwrappers: &[&dyn KeyUnwrapper],
) -> Result<Descriptor, CryptError> {
    decrypt_image_with_progress(src, src_tag, dst, dst_tag, unwrappers, &NoProgress)
}

/// [`decrypt_image`], reporting each layer to `progress`.
pub fn decrypt_image_with_progress(
    src: &OciLayout,
    src_tag: Option<&str>,
    dst: &OciLayout,
    dst_tag: &str,
    unwrappers: &[&dyn KeyUnwrapper],
    progress: &dyn Progress,
) -> Result<Descriptor, CryptError> {
    let img = src.resolve(src_tag, &Platform::linux_amd64())?;
    let n = img.layers().len();
    progress.total(img.layers().iter().map(|l| l.size).sum());
    let mut layers = Vec::with_capacity(n);
    for (i, layer) in img.layers().iter().enumerate() {
        progress.step(&format!("layer {}/{n}", i + 1));
        if layer_kind(&layer.media_type).is_some_and(|k| k.encrypted) {
            layers.push(decrypt_layer(src, layer, dst, unwrappers)?);
        } else {
            copy_blob(src, dst, layer)?;
            layers.push(layer.clone());
        }
        progress.advance(layer.size);
    }
    write_manifest(src, dst, img.manifest, layers, dst_tag)
}
