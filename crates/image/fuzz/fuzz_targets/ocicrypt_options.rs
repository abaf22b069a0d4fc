//! ocicrypt metadata from an untrusted image: the public options
//! annotation, unwrapped private options, the KBS key-provider annotation
//! packet and offline KEK files. Never panics; a packet never unwraps to
//! anything under a key it was not made with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_image::crypt::kbs::{KbsUnwrapper, LocalKeks, ResourceUri};
use veil_image::crypt::{self, KeyUnwrapper, PrivateOptions, PublicOptions};
use veil_image::spec::{Descriptor, media_type};
use veil_image::Digest;
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    let _ = PrivateOptions::from_json(data);
    let _ = LocalKeks::from_json(data);
    let mut keks = LocalKeks::default();
    if let Ok(kid) = ResourceUri::parse("kbs:///default/key/fuzz") {
        keks.insert(&kid, Zeroizing::new(vec![7u8; 32]));
    }
    let kbs = KbsUnwrapper::new(keks);
    let _ = kbs.unwrap(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = PublicOptions::from_annotation(text);
        let _ = ResourceUri::parse(text);
        let mut layer = Descriptor::new(media_type::OCI_LAYER_TAR, Digest::sha256(b"x"), 1);
        layer.annotations.insert(kbs.annotation_key(), text.to_owned());
        layer.annotations.insert(crypt::ANNOTATION_PUBOPTS.into(), text.to_owned());
        let _ = crypt::unwrap_options(&layer, &[&kbs as &dyn KeyUnwrapper]);
    }
});
