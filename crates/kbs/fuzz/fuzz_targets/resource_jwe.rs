//! A guest decrypting an untrusted resource JWE never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_kbs_client::{KeyType, TeeKeyPair};

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static KEY: Option<TeeKeyPair> = TeeKeyPair::generate(KeyType::EcP256).ok();
    }
    if let Ok(jwe) = serde_json::from_slice::<veil_kbs_client::protocol::FlattenedJwe>(data) {
        KEY.with(|k| {
            if let Some(k) = k {
                let _ = k.decrypt(&jwe);
            }
        });
    }
});
