//! Untrusted request bodies and paths the KBS parses: /auth, /attest,
//! resource paths, init-data, tokens.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_kbs::json::parse::<veil_kbs_client::protocol::AuthRequest>("auth", data);
    if let Ok(att) = veil_kbs::json::parse::<kbs_types::Attestation>("attestation", data) {
        let _ = veil_kbs_client::jwe::validate_tee_pubkey(&att.runtime_data.tee_pubkey);
        if let Some(d) = att.init_data {
            let _ = veil_kbs::verify::init_data_digest(&d.format, &d.body);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = veil_kbs_client::ResourcePath::parse(s);
        let _ = veil_kbs::verify::parse_tee(s);
        let _ = veil_kbs_client::token_claims(s);
    }
});
